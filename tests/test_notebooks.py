"""Both notebooks run top to bottom at their quick settings (KT_QUICK=1), so they never rot."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO

NOTEBOOKS = os.path.join(REPO, "notebooks")


def run_notebook(name, env):
    notebook = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    old = {key: os.environ.get(key) for key in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        NotebookClient(notebook, timeout=900, kernel_name="python3",
                       resources={"metadata": {"path": NOTEBOOKS}}).execute()
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return notebook


def outputs(notebook):
    return [output for cell in notebook.cells if cell.cell_type == "code"
            for output in cell.get("outputs", [])]


def test_quickstart_trains_translates_scores_and_plots():
    notebook = run_notebook("quickstart.ipynb", {"KT_QUICK": "1"})
    text = "".join(o.get("text", "") for o in outputs(notebook))
    assert "training pairs" in text and "BLEU" in text and "beam 4:" in text
    images = [o for o in outputs(notebook) if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # learning curve and two attention maps


@pytest.mark.usefixtures("tiny_run")
def test_export_to_edge_runs_on_a_trained_run(tiny_run):
    notebook = run_notebook("export_to_edge.ipynb", {"KT_QUICK": "1", "KT_RUN": tiny_run})
    text = "".join(o.get("text", "") for o in outputs(notebook))
    assert "identical without project code" in text
    assert "8/8 identical to the SavedModel" in text
