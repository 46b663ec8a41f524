"""AppTest checks of what survives position and residue: the Beyond position page, the concept explorer's stratified
columns, and the Discovery page's sequence-level findings, numbering artefacts, strata shares and rediscovery control.

Every page runs through the real app (``app.py`` and its ``st.navigation``) on real catalogs built by the current
pipeline: ``demo_catalog`` (AntiBERTy on Thera-SAbDab antibodies, with neurons and a random-weight control) and
``tiny_catalog`` (tiny ESM-2 on 40 OAS heavy chains, no random control). A copy of the tiny catalog without the new
tables and columns stands for a catalog written by an older workbench; the imaging catalog is stratified by frame
position only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("streamlit")

from streamlit.testing.v1 import AppTest  # noqa: E402

from apps.workbench_app import _views as views  # noqa: E402
from apps.workbench_app._state import ENV  # noqa: E402
from apptest_helpers import assert_ok, chart_rows, send_selection  # noqa: E402  (tests/apps, on the path under pytest)
from workbench.catalog import Catalog  # noqa: E402

APP = Path(__file__).resolve().parents[2] / "apps" / "workbench_app" / "app.py"
NEW_TABLES = ("concept_findings", "verdicts", "sequence_findings")
NEW_BEST_COLUMNS = ("null_p_empirical", "null_z", "null_q", "stratified", "or_mh", "q_cmh", "beyond_feature",
                    "beyond_test_f1", "beyond_or", "beyond_q", "captured_beyond")


def _open(monkeypatch: pytest.MonkeyPatch, catalog: Path, page: str) -> AppTest:
    monkeypatch.setenv(ENV, str(catalog))
    at = AppTest.from_file(str(APP), default_timeout=240)
    at.switch_page(f"app_pages/{page}.py")
    at.run()
    assert_ok(at)
    return at


def _markdown(at: AppTest) -> str:
    return "\n".join(str(m.value) for m in at.markdown)


def _metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def _frame(at: AppTest, column: str) -> pd.DataFrame:
    """The first dataframe of the page that has ``column``."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


def _findings(cat: Catalog) -> pd.DataFrame:
    table = cat.table("concept_findings")
    return table.astype({c: str for c in ("concept", "finding", "stratified", "beyond_feature", "verdict")})


