"""Concept explorer: pick a concept (by group: region, chain_region, imgt, aa, motif, species ...) and see the SAE
features that capture it best, against the best neuron and the best random-control feature.

The concept shown is a new ``?concept=region%3DCDR3`` query parameter, else the last one picked in this session, else
the first concept of the ``region`` group (or of the first group).

Below the tables (each with CSV / Parquet downloads): a sequence logo of the top windows of the concept's best
features (pooled, or one feature at a time), and links out to IMGT / InterPro / QuickGO where the concept names
something those databases hold (plain links for the browser).
"""

from __future__ import annotations

from typing import Any

import altair as alt
import numpy as np
import streamlit as st

from apps.workbench_app import _links as links
from apps.workbench_app import _logos as logos
from apps.workbench_app import _views as views
from apps.workbench_app._state import get_catalog
from workbench.errors import WorkbenchError

# Session keys: the concept shown (shared with other pages), the group picked, widget keys, the last query value.
CONCEPT = "concept"
GROUP = "_cx_group_value"
W_GROUP = "_cx_group"
W_CONCEPT = "_cx_concept"
W_LIMIT = "_cx_limit"
SEEN = "_cx_qp_seen"
ALL = "(all groups)"
PREFERRED_GROUPS = ("region", "chain_region", "imgt", "aa", "motif", "species", "chain_type", "v_family")


def group_of(concept: str) -> str:
    """The group of a concept: the part before ``=`` (``region=CDR3`` -> ``region``), else the whole name."""
    return concept.split("=", 1)[0] if "=" in concept else concept


def _concepts(cat: Any) -> dict[str, dict[str, Any]]:
    """``{concept: {test_f1, best_feature}}`` of every concept in ``best_sae`` (else in the association table)."""

    @st.cache_data(show_spinner=False, max_entries=8)
    def _load(path: str, _cat: Any) -> dict[str, dict[str, Any]]:
        if "best_sae" in _cat.tables:
            best = _cat.table("best_sae")
            return {str(c): {"test_f1": float(f), "best_feature": str(b)}
                    for c, f, b in zip(best["concept"], best["test_f1"], best["best_feature"])}
        if "association" in _cat.tables:
            pairs = _cat.table("association")
            col = pairs["concept"]
            names = col.cat.categories.astype(str) if hasattr(col, "cat") else sorted(col.astype(str).unique())
            return {str(c): {"test_f1": float("nan"), "best_feature": ""} for c in names}
        return {}

    return _load(str(cat.path), cat)


def _rows(cat: Any, concept: str) -> Any:
    """All association rows of ``concept``, by test F1 (then validation F1), with description and family."""

    @st.cache_data(show_spinner=False, max_entries=256)
    def _load(path: str, concept: str, _cat: Any) -> Any:
        pairs = _cat.table("association")
        col = pairs["concept"]
        if hasattr(col, "cat"):
            hit = np.flatnonzero(col.cat.categories.astype(str) == concept)
            mask = col.cat.codes.to_numpy() == (int(hit[0]) if len(hit) else -2)
        else:
            mask = (col.astype(str) == concept).to_numpy()
        rows = pairs[mask].sort_values(["test_f1", "val_f1"], ascending=False, kind="stable").reset_index(drop=True)
        rows = rows.astype({"feature": str, "concept": str})
        var = _cat.features.reindex(rows["feature"])
        rows.insert(1, "description", var["description"].astype(str).to_numpy())
        rows["family"] = var["family"].astype(str).to_numpy() if "family" in var else ""
        return rows

    return _load(str(cat.path), concept, cat)


