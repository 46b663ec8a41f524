"""AppTest checks of the description scores in the Feature browser and the Overview (issue 13)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("streamlit")

from streamlit.testing.v1 import AppTest  # noqa: E402

from apptest_helpers import assert_ok, page_test  # noqa: E402  (tests/apps, on the path under pytest)

from workbench.catalog import Catalog  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "apps" / "workbench_app"
SCORES = ("description_detection", "description_f1", "description_corr", "description_spearman")


def _scored_tables(at: AppTest) -> list:  # type: ignore[type-arg]
    return [d.value for d in at.dataframe if "description_corr" in d.value.columns]


def test_description_filter_reduces_the_feature_table(tiny_catalog: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    corr = Catalog.open(tiny_catalog).features["description_corr"].astype(float)
    values = np.sort(corr.dropna().to_numpy())
    assert len(values) > 4
    low = 0.05
    high = float(np.floor(values[len(values) // 2] * 20) / 20)  # about half the scored features pass
    assert 0 < low < high and (corr >= high).sum() < (corr >= low).sum()
    at = page_test("features", tiny_catalog, monkeypatch).run()
    assert_ok(at)
    assert not _scored_tables(at)  # filter off: the page as before
    for x in (low, high):
        at.slider(key="_fb_min_corr").set_value(x).run()
        assert_ok(at)
        (table,) = _scored_tables(at)
        assert len(table) == int((corr >= x).sum())
        assert (table["description_corr"] >= x).all()
        assert list(at.selectbox(key="_fb_pick_hits").options) != []
        assert [str(o).split(" · ")[0] for o in at.selectbox(key="_fb_pick_hits").options] == list(table["feature"])
    # search results are filtered the same way
    at.slider(key="_fb_min_corr").set_value(0.0).run()
    at.text_input(key="_fb_query").input("aa").run()
    assert_ok(at)
    (hits,) = _scored_tables(at)
    at.slider(key="_fb_min_corr").set_value(high).run()
    assert_ok(at)
    (fewer,) = _scored_tables(at)
    assert 0 < len(fewer) < len(hits)
    assert (fewer["description_corr"] >= high).all()
    # the feature shown gives its own scores
    fid = str(fewer["feature"].iloc[0])
    at.selectbox(key="_fb_pick_hits").select(fid).run()
    assert_ok(at)
    assert at.header[0].value == fid
    assert any("Description score on held-out sequences" in c.value for c in at.caption)


def test_catalog_without_description_scores_has_no_filter(tiny_catalog: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """An older catalog (no description-score columns or summary entries): no slider, pages render as before."""
    import h5py

    old = tmp_path / "catalog"
    shutil.copytree(tiny_catalog, old)
    with h5py.File(old / "catalog.h5ad", "r+") as h5:
        var = h5["var"]
        order = [str(c.decode() if isinstance(c, bytes) else c) for c in var.attrs["column-order"]]
        for col in SCORES:
            del var[col]
        var.attrs["column-order"] = np.array([c for c in order if c not in SCORES], dtype=object)
        summary = h5["uns/summary"]
        for key in [k for k in summary if k.startswith("description_")]:
            del summary[key]
    assert not set(SCORES) & set(Catalog.open(old).features.columns)
    at = page_test("features", old, monkeypatch).run()
    assert_ok(at)
    assert not [s for s in at.slider if s.key == "_fb_min_corr"]
    at.text_input(key="_fb_query").input("aa").run()
    assert_ok(at)
    assert not _scored_tables(at)
    overview = page_test("overview", old, monkeypatch).run()
    assert_ok(overview)
    assert "predict held-out activations" not in "\n".join(str(m.value) for m in overview.markdown)


def test_overview_reports_the_description_scores(tiny_catalog: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fractions = Catalog.open(tiny_catalog).summary["description_corr_above_0_5"]
    at = page_test("overview", tiny_catalog, monkeypatch).run()
    assert_ok(at)
    text = "\n".join(str(m.value) for m in at.markdown)
    assert "predict held-out activations" in text
    assert f"{100 * fractions['sae']:.0f}%" in text and f"{100 * fractions['shuffled']:.0f}%" in text
