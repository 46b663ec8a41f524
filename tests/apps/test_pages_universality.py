"""AppTest checks of the Universality page: stored cross-model comparisons of a catalog, and the note without any.

The page runs through the real app (``app.py`` and its ``st.navigation``) on a copy of ``tiny_catalog`` (tiny ESM-2 on
40 OAS heavy chains) holding two comparisons computed by :func:`workbench.universality` on its store:
the catalog's SAE against itself, and against an untrained SAE of the same width.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("streamlit")

from streamlit.testing.v1 import AppTest  # noqa: E402

from apps.workbench_app._state import ENV  # noqa: E402
from apptest_helpers import chart_rows  # noqa: E402  (tests/apps, on the path under pytest)
from workbench.catalog import Catalog  # noqa: E402

APP = Path(__file__).resolve().parents[2] / "apps" / "workbench_app" / "app.py"


@pytest.fixture(scope="module")
def compared_catalog(tiny_catalog: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from workbench.sae import SAEConfig, SparseAutoencoder
    from workbench._universality import universality, write_universality

    out = tmp_path_factory.mktemp("universality") / "catalog"
    shutil.copytree(tiny_catalog, out)
    store, sae = tiny_catalog.parent / "store", tiny_catalog.parent / "sae"
    write_universality(out, universality(sae, store, sae, store, n_tokens=None, n_null=2, catalog_a=out), key="self")
    torch.manual_seed(0)
    untrained = SparseAutoencoder(SAEConfig(d_in=32, width=64, k=8, normalize=False)).eval()
    write_universality(out, universality(sae, store, untrained, store, n_tokens=None, catalog_a=out), key="untrained")
    return out


def _open(monkeypatch: pytest.MonkeyPatch, catalog: Path) -> AppTest:
    monkeypatch.setenv(ENV, str(catalog))
    at = AppTest.from_file(str(APP), default_timeout=240)
    at.switch_page("app_pages/universality.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def _layer_rows(chart: Any, column: str) -> pd.DataFrame:
    """The rows of the dataset of a layered chart that has ``column`` (the bars, beside the threshold rule)."""
    import pyarrow as pa

    frames = [pa.ipc.open_stream(d.data.data).read_all().to_pandas() for d in chart.proto.datasets]
    return next(f for f in frames if column in f.columns)


def _metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def test_universality_page_shows_the_stored_comparisons(compared_catalog: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from apps.workbench_app import _views as views

    stored = Catalog.open(compared_catalog).universality
    at = _open(monkeypatch, compared_catalog)
    assert at.title[0].value == "Universality"
    pairs = at.dataframe[0].value
    assert list(pairs["comparison"]) == ["self", "untrained"]
    for key in ("self", "untrained"):
        s = stored[key]["summary"]
        row = pairs.set_index("comparison").loc[key]
        assert row["shared"] == pytest.approx(s["fraction_shared"]) and row["null"] == pytest.approx(s["null_fraction"])
        assert row["shared_hungarian"] == pytest.approx(s["fraction_shared_hungarian"])
    bars = chart_rows(at.get("vega_lite_chart")[0]).set_index(["comparison", "measure"])["fraction"]
    assert bars[("self", "shared")] == pytest.approx(1.0)
    assert bars[("untrained", "null")] == pytest.approx(stored["untrained"]["summary"]["null_fraction"])

    # the first comparison in detail: metrics, histogram of r against the null, shared features with concepts
    s, features = stored["self"]["summary"], stored["self"]["features"]
    assert at.header[0].value == "self"
    metrics = _metrics(at)
    assert metrics["Shared (best match)"] == views.fmt_num(s["fraction_shared"])
    assert metrics["Null"] == views.fmt_num(s["null_fraction"])
    hist = _layer_rows(at.get("vega_lite_chart")[1], "features")
    for measure in ("best match", "null"):
        assert hist.loc[hist["measure"] == measure, "features"].sum() == len(features)
    groups = next(d.value for d in at.dataframe if "concept group" in d.value.columns)
    assert groups["shared"].sum() == int(features["shared"].sum())
    table = next(d.value for d in at.dataframe if "r_best" in d.value.columns)
    assert len(table) == int(features["shared"].sum()) and "top_concept_a" in table.columns
    assert np.all(np.diff(table["r_best"].to_numpy()) <= 0)

    # another comparison; every feature, not only the shared ones
    at.selectbox(key="_un_pair").select("untrained").run()
    at.checkbox(key="_un_shared_only").uncheck().run()
    assert not at.exception and at.header[0].value == "untrained"
    features = stored["untrained"]["features"]
    table = next(d.value for d in at.dataframe if "r_best" in d.value.columns)
    assert len(table) == len(features)
    assert sorted(table["feature"]) == sorted(features["feature"])
    assert _metrics(at)["Median r"] == views.fmt_num(stored["untrained"]["summary"]["median_r"])


def test_universality_page_without_comparisons(tiny_catalog: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert Catalog.open(tiny_catalog).universality == {}
    at = _open(monkeypatch, tiny_catalog)
    assert any("holds no cross-model comparison" in i.value for i in at.info)
    assert not at.dataframe and not at.metric
