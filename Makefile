# photoz-spark: every target sets up .venv by itself on first use (Java 17+ must be installed).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
ARGS ?=
# The second stack, for train.backend=petastorm (pyarrow 14, numpy 1.26, pyspark 4.0; see the constraints).
PETASTORM_VENV ?= .venv-petastorm
PETASTORM_CONSTRAINTS := .ci/petastorm-constraints.txt
PETASTORM_TESTS ?= tests/test_petastorm.py tests/test_features.py tests/test_hats.py tests/test_config.py

.DEFAULT_GOAL := help
.PHONY: help venv demo test test-quick test-petastorm lint clean

help:  ## list the targets
	@echo "make demo   the pipeline on the simulated sky: simulate -> crossmatch -> features -> train -> score -> qp export -> evaluate (in WORKDIR)"
	@echo "make test   run the test suite"
	@echo "make test-quick  only the unit tests (numpy/torch, no Spark session): a few minutes"
	@echo "make test-petastorm  build $(PETASTORM_VENV) (the petastorm stack) and run the tests that matter there"
	@echo "make lint   ruff check"
	@echo "make venv   create $(VENV) and install the project (done by the targets above when needed)"
	@echo "make clean  remove workdir/"

venv: $(VENV)/.installed

define CHECK_JAVA
version=$$(java -version 2>&1 | sed -n 's/.* version "\([^"]*\)".*/\1/p' | head -n 1); \
	major=$${version%%.*}; \
	if [ -z "$$version" ] || [ "$$major" -lt 17 ] 2>/dev/null; then \
		echo "error: Spark needs Java 17 or newer (found: $${version:-no java on PATH})." >&2; \
		echo "  Debian/Ubuntu: sudo apt-get install openjdk-17-jre-headless" >&2; \
		echo "  macOS:         brew install openjdk@17" >&2; \
		exit 1; \
	fi
endef

# Re-run when pyproject.toml changes. torch is installed first and pinned: asked for later as a
# plain dependency, pip would pick a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	@$(CHECK_JAVA)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install torch==$(TORCH_VERSION)
	$(PY) -m pip install -e '.[dev,astro]'
	touch $@

WORKDIR ?= workdir
# The default fast recipe (conf/train.yaml) as a cosine over DEMO_EPOCHS; the default
# features.representation=auto gives all14 asinh magnitudes. 20 epochs keep the demo near 15 minutes on
# 2 cores (15 min 27 s measured); test CRPS on the demo sky by epochs: 12 0.1255, 16 0.1246, 20 0.1238,
# 24 0.1236 (README, Evaluation and band ablation).
DEMO_EPOCHS ?= 20

demo: $(VENV)/.installed
	$(PY) jobs/simulate_sky.py --workdir $(WORKDIR) $(ARGS)
	$(PY) jobs/crossmatch.py --workdir $(WORKDIR)
	$(PY) jobs/build_features.py --workdir $(WORKDIR)
	$(PY) jobs/train.py --workdir $(WORKDIR) train.max_epochs=$(DEMO_EPOCHS) train.recalibrate=true
	@# The photometric catalog: every SDSS object with its DESI-LS (+unWISE) counterpart; it has no
	@# GALEX columns, which the all-bands model then treats as unobserved.
	$(PY) jobs/crossmatch.py --workdir $(WORKDIR) crossmatch.run=photometric crossmatch.left=sdss 'crossmatch.right=[desi_ls]'
	$(PY) jobs/score_catalog.py --workdir $(WORKDIR) --input matched/photometric 'score.missing_bands=[galex_fuv,galex_nuv]'
	$(PY) jobs/export_qp.py --workdir $(WORKDIR) --input scores/photometric
	$(PY) jobs/evaluate.py --workdir $(WORKDIR)

test: $(VENV)/.installed
	$(PY) -m pytest -q

# Markers (pyproject.toml): unit | spark | cluster | slow; e.g. ARGS='-m "not cluster and not slow"'.
test-quick: $(VENV)/.installed
	$(PY) -m pytest -q -m unit $(ARGS)

# Same pattern; the constraints hold the whole stack back (a plain install would bring numpy 2,
# which pyarrow 14 cannot load).
$(PETASTORM_VENV)/.installed: pyproject.toml $(PETASTORM_CONSTRAINTS)
	@$(CHECK_JAVA)
	$(PYTHON) -m venv $(PETASTORM_VENV)
	$(PETASTORM_VENV)/bin/python -m pip install --upgrade pip
	$(PETASTORM_VENV)/bin/python -m pip install torch==$(TORCH_VERSION)
	$(PETASTORM_VENV)/bin/python -m pip install -c $(PETASTORM_CONSTRAINTS) -e '.[dev,petastorm]'
	touch $@

test-petastorm: $(PETASTORM_VENV)/.installed
	$(PETASTORM_VENV)/bin/python -m pytest -q $(PETASTORM_TESTS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

clean:
	rm -rf workdir/
