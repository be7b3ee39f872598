"""The notebooks run top to bottom (nbclient) and show what they promise; stored without outputs."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from aq_search.examples import imagenet

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")
pytest.importorskip("pandas")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def execute(name: str, cwd: Path, timeout: int = 600) -> Any:
    """Run a notebook in ``cwd`` (its results folders go there); the kernel inherits this environment."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def text(nb: Any) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                parts.append(out.text)
            elif out.output_type in ("execute_result", "display_data"):
                parts.append(str(out.data.get("text/plain", "")))
    return "\n".join(parts)


def pngs(nb: Any) -> list[bytes]:
    return [
        base64.b64decode(out.data["image/png"])
        for cell in nb.cells
        for out in cell.get("outputs", [])
        if out.output_type in ("execute_result", "display_data") and "image/png" in out.data
    ]


def test_notebooks_are_stored_without_outputs() -> None:
    names = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    assert names == ["01_quickstart.ipynb", "02_exploring_a_study.ipynb", "03_efficientnet_lite0.ipynb"]
    for name in names:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{name} is stored with outputs"


def test_quickstart(tmp_path: Path) -> None:
    nb = execute("01_quickstart.ipynb", tmp_path)
    out = text(nb)
    assert "FP32 accuracy: 0.9" in out
    assert "W4A8 per-tensor, BN folded, no search:" in out
    assert "AutoQuantResult(accuracy=" in out and "target met: True" in out
    assert "predictions:" in out and "encodings: aq_results_quickstart/best/encodings.json" in out
    assert len(pngs(nb)) >= 1 and all(p.startswith(b"\x89PNG") for p in pngs(nb))
    assert (tmp_path / "aq_results_quickstart" / "report.html").is_file()


def test_exploring_a_study(tmp_path: Path) -> None:
    nb = execute("02_exploring_a_study.ipynb", tmp_path)
    out = text(nb)
    assert "aq-search-DigitsCNN-w3a6 -" in out and "best: trial" in out
    assert "pipeline__ordering" in out  # parameter importances
    assert "Pareto front (relative BOPs, score): [(" in out
    # history, best waterfall, (pruned waterfall), Pareto, orderings, (AMP sensitivity): all as PNGs
    assert len(pngs(nb)) >= 4
    html = [str(o.data["text/html"]) for c in nb.cells for o in c.get("outputs", []) if "text/html" in o.get("data", {})]
    assert any("user_attrs_pipeline" in h for h in html)  # the trials dataframe
    assert any("stage 1" in h for h in html)  # the per-stage table
    assert any("application/vnd.plotly.v1+json" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    assert (tmp_path / "aq_results_explore" / "report.html").is_file()


@pytest.mark.slow
@pytest.mark.skipif(not imagenet.is_available(), reason=f"needs {', '.join(imagenet.REQUIREMENTS)}")
def test_efficientnet_notebook(tmp_path: Path) -> None:
    nb = execute("03_efficientnet_lite0.ipynb", tmp_path, timeout=900)
    out = text(nb)
    assert "FP32 top-1 on the 20 labelled images: 0.90" in out
    assert "W8A8 per-tensor weights, BN folded, no search: agreement" in out
    assert "AutoQuantResult(accuracy=" in out and "AIMET recipe (trial 0):" in out and "best (trial" in out
    assert len(pngs(nb)) >= 3
    assert (tmp_path / "aq_results_efficientnet" / "report.html").is_file()
