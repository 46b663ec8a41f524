"""Discovery: candidate missing annotations, unexplained features, the rediscovery test that backs them, and
sequence-level findings.

Four tabs over the catalog's discovery tables (``missing_annotations``, ``unexplained_features``, ``rediscovery``,
``sequence_findings``), each with a CSV download of its rows. Numbering artefacts among the candidate missing
annotations are hidden unless asked for. A feature is opened in the feature browser by selecting a table row, or by
picking it from the list under the table. Tables or columns an older catalog lacks are left out.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from apps.workbench_app import _views as views
from apps.workbench_app._state import get_catalog

ARTEFACT = "numbering artefact"
KIND_ORDER = ["silent", "conflict", "boundary", ARTEFACT]
KIND_HELP = {
    "silent": "the database has no label of the concept's group there: a candidate missing annotation proper",
    "conflict": "the database labels the span with another concept of the same group: a disagreement",
    "boundary": "the span touches a labelled instance of the concept: a boundary disagreement",
    ARTEFACT: "the span touches the first or last numbered residue: an edge of the numbering, not a discovery "
              "(hidden unless asked for)",
}
REPRESENTATIONS = {"sae": "SAE", "neurons": "neurons", "random_sae": "random-weight SAE"}


def _table(cat: Any, name: str) -> pd.DataFrame | None:
    return cat.table(name) if name in cat.tables else None


def _group(concept: Any) -> str:
    text = "" if pd.isna(concept) else str(concept)
    return text.split("=", 1)[0] if "=" in text else (text or "none")


def _contains(frame: pd.DataFrame, columns: list[str], text: str) -> pd.Series:
    """Rows where any of ``columns`` contains ``text`` (case-insensitive, plain substring)."""
    mask = pd.Series(False, index=frame.index)
    for col in columns:
        if col in frame.columns:
            mask |= frame[col].astype(str).str.contains(text, case=False, regex=False, na=False)
    return mask


def _selected_row(event: Any, frame: pd.DataFrame) -> str | None:
    """The feature of the row selected in an ``st.dataframe`` selection event (None when nothing is selected)."""
    try:
        rows = list(event.selection.rows)
    except AttributeError:
        return None
    if not rows or rows[0] >= len(frame):
        return None
    return str(frame["feature"].iloc[rows[0]])


def _open_picker(cat: Any, frame: pd.DataFrame, *, key: str) -> None:
    """A selectbox of the features listed in ``frame`` and a button opening the chosen one."""
    listed = [str(f) for f in pd.unique(frame["feature"].astype(str)) if f]
    if not listed:
        return
    descriptions = cat.features["description"] if "description" in cat.features.columns else None

    def label(fid: str) -> str:
        if descriptions is None or fid not in descriptions.index:
            return fid
        text = str(descriptions.get(fid, ""))
        return f"{fid} — {text[:90]}{'…' if len(text) > 90 else ''}"

    left, right = st.columns([4, 1], vertical_alignment="bottom")
    fid = left.selectbox("Open a listed feature", listed, format_func=label, key=f"{key}_pick")
    if right.button("Open in feature browser", key=f"{key}_open", icon=":material/open_in_new:") and fid:
        views.open_feature(fid)


def _show_table(frame: pd.DataFrame, *, key: str, column_config: dict[str, Any]) -> str | None:
    event = st.dataframe(frame, hide_index=True, column_config=column_config, on_select="rerun",
                         selection_mode="single-row", key=f"{key}_table", width="stretch")
    return _selected_row(event, frame)


# ------------------------------------------------------------------------------------------------ missing


def missing_tab(cat: Any) -> None:
    table = _table(cat, "missing_annotations")
    if table is None:
        st.info("This catalog has no `missing_annotations` table (the pipeline that built it did not run discovery).")
        return
    st.caption(
        "Unlabelled spans where a feature that reliably marks a concept (test F1 and q-value from the association) "
        "fires. **score** = the feature's normalised activation in the span × its test precision for the concept. "
        "**kind**: " + "; ".join(f"*{k}*: {v}" for k, v in KIND_HELP.items()) + "."
    )
    if "stratified" in table.columns:
        st.caption("**stratified**: the feature-concept pair tested within position x residue x chain strata "
                   "(*survives*: the feature still marks the concept beyond position and residue); **odds ratio "
                   "(MH)** and **q (CMH)**: that test's Mantel-Haenszel odds ratio and q-value.")
    if table.empty:
        st.info("No candidate missing annotations: no reliable feature fires on an unlabelled span.")
        return
    artefact = (table["kind"].astype(str) == ARTEFACT).to_numpy()
    if artefact.any() and not st.checkbox(f"Show numbering artefacts ({int(artefact.sum()):,})", value=False,
                                          key="missing_artefacts", help=KIND_HELP[ARTEFACT]):
        table = table.loc[~artefact].reset_index(drop=True)
    hidden = f" ({int(artefact.sum()):,} numbering artefacts hidden)" if len(table) < len(artefact) else ""
    frame = table.copy()
    frame["group"] = frame["concept"].map(_group)
    c1, c2, c3, c4 = st.columns([2, 2, 2, 3])
    groups = sorted(frame["group"].unique())
    kinds = [k for k in KIND_ORDER if k in set(frame["kind"].astype(str))] + sorted(
        set(frame["kind"].astype(str)) - set(KIND_ORDER))
    for key, valid in (("missing_groups", groups), ("missing_kinds", kinds)):  # options change with the artefacts
        if key in st.session_state:
            st.session_state[key] = [v for v in st.session_state[key] if v in valid]
    chosen_groups = c1.multiselect("Concept group", groups, key="missing_groups", placeholder="all groups")
    chosen_kinds = c2.multiselect("Kind", kinds, key="missing_kinds", placeholder="all kinds")
    top = float(frame["score"].max()) if len(frame) else 1.0
    min_score = c3.slider("Minimum score", 0.0, max(1.0, round(top, 2)), 0.0, 0.01, key="missing_min_score")
    text = c4.text_input("Concept or feature contains", key="missing_text", placeholder="e.g. " + ", ".join([*views.example_concepts(cat, n=1), "f00042"]))
    mask = frame["score"] >= min_score
    if chosen_groups:
        mask &= frame["group"].isin(chosen_groups)
    if chosen_kinds:
        mask &= frame["kind"].astype(str).isin(chosen_kinds)
    if text.strip():
        mask &= _contains(frame, ["concept", "feature"], text.strip())
    filtered = table.loc[mask.to_numpy()].reset_index(drop=True)
    st.markdown(f"**{len(filtered):,}** of {len(table):,} candidate spans{hidden}")
    view = filtered.copy()
    view.insert(view.columns.get_loc("start"), "span", [f"{a}-{b}" if a != b else f"{a}" for a, b in
                                                        zip(view["start"], view["end"])])
    view = view.rename(columns={"sequence_id": "sequence"}).drop(columns=["start", "end"])
    order = ["rank", "concept", "feature", "sequence", "span", "kind", "database_label", "score", "residues",
             "max_activation", "feature_precision", "feature_test_f1", "q_value", "stratified", "or_mh", "q_cmh",
             "adjacent", "n_tokens"]
    view = view[[c for c in order if c in view.columns] + [c for c in view.columns if c not in order]]
    picked = _show_table(view, key="missing", column_config={
        "score": st.column_config.ProgressColumn("score", min_value=0.0, max_value=1.0, format="%.3f"),
        "max_activation": st.column_config.NumberColumn("max act.", format="%.3f",
                                                        help="the feature's normalised activation in the span"),
        "feature_precision": st.column_config.NumberColumn("precision", format="%.3f"),
        "feature_test_f1": st.column_config.NumberColumn("test F1", format="%.3f"),
        "q_value": st.column_config.NumberColumn("q", format="%.1e"),
        "database_label": st.column_config.TextColumn("database says", help="the database's label of the same group"),
        "stratified": st.column_config.TextColumn("stratified",
                                                  help="the pair tested within position x residue x chain"),
        "or_mh": st.column_config.NumberColumn("odds ratio (MH)", format="%.2f"),
        "q_cmh": st.column_config.NumberColumn("q (CMH)", format="%.1e"),
    })
    _table_actions(cat, filtered, picked, name="missing_annotations", key="missing")


# ------------------------------------------------------------------------------------------------ unexplained


def _table_actions(cat: Any, filtered: pd.DataFrame, picked: str | None, *, name: str, key: str) -> None:
    """Open a feature picked in the table, offer the filtered rows as CSV, and a picker of the listed features."""
    if picked:
        views.open_feature(picked)
    views.csv_download(filtered, name=name, key=key)
    _open_picker(cat, filtered, key=key)


def unexplained_tab(cat: Any) -> None:
    table = _table(cat, "unexplained_features")
    if table is None:
        st.info("This catalog has no `unexplained_features` table.")
        return
    st.caption(
        "Features that fire consistently over many sequences but match no labelled concept (no pair with q ≤ 0.05 "
        "and test F1 ≥ 0.2). **score** = activation mass × consistency (share of the mass outside the single "
        "strongest sequence). The residue composition, position profile and motif enrichment of their strongest "
        "tokens are clues for naming them."
    )
    if "strata_share" in table.columns:
        st.caption("**strata share**: the share of the feature's activation variance that position x residue x chain "
                   "explain (near 1: a lookup of position and residue); **score beyond** = score x (1 - strata "
                   "share), which ranks them.")
    if table.empty:
        st.info("No unexplained features: every active, consistent feature matches a labelled concept.")
        return
    c1, c2 = st.columns([2, 3])
    top = float(table["score"].max())
    min_score = c1.number_input("Minimum score", min_value=0.0, max_value=max(top, 0.0), value=0.0,
                                step=max(top / 20, 0.01), key="unexplained_min_score")
    text = c2.text_input("Feature, residues, profile or motif contains", key="unexplained_text",
                         placeholder="e.g. C, imgt=104, motif")
    mask = table["score"] >= min_score
    if text.strip():
        mask &= _contains(table, ["feature", "best_concept", "top_residues", "profile", "motif"], text.strip())
    filtered = table.loc[mask.to_numpy()].reset_index(drop=True)
    st.markdown(f"**{len(filtered):,}** of {len(table):,} unexplained features")
    order = ["rank", "feature", "score", "score_beyond", "strata_share", "top_residues", "profile", "motif",
             "top_sequences", "n_sequences", "density", "consistency", "mass", "n_active", "best_concept", "best_f1",
             "best_q"]
    view = filtered[[c for c in order if c in filtered.columns] + [c for c in filtered.columns if c not in order]]
    picked = _show_table(view, key="unexplained", column_config={
        "score": st.column_config.NumberColumn("score", format="%.1f"),
        "score_beyond": st.column_config.NumberColumn("score beyond", format="%.1f"),
        "strata_share": st.column_config.ProgressColumn("strata share", min_value=0.0, max_value=1.0, format="%.2f"),
        "top_residues": st.column_config.TextColumn("residues"),
        "density": st.column_config.NumberColumn("density", format="%.2e"),
        "consistency": st.column_config.NumberColumn("consistency", format="%.2f"),
        "mass": st.column_config.NumberColumn("mass", format="%.1f"),
        "best_f1": st.column_config.NumberColumn("best F1", format="%.2f"),
        "best_q": st.column_config.NumberColumn("best q", format="%.1e"),
    })
    _table_actions(cat, filtered, picked, name="unexplained_features", key="unexplained")


# ------------------------------------------------------------------------------------------------ rediscovery


def rediscovery_tab(cat: Any) -> None:
    table = _table(cat, "rediscovery")
    if table is None or table.empty:
        st.info("This catalog has no rediscovery results.")
        return
    k = int(table["k"].iloc[0]) if "k" in table.columns and len(table) else 20
    st.caption(
        f"Does the method find annotations we know are there? For each concept, half of its labelled instances "
        f"were withheld, the association was re-run without them, and the candidate missing annotations were "
        f"ranked. **precision@{k}**: share of the top {k} candidates that hit a withheld instance; **base rate**: "
        f"the share expected for spans of the same length placed at random where the concept is not labelled; "
        f"**lift** = precision / base rate."
        + (" **control**: the same test on an SAE of a random-weight model; **evidence**: the SAE's precision "
           "beats the control's by at least 0.1 (with lift > 1): what a random model finds as well is not evidence "
           "of what the model learned." if "evidence" in table.columns else "")
    )
    found = table.dropna(subset=["precision_at_k"])
    if "evidence" in table.columns:
        c5, c6 = st.columns(2)
        control = table["control_precision_at_k"].dropna()
        c5.metric("Evidence (SAE beats the control)", f"{int(table['evidence'].fillna(False).astype(bool).sum())} / "
                  f"{len(table):,}", help="concepts whose precision@k beats the random control's by at least 0.1")
        c6.metric(f"Mean control precision@{k}", f"{control.mean():.2f}" if len(control) else "–")
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Concepts tested", f"{len(table):,}", help=f"{len(found):,} of them had candidates")
    c2.metric(f"Mean precision@{k}", f"{found['precision_at_k'].mean():.2f}" if len(found) else "–")
    c3.metric("Mean base rate", f"{found['base_rate'].mean():.3f}" if len(found) else "–")
    c4.metric("Median lift", f"{found['lift'].median():.1f}×" if len(found) else "–")
    if len(found):
        import altair as alt

        points = found.assign(base_rate=found["base_rate"].clip(lower=1e-4))
        chart = alt.Chart(points).mark_circle(size=60, opacity=0.8).encode(
            x=alt.X("base_rate:Q", scale=alt.Scale(type="log"), title="base rate (chance)"),
            y=alt.Y("precision_at_k:Q", scale=alt.Scale(domain=[0, 1]), title=f"precision@{k}"),
            color=alt.Color("lift:Q", scale=alt.Scale(type="log", scheme="viridis"), title="lift"),
            tooltip=["concept", "feature", alt.Tooltip("precision_at_k:Q", format=".2f"),
                     alt.Tooltip("base_rate:Q", format=".4f"), alt.Tooltip("lift:Q", format=".1f"),
                     alt.Tooltip("withheld_found:Q", format=".2f")],
        ).properties(height=260)
        st.altair_chart(chart, width="stretch")
    picked = _show_table(table, key="rediscovery", column_config={
        "precision_at_k": st.column_config.ProgressColumn(f"precision@{k}", min_value=0.0, max_value=1.0,
                                                          format="%.2f"),
        "base_rate": st.column_config.NumberColumn("base rate", format="%.4f"),
        "lift": st.column_config.NumberColumn("lift", format="%.1f"),
        "withheld_found": st.column_config.ProgressColumn("withheld found", min_value=0.0, max_value=1.0,
                                                          format="%.2f",
                                                          help="share of withheld instances hit by any candidate"),
        "control_feature": st.column_config.TextColumn("control feature", help="random-weight SAE's feature"),
        "control_precision_at_k": st.column_config.ProgressColumn(f"control precision@{k}", min_value=0.0,
                                                                  max_value=1.0, format="%.2f"),
        "control_lift": st.column_config.NumberColumn("control lift", format="%.1f"),
        "evidence": st.column_config.CheckboxColumn("evidence", help="the SAE beats the random control by 0.1"),
    })
    if picked:
        views.open_feature(picked)
    views.csv_download(table, name="rediscovery", key="rediscovery")
    _open_picker(cat, table, key="rediscovery")


# ------------------------------------------------------------------------------------------------ sequence level


def _side_by_side(table: pd.DataFrame) -> pd.DataFrame:
    """One row per target: its status, each representation's held-out adjusted score (AUROC for binary targets,
    partial correlation for numeric ones), the covariates' own score and the SAE's best feature."""
    reps = [r for r in REPRESENTATIONS if r in set(table["representation"])]
    reps += sorted(set(table["representation"]) - set(reps))
    rows = []
    for target, g in table.groupby("target", sort=False):
        by = g.drop_duplicates("representation").set_index("representation")
        ref = by.loc["sae"] if "sae" in by.index else by.iloc[0]
        binary = str(ref["kind"]) == "binary"
        row = {"target": str(target), "kind": str(ref["kind"]), "status": str(ref["status"]),
               "measure": "AUROC" if binary else "partial r", "n_test": ref["n_test"],
               "n_positive_test": ref["n_positive_test"]}
        for rep in reps:
            row[rep] = (by.at[rep, "test_auroc_adjusted" if binary else "test_rho_adjusted"] if rep in by.index
                        else float("nan"))
        row["covariates"] = ref["covariates_auroc"] if binary else ref["covariates_r2"]
        row["feature"] = "" if views.is_missing(ref["best_feature"]) else str(ref["best_feature"])
        row["q"] = ref["test_q_adjusted"]
        rows.append(row)
    return pd.DataFrame(rows)


def sequence_tab(cat: Any) -> None:
    table = _table(cat, "sequence_findings")
    if table is None or table.empty:
        st.info("This catalog has no sequence-level findings (`sequence_findings`: built without sequence-level "
                "targets, or by an older workbench).")
        return
    table = table.astype({"target": str, "representation": str, "status": str, "kind": str})
    st.caption(
        "Sequence-level targets (for example origin, clinical status, isotype, SHM count): for each representation "
        "the single mean-pooled feature most associated with the target on the training sequences, after control for "
        "the covariates, judged on the held-out sequences. **AUROC** (binary targets) and **partial r** (numeric) are "
        "held-out and adjusted for the covariates; **covariates**: what the covariates alone reach on the held-out "
        "sequences (AUROC, or R²); **q**: the SAE feature's held-out BH q-value.")
    side = _side_by_side(table)
    ok = side["status"] == "ok"
    c1, c2 = st.columns(2)
    c1.metric("Targets tested", f"{int(ok.sum())} / {len(side)}", help="the others are not testable (see status)")
    c2.metric("SAE feature significant held-out", f"{int((side.loc[ok, 'q'] <= 0.05).sum())}",
              help="targets whose SAE feature has held-out adjusted q <= 0.05")
    config: dict[str, Any] = {rep: st.column_config.NumberColumn(label, format="%.3f")
                              for rep, label in REPRESENTATIONS.items()}
    config.update({
        "n_test": st.column_config.NumberColumn("test sequences"),
        "n_positive_test": st.column_config.NumberColumn("positives (test)", format="%d"),
        "covariates": st.column_config.NumberColumn("covariates alone", format="%.3f"),
        "feature": st.column_config.TextColumn("best SAE feature"),
        "q": st.column_config.NumberColumn("q (SAE)", format="%.1e"),
    })
    picked = _show_table(side, key="sequence", column_config=config)
    if picked and views.resolve_feature(cat, picked):
        views.open_feature(picked)
    with st.expander(f"All {len(table):,} rows (target x representation)"):
        st.dataframe(table, hide_index=True, width="stretch", key="sequence_all")
    views.csv_download(table, name="sequence_findings", key="sequence")
    _open_picker(cat, side[side["feature"] != ""], key="sequence")


# ------------------------------------------------------------------------------------------------ page

catalog = get_catalog()
st.title("Discovery")
st.caption("What the features suggest the databases miss, and how well the method rediscovers what is known.")
missing, unexplained, redisc, sequence = st.tabs(["Candidate missing annotations", "Unexplained features",
                                                   "Rediscovery", "Sequence-level findings"])
with missing:
    missing_tab(catalog)
with unexplained:
    unexplained_tab(catalog)
with redisc:
    rediscovery_tab(catalog)
with sequence:
    sequence_tab(catalog)
