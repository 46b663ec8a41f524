"""AppTest checks of the catalog explorer's Discovery, Feature atlas and Live input pages.

Every page runs through the real app (``app.py`` and its ``st.navigation``) on real catalogs: ``tiny_catalog``
(tiny ESM-2 on 40 OAS heavy chains) and ``demo_catalog`` (AntiBERTy on Thera-SAbDab antibodies).

Chart and table *selections* are browser events that AppTest cannot produce through its public API, so
:func:`apptest_helpers.send_selection` appends the selection's widget state (the JSON string the frontend would send) to the
widget states of the next run, through AppTest's private ``_tree`` / ``_run``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("streamlit")

from streamlit.testing.v1 import AppTest  # noqa: E402

from apps.workbench_app import _live  # noqa: E402
from apps.workbench_app._state import ENV  # noqa: E402
from apptest_helpers import chart_rows, send_selection  # noqa: E402  (tests/apps, on the path under pytest)
from workbench.catalog import Catalog  # noqa: E402

APP = Path(__file__).resolve().parents[2] / "apps" / "workbench_app" / "app.py"
TITLES = {"discovery": "Discovery", "atlas": "Feature atlas", "live": "Live input"}


def _open(monkeypatch: pytest.MonkeyPatch, catalog: Path, page: str) -> AppTest:
    monkeypatch.setenv(ENV, str(catalog))
    at = AppTest.from_file(str(APP), default_timeout=240)
    at.switch_page(f"app_pages/{page}.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _titles(at: AppTest) -> list[str]:
    return [t.value for t in at.title]




def _shown_missing(cat: Catalog) -> pd.DataFrame:
    """The candidate missing annotations the Discovery page lists by default: numbering artefacts hidden."""
    table = cat.table("missing_annotations")
    return table[table["kind"].astype(str) != "numbering artefact"].reset_index(drop=True)


def _fasta(cat: Catalog, n: int, *, start: int = 0) -> str:
    seqs = cat.sequences["sequence"]
    return "".join(f">{sid}\n{seq}\n" for sid, seq in zip(seqs.index[start:start + n], seqs.iloc[start:start + n]))


# ------------------------------------------------------------------------------------------------ every page


@pytest.mark.parametrize("which", ["tiny_catalog", "demo_catalog"])
@pytest.mark.parametrize("page", ["discovery", "atlas", "live"])
def test_page_renders(page: str, which: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    catalog = request.getfixturevalue(which)
    cat = Catalog.open(catalog)
    at = _open(monkeypatch, catalog, page)
    assert _titles(at) == [TITLES[page]]
    if page == "discovery":
        tables = [n for n in ("missing_annotations", "unexplained_features", "rediscovery") if not cat.table(n).empty]
        expected = [len(_shown_missing(cat)) if n == "missing_annotations" else len(cat.table(n)) for n in tables]
        if "sequence_findings" in cat.tables:  # one row per target, then every row in an expander
            seq = cat.table("sequence_findings")
            expected += [seq["target"].nunique(), len(seq)]
            tables.append("sequence_findings")
        assert [d.value.shape[0] for d in at.dataframe] == expected
        assert len(at.download_button) == 2 * len(tables)  # CSV and Parquet
        assert [b.key for b in at.download_button][1::2] == [k.removesuffix("_csv") + "_parquet"
                                                             for k in [b.key for b in at.download_button][::2]]
    elif page == "atlas":
        (chart,) = at.get("vega_lite_chart")
        live = np.isfinite(cat.umap).all(axis=1)
        rows = chart_rows(chart)
        assert len(rows) == int(live.sum()) and set(rows["feature"]) == set(cat.features.index[live])
    else:
        assert [b.label for b in at.button] == ["Encode"] and len(at.text_area) == 1 and not at.error


# ------------------------------------------------------------------------------------------------ discovery


def test_discovery_filters_change_the_table(tiny_catalog: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table = _shown_missing(Catalog.open(tiny_catalog))
    at = _open(monkeypatch, tiny_catalog, "discovery")
    assert at.dataframe[0].value.shape[0] == len(table)

    kind = table["kind"].value_counts().index[-1]  # the rarer kind (the only one when all candidates are alike)
    at.multiselect(key="missing_kinds").set_value([kind]).run()
    shown = at.dataframe[0].value
    assert len(shown) == int((table["kind"] == kind).sum()) and set(shown["kind"]) == {kind}

    at.multiselect(key="missing_kinds").set_value([]).run()
    cut = float(table["score"].median())
    at.slider(key="missing_min_score").set_value(round(cut, 2)).run()
    shown = at.dataframe[0].value
    assert len(shown) == int((table["score"] >= round(cut, 2)).sum()) < len(table)

    at.slider(key="missing_min_score").set_value(0.0).run()
    group = table["concept"].str.split("=").str[0].value_counts().index[0]
    at.multiselect(key="missing_groups").set_value([group]).run()
    assert set(at.dataframe[0].value["concept"].str.split("=").str[0]) == {group}

    at.multiselect(key="missing_groups").set_value([]).run()
    feature = str(table["feature"].iloc[-1])
    at.text_input(key="missing_text").input(feature.upper()).run()
    assert len(at.dataframe[0].value) == int((table["feature"] == feature).sum())
    at.text_input(key="missing_text").input("no such concept").run()
    assert len(at.dataframe[0].value) == 0 and not at.exception


def test_discovery_downloads_the_filtered_rows_as_csv(tiny_catalog: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import streamlit as st

    sent: dict[str, Any] = {}
    original = st.download_button

    def spy(label: str, data: Any, *args: Any, **kwargs: Any) -> Any:
        sent[kwargs["file_name"]] = data
        return original(label, data, *args, **kwargs)

    monkeypatch.setattr(st, "download_button", spy)
    table = _shown_missing(Catalog.open(tiny_catalog))
    at = _open(monkeypatch, tiny_catalog, "discovery")
    assert set(sent) == {"missing_annotations.csv", "rediscovery.csv", "missing_annotations.parquet",
                         "rediscovery.parquet"}
    parquet = pd.read_parquet(io.BytesIO(sent["missing_annotations.parquet"]()))  # written when clicked
    assert list(parquet.columns) == list(table.columns) and len(parquet) == len(table)
    assert at.download_button[0].label == f"Download {len(table)} rows (CSV)"
    full = pd.read_csv(io.BytesIO(sent["missing_annotations.csv"]()))
    assert list(full.columns) == list(table.columns) and len(full) == len(table)

    groups = table["concept"].str.split("=").str[0]
    group = groups.value_counts().index[-1]
    at.multiselect(key="missing_groups").set_value([group]).run()
    part = pd.read_csv(io.BytesIO(sent["missing_annotations.csv"]()))
    assert len(part) == int((groups == group).sum()) < len(table)
    assert set(part["concept"].str.split("=").str[0]) == {group}


def test_discovery_opens_a_feature(tiny_catalog: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table = _shown_missing(Catalog.open(tiny_catalog))
    at = _open(monkeypatch, tiny_catalog, "discovery")
    listed = at.selectbox(key="missing_pick")
    features = list(pd.unique(table["feature"].astype(str)))
    assert len(listed.options) == len(features) and listed.value == features[0]
    fid = features[-1]
    listed.select(fid)
    at.button(key="missing_open").click().run()
    assert not at.exception and at.session_state["feature"] == fid
    assert "Discovery" not in _titles(at)  # switched to the feature browser

    # selecting a table row opens that row's feature
    at = _open(monkeypatch, tiny_catalog, "discovery")
    send_selection(at, at.dataframe[0], {"rows": [3], "columns": [], "cells": []})
    assert not at.exception and at.session_state["feature"] == str(table["feature"].iloc[3])
    assert "Discovery" not in _titles(at)


# ------------------------------------------------------------------------------------------------ atlas


def test_atlas_colouring_and_filter(tiny_catalog: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cat = Catalog.open(tiny_catalog)
    at = _open(monkeypatch, tiny_catalog, "atlas")
    spec = json.loads(at.get("vega_lite_chart")[0].proto.spec)
    assert spec["encoding"]["color"]["field"] == "concept"
    assert {p["name"] for p in spec["params"]} >= {"pick"}
    # by default each feature takes its best concept of the most specific group (not the coarse top-concept group)
    groups = at.selectbox(key="atlas_group")
    assert groups.value == "region" and groups.options[-1] == "(group of the top concept)"
    pairs = cat.table("association").astype({"feature": str, "concept": str})
    pairs = pairs[pairs["concept"].str.startswith(groups.value + "=") & (pairs["test_f1"] >= 0.2)
                  & (pairs["q_value"] <= 0.05)]
    best = pairs.sort_values("test_f1", ascending=False, kind="stable").drop_duplicates("feature")
    best = best.set_index("feature")["concept"].str.split("=", n=1).str[1]
    rows = chart_rows(at.get("vega_lite_chart")[0]).set_index("feature")
    assert (rows["concept"] == best.reindex(rows.index).fillna("none")).all()
    # the old colouring: the group of the top concept
    groups.select("(group of the top concept)").run()
    rows = chart_rows(at.get("vega_lite_chart")[0]).set_index("feature")
    top = cat.features["top_concept"].astype(object)
    expected = top.map(lambda t: "unexplained" if pd.isna(t) else str(t).split("=")[0])
    assert (rows["concept"] == expected.reindex(rows.index)).all()

    at.radio(key="atlas_colour").set_value("Family").run()
    chart = at.get("vega_lite_chart")[0]
    assert json.loads(chart.proto.spec)["encoding"]["color"]["field"] == "family_name"
    rows = chart_rows(chart).set_index("feature")
    assert (rows["family"] == cat.features["family"].astype(str).reindex(rows.index)).all()

    concept = str(top.dropna().value_counts().index[0])
    at.text_input(key="atlas_text").input(concept).run()
    shown = chart_rows(at.get("vega_lite_chart")[0])
    assert 0 < len(shown) < len(rows) and shown["top_concept"].str.contains(concept, regex=False).any()


def test_atlas_click_opens_the_feature(tiny_catalog: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = _open(monkeypatch, tiny_catalog, "atlas")
    send_selection(at, at.get("vega_lite_chart")[0], {"pick": [{"feature": "f00005"}]})
    assert not at.exception and at.session_state["feature"] == "f00005"
    assert "Feature atlas" not in _titles(at)

    # with opening on click turned off, the selection is shown and a button opens it
    at = _open(monkeypatch, tiny_catalog, "atlas")
    at.toggle(key="atlas_open_on_click").set_value(False).run()
    send_selection(at, at.get("vega_lite_chart")[0], {"pick": [{"feature": "f00007"}]})
    assert not at.exception and _titles(at) == ["Feature atlas"] and at.session_state["feature"] == "f00007"
    assert "f00007" in at.success[0].value
    at.button(key="atlas_open").click()  # the browser keeps reporting the chart's selection with the click
    send_selection(at, at.get("vega_lite_chart")[0], {"pick": [{"feature": "f00007"}]})
    assert not at.exception and "Feature atlas" not in _titles(at)


# ------------------------------------------------------------------------------------------------ live input


def _encode(at: AppTest, text: str) -> AppTest:
    at.text_area(key="live_text").input(text)
    return at.button[0].click().run()


def test_live_input_shows_the_features_of_a_real_sequence(tiny_catalog: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cat = Catalog.open(tiny_catalog)
    at = _open(monkeypatch, tiny_catalog, "live")
    sid, seq = cat.sequences.index[4], cat.sequences["sequence"].iloc[4]  # a real OAS heavy chain
    _encode(at, seq)
    assert not at.exception and not at.error
    table = at.dataframe[0].value
    assert len(table) > 5 and table["max_activation"].is_monotonic_decreasing
    # the live codes reproduce the catalog's per-sequence maxima (the store keeps float16 activations)
    x = cat.adata[sid].X
    catalog_max = pd.Series(np.asarray(x.todense() if hasattr(x, "todense") else x).ravel(), index=cat.features.index)
    assert np.allclose(table["max_activation"], catalog_max[table["feature"]], atol=0.01)
    assert (table["description"] == cat.features["description"].reindex(table["feature"]).to_numpy()).all()
    # the chosen (strongest) feature is drawn on the sequence: one coloured residue per firing residue
    assert at.selectbox(key="live_feature").value == table["feature"].iloc[0]
    (drawn,) = at.get("html")
    assert drawn.proto.body.count('<span class="a') == table["n_residues"].iloc[0] > 0


def test_live_input_on_the_demo_catalog(demo_catalog: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cat = Catalog.open(demo_catalog)
    at = _open(monkeypatch, demo_catalog, "live")
    _encode(at, _fasta(cat, 2))  # AntiBERTy and the demo SAE, on two of the catalog's own chains
    assert not at.exception and not at.error
    table = at.dataframe[0].value
    x = cat.adata[list(cat.sequences.index[:2])].X
    x = np.asarray(x.todense() if hasattr(x, "todense") else x).max(axis=0)
    catalog_max = pd.Series(x, index=cat.features.index)
    assert len(table) == 50 and np.allclose(table["max_activation"], catalog_max[table["feature"]], atol=0.01)


@pytest.mark.parametrize("text, message", [
    ("HELLO J", "invalid residue 'J'"),
    ("A" * 5000, "5000 residues, over the model's maximum"),
    ("   ", "no sequence given"),
    ("EVQL >x\nAC", "malformed FASTA"),
    ("".join(f">s{i}\nEVQLVESGG\n" for i in range(25)), "at most 20"),
])
def test_live_input_rejects_bad_input(text: str, message: str, tiny_catalog: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    at = _open(monkeypatch, tiny_catalog, "live")
    _encode(at, text)
    assert not at.exception
    assert len(at.error) == 1 and message in at.error[0].value and "\n" not in at.error[0].value
    assert "/tmp" not in at.error[0].value and not at.dataframe


def test_live_input_reads_an_uploaded_fasta(tiny_catalog: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cat = Catalog.open(tiny_catalog)
    at = _open(monkeypatch, tiny_catalog, "live")
    at.file_uploader(key="live_upload").upload("two.fasta", _fasta(cat, 2, start=10).encode(), "text/plain")
    at.button[0].click().run()
    assert not at.exception and not at.error
    assert at.selectbox(key="live_scope").options == ["all sequences", *cat.sequences.index[10:12]]
    assert len(at.dataframe[0].value) > 5


def test_live_input_needs_the_sae(tiny_catalog: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from workbench.catalog import write_catalog

    prov = Catalog.open(tiny_catalog).provenance
    assert _live.live_sources(prov)[2] is None
    assert "model_source" in (_live.live_sources({"sae_path": prov["sae_path"]})[2] or "")
    assert "not on this machine" in (_live.live_sources({**prov, "sae_path": str(tmp_path / "gone")})[2] or "")

    adata = Catalog.open(tiny_catalog).adata
    adata.uns["provenance"] = {**dict(adata.uns["provenance"]), "sae_path": str(tmp_path / "gone")}
    write_catalog(adata, tmp_path / "catalog")
    at = _open(monkeypatch, tmp_path / "catalog", "live")
    assert "SAE folder the catalog was built with" in at.info[0].value and not at.button and not at.error
