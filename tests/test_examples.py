"""examples/quickstart.ipynb runs from top to bottom (nbclient, a fresh kernel) on tiny synthetic MNIST, so
the notebook stays runnable: its two trainings, the inversion and the report leave their run folders,
and its pictures are shown."""

import json
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path, fake_mnist, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("LIFTED_DATA", str(fake_mnist))
    monkeypatch.setenv("LIFTED_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("LIFTED_QUICKSTART", "train_size=32 test_size=8 epochs=2 batch_size=16 arch.hidden=[16]")
    monkeypatch.setenv("LIFTED_QUICKSTART_ITERATIONS", "10")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(EXAMPLES / "quickstart.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()

    (runs,) = (tmp_path / "runs").iterdir()
    for name in ("backprop", "bregman", "invert"):
        metrics = json.loads((runs / name / "metrics.json").read_text())
        assert metrics["status"] == "finished", name
    assert (runs / "report" / "report.md").is_file()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3  # samples, curves, the inversion
