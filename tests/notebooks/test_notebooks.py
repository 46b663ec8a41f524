"""The notebooks of ``notebooks/`` run top to bottom on small inputs, and each ``.py`` source matches its ``.ipynb``.

Each notebook reads its inputs from ``WORKBENCH_NB_*`` environment variables in its first code cell; here they point
at the test fixtures (tiny ESM-2 on 40 real OAS heavy chains, the tiny sequence catalog, the imaging pipeline with
a tiny CNN on real PneumoniaMNIST images) and at ``tmp_path`` for everything the notebooks write. The ``.py``
(jupytext percent format) is the source of truth: it is converted with jupytext and executed with nbclient in a
``python3`` kernel (ipykernel of this interpreter), from the ``notebooks/`` folder as ``jupyter lab`` would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
NAMES = ("antibody_catalog", "bring_your_own", "imaging_catalog")
MAX_BYTES = 1_000_000
"""Committed notebooks (with their rendered outputs) stay under this size."""


def run_notebook(name: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """Execute ``notebooks/<name>.py`` in a fresh kernel with ``env`` set; returns the executed notebook (a cell that
    raises fails the test with the cell's traceback)."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = jupytext.read(NOTEBOOKS / f"{name}.py")
    client = NotebookClient(nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()
    return nb


def outputs(nb: Any, kind: str) -> list[Any]:
    """Every output of ``nb``'s code cells carrying MIME type (or stream name) ``kind``."""
    found = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                raise AssertionError(f"cell error: {out.get('ename')}: {out.get('evalue')}")
            if kind in out.get("data", {}) or out.get("name") == kind:
                found.append(out)
    return found


def text_of(nb: Any) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", "") or out.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------------ executed on fixtures


@pytest.mark.slow
def test_antibody_catalog_notebook(tiny_catalog: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pandas as pd

    export = tmp_path / "export"
    nb = run_notebook("antibody_catalog", {"WORKBENCH_NB_CATALOG": str(tiny_catalog), "WORKBENCH_NB_QUERY": "CDR3",
                                           "WORKBENCH_NB_EXPORT": str(export)}, monkeypatch)
    assert len(outputs(nb, "image/png")) >= 2  # the IMGT track and the IMGT profile
    assert "<FeatureInfo f" in text_of(nb)
    features = pd.read_parquet(export / "features.parquet")
    assert len(features) == 64 and (export / "examples.parquet").is_file()
    assert (export / "tables" / "association.parquet").is_file()


@pytest.mark.slow
def test_bring_your_own_notebook(tiny_esm2: Path, oas_fasta: Path, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from workbench.catalog import Catalog

    out = tmp_path / "work"
    nb = run_notebook("bring_your_own", {
        "WORKBENCH_NB_FASTA": str(oas_fasta), "WORKBENCH_NB_MODEL": str(tiny_esm2), "WORKBENCH_NB_LAYER": "1",
        "WORKBENCH_NB_WIDTH": "64", "WORKBENCH_NB_K": "8", "WORKBENCH_NB_SAE_TOKENS": "20000",
        "WORKBENCH_NB_OUT": str(out),
    }, monkeypatch)
    assert (out / "my_labels.csv").is_file()
    catalog = Catalog.open(out / "catalog")
    assert len(catalog.features) == 64 and catalog.summary["n_sequences"] == 40
    probes = catalog.table("probes")
    probed = set(probes.loc[probes["level"] == "sequence", "target"].astype(str))
    assert "cdr3_class" in probed, "the user CSV's labels were not probed"
    assert len(outputs(nb, "image/png")) >= 1


@pytest.mark.slow
def test_imaging_catalog_notebook(imaging_catalog: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nb = run_notebook("imaging_catalog", {"WORKBENCH_NB_IMAGING_CATALOG": str(imaging_catalog),
                                          "WORKBENCH_NB_N_IMAGES": "3"}, monkeypatch)
    assert len(outputs(nb, "image/png")) >= 2  # the overlays and the activation by class
    assert "<FeatureInfo f" in text_of(nb)


# ------------------------------------------------------------------------------------------------ committed notebooks


def _cells(nb: Any) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


@pytest.mark.parametrize("name", NAMES)
def test_py_and_ipynb_are_in_sync(name: str) -> None:
    source = jupytext.read(NOTEBOOKS / f"{name}.py")
    rendered = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbformat.validate(rendered)
    assert _cells(rendered) == _cells(source), (
        f"notebooks/{name}.ipynb differs from {name}.py: run `jupytext --sync notebooks/{name}.py` and re-render")


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebooks_are_rendered_and_small(name: str) -> None:
    path = NOTEBOOKS / f"{name}.ipynb"
    assert path.stat().st_size < MAX_BYTES, f"{path.name} is {path.stat().st_size:,} bytes"
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.execution_count is not None for c in code), f"{path.name} is not fully executed"
    counts = [c.execution_count for c in code]
    assert counts == sorted(counts), f"{path.name} was not run top to bottom"
    assert not [o for c in code for o in c.outputs if o.output_type == "error"], f"{path.name} holds an error"
    assert outputs(nb, "image/png"), f"{path.name} has no rendered figure"
