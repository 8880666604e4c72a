"""notebooks/evaluate_proxy.ipynb runs, in a Jupyter kernel, with a small parameter set injected after
its parameters cell (as papermill does): every cell executes, the table and the plots come out."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "evaluate_proxy.ipynb"
SMALL = """# injected by tests/test_notebook.py: a small run
SEEDS = [0]
STEPS = 2
METHODS = ["plan", "adaspa", "window"]
EPSILONS = [0.5]
SPARSITIES = [0.5]
WINDOWS = [1]
OUT = {out!r}
"""


def test_the_parameters_are_one_cell():
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and nb.cells[tagged[0]].cell_type == "code"
    assert "MODEL" in nb.cells[tagged[0]].source and "DEVICE" in nb.cells[tagged[0]].source
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"


@pytest.mark.slow
def test_notebook_executes_with_small_parameters(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the kernel runs as a user's would: the CPU fallback
    nb = nbformat.read(NOTEBOOK, as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(SMALL.format(out=str(tmp_path / "eval"))))
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
                     if o.get("output_type") == "stream")
    assert "method" in text and "density" in text and "adaspa (s=0.5)" in text and "window (rows=1)" in text
    assert "plan (eps=0.5)" in text
    assert (tmp_path / "eval" / "report.csv").exists()
    assert (tmp_path / "eval" / "psnr_speedup.png").exists() and (tmp_path / "eval" / "attention_maps.png").exists()
