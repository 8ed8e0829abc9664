"""notebooks/quickstart.ipynb runs top to bottom on a tiny sky, so it never rots."""

import nbformat
import pytest
from nbclient import NotebookClient

from photoz_spark import PROJECT_DIR

pytestmark = pytest.mark.slow


def test_quickstart_notebook_runs_end_to_end(tmp_path, monkeypatch):
    notebook = nbformat.read(PROJECT_DIR / "notebooks" / "quickstart.ipynb", as_version=4)
    monkeypatch.setenv("QUICKSTART_WORKDIR", str(tmp_path / "workdir"))  # the kernel inherits it
    NotebookClient(notebook, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(PROJECT_DIR)}}).execute()

    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 5, "colour tracks and the evaluation figures are shown"
    text = "".join(o.get("data", {}).get("text/plain", "") for o in outputs)
    assert "z_phot_mean" in text and "test_sigma_nmad" in text
    assert (tmp_path / "workdir" / "scores" / "dr16q" / "properties").is_file()
    assert list((tmp_path / "workdir" / "reports").rglob("*.md")), "the evaluation report is written"
