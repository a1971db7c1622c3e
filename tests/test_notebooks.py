"""Every notebook under notebooks/ runs top to bottom in smoke mode (the environment variable CI
set, as CI sets it), so that the notebooks cannot rot.

Each notebook is executed from a temporary copy (the committed file, with the outputs of its full
run, is never rewritten) with the kernel's working directory in notebooks/, as Jupyter would
start it, and the data found through ``$PYRO_VAE_DATA``.
"""

import shutil

import pytest

from conftest import REPO

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert [path.stem for path in NOTEBOOKS][:3] == ["01_quickstart", "02_elbo_estimators", "03_wake_sleep_vs_aevb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_runs_in_smoke_mode(path, tmp_path, data_dir, monkeypatch):
    copy = tmp_path / path.name
    shutil.copy(path, copy)
    monkeypatch.setenv("CI", "1")
    monkeypatch.setenv("PYRO_VAE_DATA", str(data_dir))
    notebook = nbformat.read(copy, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError, naming the cell, if any cell fails
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    assert any("smoke mode" in output.get("text", "") for output in outputs)
