# photoz-spark: every target sets up .venv by itself on first use (Java 17+ must be installed).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help venv demo test lint clean

help:  ## list the targets
	@echo "make demo   simulate a small sky (jobs/simulate_sky.py; pass options as ARGS='key=value ...')"
	@echo "make test   run the test suite"
	@echo "make lint   ruff check"
	@echo "make venv   create $(VENV) and install the project (done by the targets above when needed)"
	@echo "make clean  remove workdir/"

venv: $(VENV)/.installed

# Re-run when pyproject.toml changes. torch is installed first and pinned: asked for later as a
# plain dependency, pip would pick a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	@version=$$(java -version 2>&1 | sed -n 's/.* version "\([^"]*\)".*/\1/p' | head -n 1); \
	major=$${version%%.*}; \
	if [ -z "$$version" ] || [ "$$major" -lt 17 ] 2>/dev/null; then \
		echo "error: Spark needs Java 17 or newer (found: $${version:-no java on PATH})." >&2; \
		echo "  Debian/Ubuntu: sudo apt-get install openjdk-17-jre-headless" >&2; \
		echo "  macOS:         brew install openjdk@17" >&2; \
		exit 1; \
	fi
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install torch==$(TORCH_VERSION)
	$(PY) -m pip install -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(PY) jobs/simulate_sky.py $(ARGS)

test: $(VENV)/.installed
	$(PY) -m pytest -q

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

clean:
	rm -rf workdir/