def _controls(cat: Any, concept: str) -> list[dict[str, Any]]:
    """The best unit of every ``best_*`` table for ``concept`` (SAE first)."""
    out = []
    names = {"best_sae": "SAE features", "best_neurons": "neurons", "best_random": "random-weight control"}
    order = [t for t in names if t in cat.tables] + sorted(t for t in cat.tables if t.startswith("best_") and t not in names)
    for table in order:
        best = cat.table(table)
        hit = best[best["concept"].astype(str) == concept]
        if len(hit):
            r = hit.iloc[0]
            row = {"set": names.get(table, table.removeprefix("best_")), "best unit": str(r.get("best_feature")),
                   "test_f1": r.get("test_f1"), "val_f1": r.get("val_f1"), "threshold": r.get("threshold"),
                   "q_value": r.get("q_value"), "null_p": r.get("null_p"), "n_labelled": r.get("n_labelled")}
            row.update({c: r.get(c) for c in _STRATIFIED_COLUMNS if c in best.columns})  # newer catalogs only
            out.append(row)
        else:
            out.append({"set": names.get(table, table.removeprefix("best_")), "best unit": "no overlap"})
    return out


# Columns of the ``best_*`` tables of catalogs built with a stratified association and a calibrated null.
_STRATIFIED_COLUMNS = ("null_q", "stratified", "or_mh", "q_cmh", "beyond_feature", "beyond_test_f1")


def _finding_line(cat: Any, concept: str) -> None:
    """The concept's finding status beyond position and residue (``concept_findings``, newer catalogs only), with its
    reason, surviving feature and verdict."""
    table = cat.table("concept_findings") if "concept_findings" in cat.tables else None
    hit = None if table is None else table[table["concept"].astype(str) == concept]
    if hit is None or not len(hit):
        return
    raw = hit.iloc[0]
    row = {k: ("" if views.is_missing(v) else v) for k, v in raw.items()}  # text columns
    parts = [f"**Beyond position and residue: {views.md_escape(row.get('finding') or '–')}** — "
             + views.md_escape(row.get("why", ""))]
    fid = row.get("beyond_feature")
    if fid:
        q = views.md_escape(views.fmt_q(raw.get("beyond_q")))
        parts.append(f"surviving SAE feature {views.md_escape(fid)}: F1 {views.fmt_num(raw.get('beyond_f1_sae'))}, "
                     f"odds ratio {views.fmt_num(raw.get('beyond_or'))}, q {q}")
    if row.get("verdict"):
        parts.append(f"verdict: {views.md_escape(row['verdict'])}")
    st.markdown(". ".join(parts) + ". (Evidence: the Beyond position page.)")


def _current(concepts: dict[str, dict[str, Any]]) -> str:
    ss = st.session_state
    qp = st.query_params.get("concept")
    chosen = None
    if qp is not None and qp.strip() and qp != ss.get(SEEN):
        ss[SEEN] = qp
        chosen = qp if qp in concepts else next((c for c in concepts if c.lower() == qp.lower()), None)
        if chosen is None:
            st.warning(f"No concept {qp!r} in this catalog; pick one below.")
    if chosen is None and ss.get(CONCEPT) in concepts:
        chosen = ss[CONCEPT]
    if chosen is None:
        groups = _groups(concepts)
        first = next((g for g in PREFERRED_GROUPS if g in groups), next(iter(groups)))
        chosen = groups[first][0]
    ss[CONCEPT] = chosen
    if st.query_params.get("concept") != chosen:
        st.query_params["concept"] = chosen
    ss[SEEN] = chosen
    return chosen


