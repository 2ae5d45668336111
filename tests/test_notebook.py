"""notebooks/report.ipynb runs top to bottom against the tiny benchmark run (nbclient, the venv's python3 kernel)."""

from __future__ import annotations

import nbformat
import pytest
from nbclient import NotebookClient
from run_fixtures import REPO, TinyRun, tiny_run_fixture  # noqa: F401

NOTEBOOK = REPO / "notebooks" / "report.ipynb"


def test_committed_notebook_has_no_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")


@pytest.mark.slow
def test_notebook_shows_the_run(tiny_run: TinyRun, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MNM_RUN_DIR", str(tiny_run.run_dir))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # kernel "python3" is ipykernel's built-in spec for the interpreter running the tests (the venv's)
    NotebookClient(nb, kernel_name="python3", timeout=180, resources={"metadata": {"path": str(REPO)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/markdown", "")) for o in outputs)
    for label, arm in tiny_run.results["arms"].items():
        assert f"| {label} | {100 * arm['miou']:.2f} |" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == len(tiny_run.results["figures"])
