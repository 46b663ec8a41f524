"""AppTest checks of the Overview, Feature browser and Concept explorer pages on the tiny and the demo catalog.

Each page script is run the way Streamlit runs it (``streamlit.testing.v1.AppTest``), with the catalog given through
``WORKBENCH_APP_CATALOG``; navigation between pages is checked through ``app.py`` (``st.navigation``).
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("streamlit")

from streamlit.testing.v1 import AppTest  # noqa: E402

from apptest_helpers import assert_ok, page_test, send_selection  # noqa: E402  (tests/apps, on the path under pytest)

from apps.workbench_app import _views as views  # noqa: E402
from workbench.catalog import Catalog  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "apps" / "workbench_app"
PAGES = ("overview", "features", "concepts")


def _html(at: AppTest) -> list[str]:
    return [str(h.value) for h in at.get("html")]


def _markdown(at: AppTest) -> str:
    return "\n".join(str(m.value) for m in at.markdown)


# ------------------------------------------------------------------------------------------------------------ every page
@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES)
def test_pages_render_on_the_tiny_catalog(page: str, tiny_catalog: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = page_test(page, tiny_catalog, monkeypatch).run()
    assert_ok(at)
    assert at.title[0].value in ("Overview", "Feature browser", "Concept explorer")


@pytest.mark.slow
@pytest.mark.real_model
@pytest.mark.parametrize("page", PAGES)
def test_pages_render_on_the_demo_catalog(page: str, demo_catalog: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = page_test(page, demo_catalog, monkeypatch).run()
    assert_ok(at)
    assert at.title[0].value in ("Overview", "Feature browser", "Concept explorer")


# ------------------------------------------------------------------------------------------------------------ overview
@pytest.mark.slow
@pytest.mark.real_model
def test_overview_shows_fidelity_controls_and_counts(demo_catalog: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    summary = Catalog.open(demo_catalog).summary
    at = page_test("overview", demo_catalog, monkeypatch).run()
    assert_ok(at)
    metrics = {m.label: m.value for m in at.metric}
    assert "**Model** `antiberty` · **layer** 4" in _markdown(at)
    assert metrics["FVE"] == views.fmt_num(summary["fve"])
    assert metrics["Features"] == f"{summary['n_features']:,}"
    assert metrics["Tokens"] == f"{summary['n_tokens']:,}"
    n = summary["n_concepts"]
    assert metrics["SAE features"] == f"{summary['concepts_captured_sae']} / {n}"
    assert metrics["neurons"] == f"{summary['concepts_captured_neurons']} / {n}"
    assert metrics["random-weight control"] == f"{summary['concepts_captured_random']} / {n}"
    # the density histogram switches source; a discovery from the summary is listed
    assert at.radio[0].value == "catalog"
    at.radio[0].set_value("metrics").run()
    assert_ok(at)
    assert any("held-out" in c.value for c in at.caption)
    lists = ("top_concept_findings", "top_missing_annotations", "top_missing_annotations_trivial")
    first = next(summary[k][0] for k in lists if summary.get(k))
    assert views.md_escape(first) in _markdown(at)


def test_overview_says_when_a_control_was_not_run(tiny_catalog: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = page_test("overview", tiny_catalog, monkeypatch).run()
    assert_ok(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["random-weight control"] == "not run"  # the tiny catalog has no random-weight control
    assert metrics["Loss recovered"] == "–"
    assert any("not measured" in c.value for c in at.caption)


# ------------------------------------------------------------------------------------------------------------ features
@pytest.mark.slow
@pytest.mark.real_model
def test_search_lists_features_about_cdr3(demo_catalog: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = page_test("features", demo_catalog, monkeypatch).run()
    at.text_input(key="_fb_query").input("CDR3").run()
    assert_ok(at)
    hits = at.dataframe[0].value
    assert len(hits) > 0
    for concept, description in zip(hits["concept"].astype(str), hits["description"].astype(str)):
        assert "cdr3" in concept.lower() or "cdr3" in description.lower()
    box = at.selectbox(key="_fb_pick_hits")
    assert [str(o).split(" · ")[0] for o in box.options] == list(hits["feature"])
    # picking a result shows it
    target = str(hits["feature"].iloc[min(2, len(hits) - 1)])
    box.select(target).run()
    assert_ok(at)
    assert at.header[0].value == target
    # a query that matches nothing says so
    at.text_input(key="_fb_query").input("zzzz-no-such-thing").run()
    assert_ok(at)
    assert any("No feature matches" in i.value for i in at.info)


@pytest.mark.slow
@pytest.mark.real_model
def test_selecting_another_feature_changes_what_is_shown(demo_catalog: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    var = Catalog.open(demo_catalog).features
    live = var[var["density"] > 0]
    a, b = str(live.index[0]), str(live.index[len(live) // 2])
    assert var.at[a, "description"] != var.at[b, "description"]
    at = page_test("features", demo_catalog, monkeypatch).run()
    assert_ok(at)
    assert at.header[0].value == a
    assert views.md_escape(var.at[a, "description"]) in _markdown(at)
    at.selectbox(key="_fb_pick").select(b).run()
    assert_ok(at)
    assert at.header[0].value == b
    text = _markdown(at)
    assert views.md_escape(var.at[b, "description"]) in text
    assert views.md_escape(var.at[a, "description"]) not in text
    assert at.query_params["feature"] == [b]  # the address bar bookmarks the feature shown
    # a click on a row of the nearest-feature table opens that feature
    (table,) = [d for d in at.dataframe if "cosine" in d.value.columns]
    expected = Catalog.open(demo_catalog).neighbors(b, 10)
    assert list(table.value["feature"]) == list(expected["feature"])
    send_selection(at, table, {"rows": [2], "columns": [], "cells": []})
    assert_ok(at)
    assert at.header[0].value == str(expected["feature"].iloc[2]) != b
    assert at.query_params["feature"] == [str(expected["feature"].iloc[2])]


@pytest.mark.slow
@pytest.mark.real_model
def test_feature_page_colours_residues_on_imgt_columns(demo_catalog: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cat = Catalog.open(demo_catalog)
    fid = str(cat.features["top_f1"].astype(float).idxmax())
    monkeypatch.setenv("WORKBENCH_APP_CATALOG", str(demo_catalog))
    at = AppTest.from_file(str(APP / "app_pages" / "features.py"), default_timeout=120)
    at.query_params["feature"] = fid
    at.run()
    assert_ok(at)
    assert at.header[0].value == fid
    page = "".join(_html(at))
    # IMGT numbers above the residues, CDRs marked
    assert '<span class="l k">IMGT</span>' in page
    for cdr in ("CDR1", "CDR2", "CDR3"):
        assert re.search(rf">{cdr} *</span>", page)
    assert re.search(r'<span class="q n">[^<]*\b105\b', page)
    # the top example's strongest residue is coloured at full strength, with its IMGT position in the tooltip
    ex = cat.examples(fid)[0]
    i = int(np.argmax(ex.activations))
    imgt = views.parse_positions(cat.sequences.at[ex.sequence_id, "imgt"], len(ex.sequence))
    assert imgt is not None and imgt[i] is not None
    tip = f'title="{ex.sequence[i]} {i + 1} · IMGT {imgt[i]} · {ex.activations[i]:.2f}"'
    assert tip in page
    assert "background:rgba(214,39,40,1.00)" in page
    # the per-sequence histogram is read from X: as many values as sequences where the feature fires
    assert f"Fires in {int(cat.features.at[fid, 'n_sequences']):,} of" in "\n".join(c.value for c in at.caption)
    # without alignment the same residues come as wrapped lines
    at.toggle(key="_fb_align").set_value(False).run()
    assert_ok(at)
    assert '<span class="l k">IMGT</span>' not in "".join(_html(at))
    assert tip in "".join(_html(at))


@pytest.mark.parametrize("bad", ["f99999", "no-such-feature", "-3"])
def test_unknown_feature_in_the_query_gives_a_warning(bad: str, tiny_catalog: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = page_test("features", tiny_catalog, monkeypatch)
    at.query_params["feature"] = bad
    at.run()
    assert_ok(at)
    assert any(bad in w.value for w in at.warning)
    assert at.header[0].value == "f00000"  # falls back to a real feature


def test_feature_chosen_elsewhere_is_shown(tiny_catalog: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = page_test("features", tiny_catalog, monkeypatch)
    at.session_state["feature"] = "f00005"
    at.run()
    assert_ok(at)
    assert at.header[0].value == "f00005"
    at.session_state["feature"] = 7  # other pages may pass a number
    at.run()
    assert_ok(at)
    assert at.header[0].value == "f00007"
    assert at.selectbox(key="_fb_pick").value == "f00007"


def test_feature_page_shows_probe_and_causal_figures(tiny_catalog: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cat = Catalog.open(tiny_catalog)
    var = cat.features
    measured = var.index[var["causal_kl_ratio"].notna()]
    at = page_test("features", tiny_catalog, monkeypatch)
    at.session_state["feature"] = str(measured[0])
    at.run()
    assert_ok(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Ratio"] == views.fmt_num(var.at[measured[0], "causal_kl_ratio"])
    # the feature's own figures: one HTML row, each value under its label with its help as the tooltip
    strip = next(str(h.proto.body) for h in at.get("html") if "wb-metrics" in str(h.proto.body))
    row = var.loc[measured[0]]
    for label, value in (("Density", views.fmt_pct(row["density"], digits=3)), ("Test F1", views.fmt_num(row["top_f1"])),
                         ("Family", str(row["family"]))):
        assert re.search(rf">{re.escape(label)}</div><div[^>]*>{re.escape(html.escape(value))}</div>", strip)
    assert 'title="Leiden cluster of decoder directions"' in strip
    assert f"`{var.at[measured[0], 'probe_target']}`" in _markdown(at)
    unmeasured = str(var.index[var["causal_kl_ratio"].isna()][0])
    at.session_state["feature"] = unmeasured
    at.run()
    assert_ok(at)
    assert any("Not measured" in i.value for i in at.info)


# ------------------------------------------------------------------------------------------------------------ concepts
@pytest.mark.slow
@pytest.mark.real_model
def test_choosing_another_concept_changes_the_best_features(demo_catalog: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cat = Catalog.open(demo_catalog)
    pairs = cat.table("association").astype({"feature": str, "concept": str})

    def expected(concept: str) -> list[str]:
        hit = pairs[pairs["concept"] == concept].sort_values(["test_f1", "val_f1"], ascending=False, kind="stable")
        return list(hit["feature"].head(20))

    at = page_test("concepts", demo_catalog, monkeypatch).run()
    assert_ok(at)
    first = at.header[0].value
    assert list(at.dataframe[-1].value["feature"]) == expected(first)
    box = at.selectbox(key="_cx_concept")
    options = [str(o).split("  (")[0] for o in box.options]
    other = next(o for o in options if o != first and expected(o) != expected(first))
    box.select(other).run()
    assert_ok(at)
    assert at.header[0].value == other
    assert list(at.dataframe[-1].value["feature"]) == expected(other)
    assert at.query_params["concept"] == [other]
    # the control rows come from best_sae / best_neurons / best_random
    controls = at.dataframe[0].value
    best_neurons = cat.table("best_neurons").astype({"concept": str})
    row = best_neurons[best_neurons["concept"] == other].iloc[0]
    got = controls[controls["set"] == "neurons"].iloc[0]
    assert got["best unit"] == row["best_feature"] and got["test_f1"] == pytest.approx(row["test_f1"])
    # a group narrows the concepts
    at.selectbox(key="_cx_group").select("aa").run()
    assert_ok(at)
    assert all(str(o).startswith("aa=") for o in at.selectbox(key="_cx_concept").options)
    assert at.header[0].value.startswith("aa=")


def test_unknown_concept_in_the_query_gives_a_warning(tiny_catalog: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = page_test("concepts", tiny_catalog, monkeypatch)
    at.query_params["concept"] = "region=NOPE"
    at.run()
    assert_ok(at)
    assert any("region=NOPE" in w.value for w in at.warning)
    assert at.header[0].value.startswith("region=")
    assert any("curves below show every threshold" in c.value for c in at.caption)
    assert any("Across thresholds" in h.value for h in at.subheader)


@pytest.mark.slow
def test_open_buttons_go_to_the_feature_browser(tiny_catalog: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKBENCH_APP_CATALOG", str(tiny_catalog))
    at = AppTest.from_file(str(APP / "app.py"), default_timeout=120).run()
    assert_ok(at)
    assert at.title[0].value == "Overview"
    at.switch_page("app_pages/concepts.py").run()
    assert_ok(at)
    fid = str(at.dataframe[-1].value["feature"].iloc[1])
    at.button(key=f"_cx_open_{fid}").click().run()
    assert_ok(at)
    assert at.title[0].value == "Feature browser"
    assert at.header[0].value == fid
    # the overview's discoveries open their feature too
    at.switch_page("app_pages/overview.py").run()
    button = next(b for b in at.button if (b.key or "").startswith("_ov_"))
    button.click().run()
    assert_ok(at)
    assert at.title[0].value == "Feature browser"
    assert at.header[0].value == button.label.removeprefix("open ")


def test_concept_page_draws_threshold_curves(demo_catalog: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The per-threshold curves of the concept's best features are drawn from the association_thresholds table."""
    cat = Catalog.open(demo_catalog)
    curves = cat.table("association_thresholds")
    concept = "region=CDR3"
    assert set(curves[curves["concept"].astype(str) == concept]["threshold"]) == {0.0, 0.15, 0.5, 0.6, 0.8}
    at = page_test("concepts", demo_catalog, monkeypatch)
    at.query_params["concept"] = concept
    at.run()
    assert not at.exception
    assert any("Across thresholds" in h.value for h in at.subheader)