def _groups(concepts: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for c in sorted(concepts, key=_concept_sort_key):
        out.setdefault(group_of(c), []).append(c)
    return dict(sorted(out.items(), key=lambda kv: (PREFERRED_GROUPS.index(kv[0]) if kv[0] in PREFERRED_GROUPS else 99, kv[0])))


def _concept_sort_key(c: str) -> tuple[str, int, str]:
    group, _, value = c.partition("=")
    digits = value.lstrip("-")
    return (group, int(value) if digits.isdigit() else -10**9, value)


def _on_group() -> None:
    ss = st.session_state
    ss[GROUP] = ss.get(W_GROUP, ALL)


def _on_concept() -> None:
    ss = st.session_state
    if ss.get(W_CONCEPT):
        ss[CONCEPT] = ss[W_CONCEPT]


def _pickers(concepts: dict[str, dict[str, Any]], concept: str) -> str:
    ss = st.session_state
    groups = _groups(concepts)
    group = ss.get(GROUP)
    if group not in groups and group != ALL:
        group = group_of(concept)
    options = sorted(concepts, key=_concept_sort_key) if group == ALL else groups[group]
    if concept not in options:  # a new group was picked: show its best-captured concept
        concept = max(options, key=lambda c: np.nan_to_num(concepts[c]["test_f1"], nan=-1.0))
        ss[CONCEPT] = concept
        st.query_params["concept"] = concept
        ss[SEEN] = concept
    left, mid, right = st.columns([1, 2, 1])
    ss[W_GROUP] = group
    left.selectbox("Concept group", [ALL, *groups], key=W_GROUP, on_change=_on_group,
                   format_func=lambda g: g if g == ALL else f"{g} ({len(groups[g])})")
    ss[W_CONCEPT] = concept
    mid.selectbox("Concept", options, key=W_CONCEPT, on_change=_on_concept,
                  format_func=lambda c: f"{c}  (best SAE F1 {views.fmt_num(concepts[c]['test_f1'], digits=2)})")
    right.number_input("Features to list", min_value=5, max_value=200, value=20, step=5, key=W_LIMIT)
    return concept


def _comparison(cat: Any, concept: str, rows: Any, controls: list[dict[str, Any]]) -> None:
    import altair as alt
    import pandas as pd

    st.subheader("SAE features vs controls")
    by_set = {c["set"]: c for c in controls}
    c = st.columns(4)
    top = rows.iloc[0] if len(rows) else None
    c[0].metric("Best SAE feature (test F1)", "none" if top is None else f"{top['feature']} · {top['test_f1']:.3f}",
                help="Highest test F1 among this concept's association pairs")
    for col, name in zip(c[1:], ("SAE features", "neurons", "random-weight control")):
        r = by_set.get(name)
        label = {"SAE features": "Best SAE feature (chosen on validation)", "neurons": "Best neuron",
                 "random-weight control": "Best random-control feature"}[name]
        if r is None:
            col.metric(label, "not run")
        elif views.is_missing(r.get("test_f1")):
            col.metric(label, r["best unit"])
        else:
            col.metric(label, f"{r['best unit']} · {float(r['test_f1']):.3f}")
    if controls:
        table = pd.DataFrame(controls)
        order = ["set", "best unit", "test_f1", "val_f1", "threshold", "q_value", "null_p", "null_q", "stratified"]
        table = table[[c for c in order if c in table] + [c for c in table if c not in order]]
        for col in ("q_value", "null_p", "null_q", "q_cmh"):
            if col in table:
                table[col] = [views.fmt_q(q) for q in table[col]]
        raw = pd.DataFrame(controls)
        st.dataframe(table, hide_index=True, width="stretch",
                     column_config={"test_f1": st.column_config.NumberColumn("test F1", format="%.3f"),
                                    "val_f1": st.column_config.NumberColumn("val F1", format="%.3f"),
                                    "q_value": st.column_config.TextColumn("q"),
                                    "null_p": st.column_config.TextColumn(
                                        "permutation p",
                                        help="p of the best validation F1 against labels shifted along the tokens "
                                             "(newer catalogs: from a Gumbel fit to the permutation maxima)"),
                                    "null_q": st.column_config.TextColumn(
                                        "permutation q", help="BH q-value of the permutation p over the concepts"),
                                    "stratified": st.column_config.TextColumn(
                                        "stratified", help="The best unit's pair tested within position x residue x "
                                        "chain strata: survives / explained / not testable / not significant"),
                                    "or_mh": st.column_config.NumberColumn(
                                        "odds ratio (MH)", format="%.2f",
                                        help="Mantel-Haenszel odds ratio within the strata"),
                                    "q_cmh": st.column_config.TextColumn("q (CMH)"),
                                    "beyond_feature": st.column_config.TextColumn(
                                        "best surviving unit", help="Best unit whose pair survives the stratification"),
                                    "beyond_test_f1": st.column_config.NumberColumn("F1 beyond", format="%.3f")})
        views.table_downloads(raw, name=f"{_file_name(concept)}_controls", key="_cx_dl_controls")
    if len(rows):
        shown = rows.head(int(st.session_state.get(W_LIMIT, 20)))
        bars = alt.Chart(shown[["feature", "test_f1"]]).mark_bar(color="#d62728").encode(
            x=alt.X("feature:N", sort=None, title="SAE feature (by test F1)"),
            y=alt.Y("test_f1:Q", title="test F1", scale=alt.Scale(domain=[0, 1])),
            tooltip=["feature:N", alt.Tooltip("test_f1:Q", format=".3f")])
        short = {"neurons": "best neuron", "random-weight control": "best random control"}
        lines = [{"unit": f"{short[n]} {r['best unit']}", "test_f1": float(r["test_f1"])} for n, r in by_set.items()
                 if n in short and not views.is_missing(r.get("test_f1"))]
        chart = bars
        if lines:
            rules = alt.Chart(pd.DataFrame(lines)).mark_rule(strokeDash=[4, 3], size=2).encode(
                y="test_f1:Q", color=alt.Color("unit:N", title=None, legend=alt.Legend(orient="bottom", labelLimit=300),
                                               scale=alt.Scale(range=["#1f77b4", "#7f7f7f"])),
                tooltip=["unit:N", alt.Tooltip("test_f1:Q", format=".3f")])
            chart = alt.layer(bars, rules)
        st.altair_chart(chart.properties(height=240), width="stretch")


_TABLE_COLUMNS = ["feature", "description", "test_f1", "test_precision", "test_recall", "test_domain_recall", "threshold",
                  "q_value", "stratified", "or_mh", "q_cmh", "val_f1", "tp", "n_active", "n_labelled", "family"]


def _best_features(rows: Any) -> None:
    limit = int(st.session_state.get(W_LIMIT, 20))
    st.subheader("Best features")
    if not len(rows):
        st.info("No SAE feature overlaps this concept.")
        return
    n_sig = int((rows["q_value"] <= 0.05).sum()) if "q_value" in rows else 0
    n_cap = int((rows["test_f1"] > 0.5).sum())
    n_surv = (f"; {int((rows['stratified'] == 'survives').sum()):,} survive the stratification by position and residue"
              if "stratified" in rows else "")
    st.caption(f"{len(rows):,} features overlap the concept; {n_sig:,} are significant (q <= 0.05) and {n_cap:,} reach test "
               f"F1 > 0.5{n_surv}. Showing the best {min(limit, len(rows))}.")
    cols = [c for c in _TABLE_COLUMNS if c in rows.columns]
    shown = rows.head(limit)[cols].copy()
    for col in ("q_value", "q_cmh"):
        if col in shown:
            shown[col] = [views.fmt_q(q) for q in shown[col]]
    st.dataframe(shown, hide_index=True, width="stretch", key="_cx_table",
                 column_config={
                     "description": st.column_config.TextColumn(width="large"),
                     "test_f1": st.column_config.NumberColumn("F1", format="%.3f"),
                     "test_precision": st.column_config.NumberColumn("precision", format="%.3f"),
                     "test_recall": st.column_config.NumberColumn("recall", format="%.3f"),
                     "test_domain_recall": st.column_config.NumberColumn("domain recall", format="%.3f"),
                     "threshold": st.column_config.NumberColumn(format="%.2f"),
                     "q_value": st.column_config.TextColumn("q"),
                     "stratified": st.column_config.TextColumn("stratified"),
                     "or_mh": st.column_config.NumberColumn("odds ratio (MH)", format="%.2f"),
                     "q_cmh": st.column_config.TextColumn("q (CMH)"),
                     "val_f1": st.column_config.NumberColumn("val F1", format="%.3f"),
                 })
    views.table_downloads(rows.head(limit)[cols], name=f"{_file_name(str(rows['concept'].iloc[0]))}_features",
                          key="_cx_dl_features")
    st.caption("F1 = precision x domain-level recall on the test half of the sequences; recall is token-level. Each "
               "(feature, concept) pair is reported at its threshold chosen on the validation half among 0, 0.15, 0.5, "
               "0.6 and 0.8 of the feature's max; the curves below show every threshold for the best features.")
    st.markdown("**Open a feature in the Feature browser**")
    buttons = st.columns(5)
    for i, fid in enumerate(rows["feature"].head(10)):
        if buttons[i % 5].button(f"open {fid}", key=f"_cx_open_{fid}", width="stretch"):
            views.open_feature(str(fid))


def _file_name(concept: str) -> str:
    """A file name for a concept's tables (``region=CDR3`` -> ``region_CDR3``)."""
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", concept).strip("_") or "concept"


POOLED = "best features pooled"


def _logo(cat: Any, concept: str, rows: Any) -> None:
    """Sequence logo of the top windows of the concept's best features (pooled, or one at a time)."""
    from apps.workbench_app._images import is_image_catalog

    if not len(rows) or is_image_catalog(cat):
        return
    best = [str(f) for f in rows["feature"].head(5)]
    st.subheader("Sequence logo of its best features")
    choice = st.selectbox("Logo of", [POOLED, *best], key="_cx_logo_of",
                          format_func=lambda f: f"the best {len(best)} features pooled" if f == POOLED else f)
    features = best if choice == POOLED or choice not in best else [choice]
    logos.show_logo(cat, features, lead="{n} top windows of " + ", ".join(features),
                    empty="These features have no top examples to draw a logo from.")


def _threshold_curves(cat: Any, concept: str) -> None:
    """Test precision, recall, domain recall and F1 across the thresholds for the concept's best features."""
    if "association_thresholds" not in cat.tables:
        st.caption("This catalog has no per-threshold curves (built before the `association_thresholds` table).")
        return
    curves = _concept_curves(str(cat.path), concept, cat)
    if curves.empty:
        return
    st.subheader("Across thresholds")
    metric = st.radio("Metric", ["f1", "precision", "recall", "domain_recall"], horizontal=True, key="_cx_metric")
    chart = alt.Chart(curves).mark_line(point=True).encode(
        x=alt.X("threshold:Q", title="threshold (fraction of the feature's max)"),
        y=alt.Y(f"{metric}:Q", title=metric.replace("_", " "), scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("feature:N"), tooltip=["feature", "threshold", "precision", "recall", "domain_recall", "f1"],
    )
    st.altair_chart(chart, width="stretch")
    views.table_downloads(curves, name=f"{_file_name(concept)}_thresholds", key="_cx_dl_curves")


@st.cache_data(show_spinner=False, max_entries=64)
def _concept_curves(path: str, concept: str, _cat: Any) -> Any:
    table = _cat.table("association_thresholds")
    return table[table["concept"].astype(str) == concept].astype({"feature": str, "concept": str}).reset_index(drop=True)


def main() -> None:
    cat = get_catalog()
    st.title("Concept explorer")
    concepts = _concepts(cat)
    if not concepts:
        st.warning("This catalog has no concept associations (no best_sae or association table).")
        return
    concept = _pickers(concepts, _current(concepts))
    st.header(concept)
    out = links.concept_links(concept)
    if out:
        st.markdown(f"In public databases: {links.md_links(out)}")
    _finding_line(cat, concept)
    rows = _rows(cat, concept) if "association" in cat.tables else None
    if rows is None:
        st.warning("This catalog has no association table.")
        return
    _comparison(cat, concept, rows, _controls(cat, concept))
    _best_features(rows)
    _logo(cat, concept, rows)
    _threshold_curves(cat, concept)


try:
    main()
except WorkbenchError as exc:
    st.error(str(exc))