@pytest.fixture(scope="module")
def old_catalog(tiny_catalog: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny catalog as an older workbench wrote it: no concept findings, verdicts or sequence findings, no
    stratified or calibrated columns, no strata shares or artefact kinds, no rediscovery control."""
    from workbench.catalog import write_catalog

    adata = Catalog.open(tiny_catalog).adata
    tables = dict(adata.uns["tables"])
    for name in NEW_TABLES:
        tables.pop(name, None)
    for name in [t for t in tables if t.startswith("best_")]:
        tables[name] = tables[name].drop(columns=[c for c in NEW_BEST_COLUMNS if c in tables[name].columns])
    drop = {"association": ("expected_tp", "or_mh", "z_cmh", "p_cmh", "q_cmh", "stratified", "explained_by_position"),
            "missing_annotations": ("stratified", "or_mh", "q_cmh"),
            "unexplained_features": ("strata_share", "score_beyond"),
            "rediscovery": ("control_feature", "control_precision_at_k", "control_lift", "evidence")}
    for name, cols in drop.items():
        if name in tables:
            tables[name] = tables[name].drop(columns=[c for c in cols if c in tables[name].columns])
    missing = tables["missing_annotations"]
    tables["missing_annotations"] = missing[missing["kind"].astype(str) != "numbering artefact"].reset_index(drop=True)
    adata.uns["tables"] = tables
    summary = {k: v for k, v in dict(adata.uns["summary"]).items()
               if not k.startswith("concepts_captured_beyond") and k not in ("strata", "concept_findings")}
    adata.uns["summary"] = summary
    out = tmp_path_factory.mktemp("old_catalog") / "catalog"
    write_catalog(adata, out)
    return out


# ------------------------------------------------------------------------------------------------ beyond position


@pytest.mark.slow
@pytest.mark.real_model
def test_beyond_shows_the_headline_and_the_findings(demo_catalog: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cat = Catalog.open(demo_catalog)
    s = cat.summary
    findings = _findings(cat)
    at = _open(monkeypatch, demo_catalog, "beyond")
    assert [t.value for t in at.title] == ["Beyond position"]
    metrics = _metrics(at)
    testable = s["concepts_testable"]
    assert metrics["SAE features"] == f"{s['concepts_captured_beyond_sae']} / {testable}"
    assert metrics["neurons"] == f"{s['concepts_captured_beyond_neurons']} / {testable}"
    assert metrics["random-weight control"] == f"{s['concepts_captured_beyond_random']} / {testable}"
    assert metrics["Findings"] == str(s["concept_findings"])
    assert s["concepts_captured_beyond_sae"] == int((findings["beyond_f1_sae"] > 0.5).sum())
    assert any(views.md_escape(s["strata"]) in c.value and f"{testable} of {s['n_concepts']} concepts" in c.value
               for c in at.caption)
    for line in s.get("top_concept_findings") or []:
        assert views.md_escape(line) in _markdown(at)

    # by default the table lists findings and concepts a control captures as well, in the catalog's order
    table = at.dataframe[0].value
    default = findings[findings["finding"].isin(["finding", "control as good"])]
    assert list(table["concept"]) == list(default["concept"])
    assert np.allclose(table["beyond_f1_sae"], default["beyond_f1_sae"])
    assert f"**{len(default):,}** of {len(findings):,} concepts" in _markdown(at)

    # another status, then every concept
    status = findings["finding"].value_counts().index[0]
    at.multiselect(key="_bp_status").set_value([status]).run()
    assert_ok(at)
    shown = at.dataframe[0].value
    assert len(shown) == int((findings["finding"] == status).sum()) > 0 and set(shown["finding"]) == {status}
    at.multiselect(key="_bp_status").set_value([]).run()
    assert list(at.dataframe[0].value["concept"]) == list(findings["concept"])
    at.text_input(key="_bp_text").input("cdr3").run()
    assert list(at.dataframe[0].value["concept"]) == [c for c in findings["concept"] if "cdr3" in c.lower()]


@pytest.mark.slow
@pytest.mark.real_model
def test_beyond_shows_the_evidence_of_a_concept(demo_catalog: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cat = Catalog.open(demo_catalog)
    findings = _findings(cat).set_index("concept")
    verdicts = cat.table("verdicts").astype({"concept": str}).set_index("concept")
    tested = verdicts[verdicts["diff_neurons_low"].notna() & (verdicts["verdict"] != "not captured")]
    survivors = findings[findings["beyond_feature"].str.len() > 0].index
    concept = next((c for c in tested.index if c in survivors), tested.index[0])
    v, row = verdicts.loc[concept], findings.loc[concept]

    at = _open(monkeypatch, demo_catalog, "beyond")
    at.multiselect(key="_bp_status").set_value([]).run()
    at.selectbox(key="_bp_concept").select(concept).run()
    assert_ok(at)
    assert at.header[0].value == concept
    text = _markdown(at)
    assert f"**{views.md_escape(row['finding'])}**" in text
    assert views.md_escape(v["verdict"]) in text
    for rep in ("neurons", "random"):
        low, high = v[f"diff_{rep}_low"], v[f"diff_{rep}_high"]
        assert f"**{v[f'diff_{rep}']:+.3f}** (95% interval {low:+.3f} to {high:+.3f}" in text
    metrics = _metrics(at)
    assert metrics["Surviving SAE feature"] == (row["beyond_feature"] or "none")
    assert metrics["F1 beyond"] == f"{row['beyond_f1_sae']:.3f}"
    assert metrics["Odds ratio (MH)"] == views.fmt_num(row["beyond_or"])
    assert metrics["q (CMH)"] == views.fmt_q(row["beyond_q"])
    # the chart puts each representation's plain and beyond F1 side by side
    bars = chart_rows(at.get("vega_lite_chart")[0]).set_index(["representation", "measure"])["F1"]
    for rep, label in (("sae", "SAE features"), ("neurons", "neurons"), ("random", "random-weight control")):
        assert bars[(label, "plain test F1")] == pytest.approx(row[f"f1_{rep}"])
        assert bars[(label, "beyond position and residue")] == pytest.approx(row[f"beyond_f1_{rep}"])

    # selecting a table row shows that concept; its SAE feature opens in the feature browser
    other = str(at.dataframe[0].value["concept"].iloc[1])
    send_selection(at, at.dataframe[0], {"rows": [1], "columns": [], "cells": []})
    assert_ok(at)
    assert at.header[0].value == other and at.selectbox(key="_bp_concept").value == other
    fid = str(verdicts.loc[other, "feature_sae"])
    at.button(key=f"_bp_open_{fid}").click().run()
    assert_ok(at)
    assert at.session_state["feature"] == fid and at.title[0].value == "Feature browser"
    assert at.header[0].value == fid


def test_beyond_on_a_catalog_without_random_control(tiny_catalog: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cat = Catalog.open(tiny_catalog)
    findings = _findings(cat)
    at = _open(monkeypatch, tiny_catalog, "beyond")
    metrics = _metrics(at)
    assert "random-weight control" not in metrics
    testable = int((findings["stratified"] != "not testable").sum())
    assert metrics["SAE features"] == f"{int((findings['beyond_f1_sae'] > 0.5).sum())} / {testable}"
    assert metrics["Findings"] == str(int((findings["finding"] == "finding").sum()))
    at.multiselect(key="_bp_status").set_value([]).run()
    assert_ok(at)
    assert list(at.dataframe[0].value["concept"]) == list(findings["concept"])
    assert at.header[0].value == findings["concept"].iloc[0]
    assert views.md_escape(cat.table("verdicts").astype({"concept": str}).set_index("concept").at[
        findings["concept"].iloc[0], "verdict"]) in _markdown(at)


# ------------------------------------------------------------------------------------------------ concept explorer


@pytest.mark.slow
@pytest.mark.real_model
def test_concept_explorer_shows_the_stratified_figures(demo_catalog: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cat = Catalog.open(demo_catalog)
    findings = _findings(cat).set_index("concept")
    best = cat.table("best_sae").astype({"concept": str}).set_index("concept")
    concept = next((c for c in best.index if c.startswith("shm=")), best.index[0])  # antibody biology, as any concept
    monkeypatch.setenv(ENV, str(demo_catalog))
    at = AppTest.from_file(str(APP.parent / "app_pages" / "concepts.py"), default_timeout=240)
    at.query_params["concept"] = concept
    at.run()
    assert_ok(at)
    assert at.header[0].value == concept
    controls = at.dataframe[0].value.set_index("set")
    sae = controls.loc["SAE features"]
    assert sae["stratified"] == best.at[concept, "stratified"]
    assert sae["or_mh"] == pytest.approx(best.at[concept, "or_mh"], nan_ok=True)
    assert sae["q_cmh"] == views.fmt_q(best.at[concept, "q_cmh"])
    assert sae["null_p"] == views.fmt_q(best.at[concept, "null_p"])
    assert sae["null_q"] == views.fmt_q(best.at[concept, "null_q"])
    assert set(controls.index) == {"SAE features", "neurons", "random-weight control"}
    assert f"Beyond position and residue: {views.md_escape(findings.at[concept, 'finding'])}" in _markdown(at)
    pairs = at.dataframe[-1].value
    assert {"stratified", "or_mh", "q_cmh"} <= set(pairs.columns)


# ------------------------------------------------------------------------------------------------ discovery


@pytest.mark.slow
@pytest.mark.real_model
def test_discovery_shows_sequence_findings_and_hides_artefacts(demo_catalog: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    cat = Catalog.open(demo_catalog)
    seq = cat.table("sequence_findings").astype({"target": str, "representation": str, "kind": str, "status": str})
    at = _open(monkeypatch, demo_catalog, "discovery")

    side = _frame(at, "target")
    assert list(side["target"]) == list(pd.unique(seq["target"]))
    for rep in ("sae", "neurons", "random_sae"):
        rows = seq[seq["representation"] == rep].set_index("target").reindex(side["target"])
        expected = rows["test_auroc_adjusted"].where(rows["kind"] == "binary", rows["test_rho_adjusted"])
        assert np.allclose(side[rep].to_numpy(dtype=float), expected.to_numpy(dtype=float), equal_nan=True)
    sae = seq[seq["representation"] == "sae"].set_index("target").reindex(side["target"])
    assert list(side["status"]) == list(sae["status"])
    assert list(side["feature"]) == [str(f) if isinstance(f, str) else "" for f in sae["best_feature"]]
    ok = sae["status"] == "ok"
    assert _metrics(at)["Targets tested"] == f"{int(ok.sum())} / {len(sae)}"

    # numbering artefacts are hidden until asked for; the stratified test's columns are shown
    missing = cat.table("missing_annotations")
    artefacts = int((missing["kind"].astype(str) == "numbering artefact").sum())
    shown = _frame(at, "span")
    assert len(shown) == len(missing) - artefacts and "numbering artefact" not in set(shown["kind"])
    assert {"stratified", "or_mh", "q_cmh"} <= set(shown.columns)
    if artefacts:
        assert f"({artefacts:,} numbering artefacts hidden)" in _markdown(at)
        at.checkbox(key="missing_artefacts").check().run()
        assert_ok(at)
        assert len(_frame(at, "span")) == len(missing)

    # unexplained features with their strata share; rediscovery against the random control
    unexplained = cat.table("unexplained_features")
    if len(unexplained):
        assert np.allclose(_frame(at, "top_residues")["strata_share"], unexplained["strata_share"])
    red = cat.table("rediscovery")
    table = _frame(at, "precision_at_k")
    assert list(table["evidence"]) == list(red["evidence"].astype(bool))
    assert np.allclose(table["control_precision_at_k"], red["control_precision_at_k"], equal_nan=True)
    assert _metrics(at)["Evidence (SAE beats the control)"] == f"{int(red['evidence'].sum())} / {len(red)}"


# ------------------------------------------------------------------------------------------------ older catalogs


@pytest.mark.parametrize("page", ["beyond", "concepts", "discovery"])
def test_pages_without_the_new_tables(page: str, old_catalog: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cat = Catalog.open(old_catalog)
    assert not set(NEW_TABLES) & set(cat.tables)
    at = _open(monkeypatch, old_catalog, page)
    if page == "beyond":
        assert any("no `concept_findings` table" in i.value for i in at.info) and not at.dataframe and not at.metric
    elif page == "concepts":
        controls = at.dataframe[0].value
        assert "stratified" not in controls.columns and "null_q" not in controls.columns
        assert "Beyond position and residue" not in _markdown(at)
        best = cat.table("best_sae").astype({"concept": str}).set_index("concept")
        assert controls.iloc[0]["best unit"] == str(best.at[at.header[0].value, "best_feature"])
    else:
        assert any("no sequence-level findings" in i.value for i in at.info)
        missing = cat.table("missing_annotations")
        shown = _frame(at, "span")
        assert len(shown) == len(missing) and "stratified" not in shown.columns
        assert not at.checkbox  # nothing to hide
        assert "evidence" not in _frame(at, "precision_at_k").columns


def test_beyond_on_an_image_catalog(imaging_catalog: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Image catalogs: no table (older ones), one stratum (the page says that beyond is plain there), or strata of
    their own (the grid position), described as such."""
    cat = Catalog.open(imaging_catalog)
    at = _open(monkeypatch, imaging_catalog, "beyond")
    assert [t.value for t in at.title] == ["Beyond position"]
    if "concept_findings" not in cat.tables:
        assert any("no `concept_findings` table" in i.value for i in at.info)
        return
    s = cat.summary
    one = any("no position or residue to stratify by" in i.value for i in at.info)
    assert one == (s["n_strata"] == 1)
    assert any(views.md_escape(s["strata"]) in c.value for c in at.caption)
    findings = _findings(cat)
    default = findings[findings["finding"].isin(["finding", "control as good"])]
    assert list(at.dataframe[0].value["concept"]) == list(default["concept"])
    assert _metrics(at)["SAE features"] == f"{s['concepts_captured_beyond_sae']} / {s['concepts_testable']}"
