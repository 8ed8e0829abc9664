"""The layer rules of docs/architecture.md, read from the source with ``ast`` so they stay true."""

import ast
from pathlib import Path

import pytest

from photoz_spark import PROJECT_DIR

pytestmark = pytest.mark.unit

PACKAGE = PROJECT_DIR / "photoz_spark"
SIBLING_STAGES = {"train", "scoring", "evaluate"}


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports (absolute names; ``from a import b`` also counts a.b)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def unit_of(module: str) -> str | None:
    """The top-level unit of a photoz_spark module: its subpackage or top-level module."""
    parts = module.split(".")
    if parts[0] != "photoz_spark" or len(parts) < 2:
        return None
    name = parts[1]
    if (PACKAGE / name).is_dir() or (PACKAGE / f"{name}.py").is_file():
        return name
    return None  # a name defined in photoz_spark/__init__.py (PROJECT_DIR, ...)


def library_modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path, unit_of("photoz_spark." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts))


def unit_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path, unit in library_modules():
        if unit is None:
            continue
        targets = {unit_of(m) for m in imports_of(path)} - {None, unit}
        graph.setdefault(unit, set()).update(targets)
    return graph


def test_train_scoring_evaluate_never_import_each_other():
    offences = []
    for path, unit in library_modules():
        if unit in SIBLING_STAGES:
            others = {unit_of(m) for m in imports_of(path)} & (SIBLING_STAGES - {unit})
            offences += [f"{path.relative_to(PROJECT_DIR)} imports {o}" for o in sorted(others)]
    assert not offences, offences


def test_no_import_cycle_between_packages():
    graph = unit_graph()
    assert {"model", "registry", "metrics", "train", "scoring", "evaluate"} <= set(graph)
    state: dict[str, int] = {}   # 1 on the current path, 2 done

    def visit(unit, path):
        state[unit] = 1
        for target in sorted(graph.get(unit, ())):
            if state.get(target) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path, unit, target]))
            if target not in state:
                visit(target, [*path, unit])
        state[unit] = 2

    for unit in sorted(graph):
        if unit not in state:
            visit(unit, [])


def test_mlflow_is_imported_only_by_the_registry_package():
    sources = [*PACKAGE.rglob("*.py"), *(PROJECT_DIR / "jobs").glob("*.py"), *(PROJECT_DIR / "bench").glob("*.py")]
    offences = [str(p.relative_to(PROJECT_DIR)) for p in sources
                if any(m.split(".")[0] == "mlflow" for m in imports_of(p))
                and PACKAGE / "registry" not in p.parents]
    assert not offences, offences


def test_model_core_and_metrics_sit_below_the_stages():
    graph = unit_graph()
    stages = SIBLING_STAGES | {"sim", "ingest", "crossmatch", "features", "registry"}
    assert not graph["model"] & stages, graph["model"]
    assert not graph["metrics"] & (stages | {"model"}), "metrics is numbers in, numbers out: no network"
    assert not graph["registry"] & SIBLING_STAGES, graph["registry"]



def test_tests_and_jobs_do_not_reach_job_scripts_through_sys_path():
    """Tests, the notebook and the jobs call library functions (photoz_spark.jobs), never the
    scripts under jobs/ through a sys.path insert."""
    sources = [*(PROJECT_DIR / "tests").glob("*.py"), *(PROJECT_DIR / "jobs").glob("*.py"),
               *(PACKAGE / "jobs").glob("*.py"), PROJECT_DIR / "notebooks" / "quickstart.ipynb"]
    offences = [str(p.relative_to(PROJECT_DIR)) for p in sources
                if p.name != "test_layers.py" and "sys.path.insert" in p.read_text()]
    assert not offences, offences


def test_job_scripts_only_call_their_library_main():
    for script in sorted((PROJECT_DIR / "jobs").glob("*.py")):
        modules = {m for m in imports_of(script) if m.startswith("photoz_spark")}
        assert modules == {f"photoz_spark.jobs.{script.stem}", f"photoz_spark.jobs.{script.stem}.main"}, script.name
