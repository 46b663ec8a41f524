"""Beyond position: which concepts the SAE captures beyond position and residue, against the controls.

A feature can mark ``shm=mutated`` only because it marks "serine at IMGT 31 of a heavy chain". The annotation
pipeline tests every (feature, concept) pair inside strata of such trivial explanations (for antibodies: IMGT position
x residue x chain type, Cochran-Mantel-Haenszel) and compares the SAE with the model's neurons and an SAE on a
random-weight model (paired bootstrap of the test sequences). This page shows the catalog's ``concept_findings``:
the headline counts, a filterable table, and the evidence of one concept (its verdict with the bootstrap intervals
from ``verdicts``, the surviving feature's odds ratio and q-value, and the three representations' test F1 plainly and
beyond the strata). Catalogs built without strata (older catalogs, image catalogs) get a note instead.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from apps.workbench_app import _views as views
from apps.workbench_app._state import get_catalog
from workbench.errors import WorkbenchError
from workbench.findings import FINDING_STATUSES

# Representations of ``concept_findings`` (column suffix, label), the SAE first.
REPS = (("sae", "SAE features"), ("neurons", "neurons"), ("random", "random-weight control"))
STATUS_ORDER = list(FINDING_STATUSES)  # "finding" first, then why a concept is not one
STATUS_HELP = dict(FINDING_STATUSES)
DEFAULT_STATUSES = ["finding", "control as good"]
CONCEPTS_PAGE = "app_pages/concepts.py"

# Session keys (widget keys, and the last table selection acted on)
W_STATUS = "_bp_status"
W_TEXT = "_bp_text"
W_CONCEPT = "_bp_concept"
SEEN_ROW = "_bp_seen_row"


@st.cache_data(show_spinner=False, max_entries=8)
def _findings(path: str, _cat: Any) -> pd.DataFrame:
    table = _cat.table("concept_findings")
    for col in ("concept", "stratified", "beyond_feature", "verdict", "finding", "why"):
        if col in table.columns:
            table[col] = table[col].astype(object).where(table[col].notna(), "").astype(str)
    return table.reset_index(drop=True)


def _reps(findings: pd.DataFrame) -> list[tuple[str, str]]:
    return [(key, label) for key, label in REPS if f"f1_{key}" in findings.columns]


def _count(summary: dict[str, Any], key: str, fallback: Any) -> Any:
    value = summary.get(key)
    return fallback if views.is_missing(value) else value


# ------------------------------------------------------------------------------------------------ headline
def headline(cat: Any, findings: pd.DataFrame) -> None:
    s = cat.summary
    reps = _reps(findings)
    testable = _count(s, "concepts_testable", int((findings["stratified"] != "not testable").sum()))
    n = _count(s, "n_concepts", len(findings))
    strata = s.get("strata") or "position x residue"
    st.subheader("Captured beyond position and residue")
    if s.get("n_strata") == 1 or str(strata).startswith("none"):
        st.info(f"This catalog's tokens have no position or residue to stratify by (strata: {strata}): *beyond the "
                "strata* is the plain association here, and the table compares the SAE with the controls only.")
    cols = st.columns(len(reps) + 1)
    for col, (key, label) in zip(cols, reps):
        value = _count(s, f"concepts_captured_beyond_{key}", int((findings[f"beyond_f1_{key}"] > 0.5).sum()))
        col.metric(label, f"{int(value)} / {int(testable)}",
                   help=f"Concepts whose best feature that survives the stratification by {strata} reaches test "
                        f"F1 > 0.5, of the {int(testable)} concepts that vary inside the strata")
    n_findings = _count(s, "concept_findings", int((findings["finding"] == "finding").sum()))
    cols[-1].metric("Findings", f"{int(n_findings)}", help=STATUS_HELP["finding"])
    n_strata = s.get("n_strata")
    st.caption(
        f"Strata: **{views.md_escape(strata)}**"
        + (f" ({int(n_strata):,} strata)" if not views.is_missing(n_strata) else "")
        + f"; {int(testable)} of {int(n)} concepts are testable inside them. A pair survives the stratification when "
        "its Cochran-Mantel-Haenszel q-value is at most 0.05 and its Mantel-Haenszel odds ratio at least 2. A "
        "*finding* is a concept the SAE captures beyond the strata (test F1 > 0.5) better than every control "
        "(bootstrap interval of the plain test-F1 difference above 0, and no control's F1 beyond the strata reaches "
        "the SAE's).")
    top = s.get("top_concept_findings") or []
    if len(top):
        st.markdown("**Top findings**\n\n" + "\n".join(f"- {views.md_escape(t)}" for t in top))


# ------------------------------------------------------------------------------------------------ table
def _filtered(findings: pd.DataFrame) -> pd.DataFrame:
    present = list(findings["finding"].unique())
    options = STATUS_ORDER + sorted(set(present) - set(STATUS_ORDER))
    counts = findings["finding"].value_counts()
    if W_STATUS not in st.session_state:
        st.session_state[W_STATUS] = list(DEFAULT_STATUSES)
    left, right = st.columns([3, 2])
    chosen = left.multiselect("Finding status", options, key=W_STATUS, placeholder="all statuses",
                              format_func=lambda s: f"{s} ({int(counts.get(s, 0))})")
    text = right.text_input("Concept contains", key=W_TEXT, placeholder="e.g. " + ", ".join(
        pd.unique(findings["concept"].astype(str))[:2] if "concept" in findings.columns else ["shm"]))
    mask = pd.Series(True, index=findings.index)
    if chosen:
        mask &= findings["finding"].isin(chosen)
    if text.strip():
        mask &= findings["concept"].str.contains(text.strip(), case=False, regex=False)
    return findings[mask.to_numpy()].reset_index(drop=True)


def findings_table(findings: pd.DataFrame) -> pd.DataFrame:
    st.subheader("Concepts")
    shown = _filtered(findings)
    st.markdown(f"**{len(shown):,}** of {len(findings):,} concepts")
    reps = _reps(findings)
    order = (["concept", "finding"] + [f"beyond_f1_{k}" for k, _ in reps] + [f"f1_{k}" for k, _ in reps]
             + ["beyond_feature", "beyond_or", "beyond_q", "stratified", "verdict", "why"])
    view = shown[[c for c in order if c in shown.columns]]
    config: dict[str, Any] = {
        "finding": st.column_config.TextColumn("finding"),
        "beyond_feature": st.column_config.TextColumn("surviving SAE feature"),
        "beyond_or": st.column_config.NumberColumn("odds ratio (MH)", format="%.2f"),
        "beyond_q": st.column_config.NumberColumn("q (CMH)", format="%.1e"),
        "stratified": st.column_config.TextColumn("best SAE feature, stratified"),
        "why": st.column_config.TextColumn("why", width="large"),
    }
    for key, label in reps:
        config[f"beyond_f1_{key}"] = st.column_config.NumberColumn(f"{label}: F1 beyond", format="%.3f")
        config[f"f1_{key}"] = st.column_config.NumberColumn(f"{label}: F1", format="%.3f")
    event = st.dataframe(view, hide_index=True, width="stretch", column_config=config, on_select="rerun",
                         selection_mode="single-row", key="_bp_table")
    try:
        rows = list(event.selection.rows)
    except AttributeError:
        rows = []
    picked = str(view["concept"].iloc[rows[0]]) if rows and rows[0] < len(view) else None
    if picked and st.session_state.get(SEEN_ROW) != picked:  # a new row selection picks the concept shown below
        st.session_state[W_CONCEPT] = picked
    st.session_state[SEEN_ROW] = picked
    views.csv_download(shown, name="concept_findings", key="_bp")
    return shown


# ------------------------------------------------------------------------------------------------ evidence
def _verdict_row(cat: Any, concept: str) -> pd.Series | None:
    if "verdicts" not in cat.tables:
        return None
    table = cat.table("verdicts")
    hit = table[table["concept"].astype(str) == concept]
    return hit.iloc[0] if len(hit) else None


def _f1(value: Any) -> str:
    return "–" if views.is_missing(value) else f"{float(value):.3f}"


def _verdict(cat: Any, concept: str, row: pd.Series) -> None:
    v = _verdict_row(cat, concept)
    text = str(v["verdict"]) if v is not None else row.get("verdict", "")
    st.markdown(f"**Verdict** (test F1 of each representation's best feature, paired bootstrap of the test "
                f"sequences): {views.md_escape(text or '–')}")
    if v is None:
        st.caption("This catalog has no `verdicts` table: no bootstrap intervals.")
        return
    lines = []
    for key, label in REPS[1:]:
        if f"diff_{key}" not in v.index:
            continue
        low, high = v.get(f"diff_{key}_low"), v.get(f"diff_{key}_high")
        interval = ("no test sequences" if views.is_missing(low) else
                    f"95% interval {float(low):+.3f} to {float(high):+.3f}, p {views.fmt_q(v.get(f'p_{key}'))}")
        beats = "SAE better" if bool(v.get(f"beats_{key}")) else "not better"
        lines.append(f"- SAE {_f1(v.get('f1_sae'))} ({views.md_escape(v.get('feature_sae'))}) − {label} "
                     f"{_f1(v.get(f'f1_{key}'))} ({views.md_escape(v.get(f'feature_{key}'))}) = "
                     f"**{float(v[f'diff_{key}']):+.3f}** ({interval}): {beats}")
    if lines:
        st.markdown("\n".join(lines))
    st.caption(f"{views.fmt_num(v.get('n_test_sequences'))} test sequences hold the concept; p is one-sided (share "
               "of resamples where the SAE does not do better).")


def _survivor(cat: Any, concept: str, row: pd.Series) -> None:
    c = st.columns(4)
    fid = row.get("beyond_feature") or ""
    c[0].metric("Surviving SAE feature", fid or "none",
                help="The concept's SAE feature with the best validation F1 among those that survive the "
                     "stratification")
    c[1].metric("F1 beyond", _f1(row.get("beyond_f1_sae")), help="Test F1 of the surviving feature")
    c[2].metric("Odds ratio (MH)", views.fmt_num(row.get("beyond_or")),
                help="Mantel-Haenszel common odds ratio of the surviving feature and the concept within the strata")
    c[3].metric("q (CMH)", views.fmt_q(row.get("beyond_q")), help="BH q-value of the Cochran-Mantel-Haenszel test")
    note = f"Best SAE feature (plain test F1) in the strata: **{views.md_escape(row.get('stratified') or '–')}**"
    if "best_sae" in cat.tables:
        best = cat.table("best_sae")
        hit = best[best["concept"].astype(str) == concept]
        if len(hit) and "or_mh" in hit.columns:
            b = hit.iloc[0]
            note += (f" ({views.md_escape(b['best_feature'])}: odds ratio {views.fmt_num(b['or_mh'])}, q "
                     f"{views.md_escape(views.fmt_q(b.get('q_cmh')))})")
    st.markdown(note)


def _chart(findings: pd.DataFrame, row: pd.Series) -> None:
    import altair as alt

    data = []
    for key, label in _reps(findings):
        data.append({"representation": label, "measure": "plain test F1", "F1": float(row.get(f"f1_{key}") or 0.0)})
        beyond = row.get(f"beyond_f1_{key}")
        data.append({"representation": label, "measure": "beyond position and residue",
                     "F1": 0.0 if views.is_missing(beyond) else float(beyond)})
    frame = pd.DataFrame(data)
    measures = ["plain test F1", "beyond position and residue"]
    chart = alt.Chart(frame).mark_bar().encode(
        x=alt.X("representation:N", sort=[label for _, label in REPS], title=None),
        xOffset=alt.XOffset("measure:N", sort=measures),
        y=alt.Y("F1:Q", scale=alt.Scale(domain=[0, 1]), title="test F1"),
        color=alt.Color("measure:N", sort=measures, title=None, scale=alt.Scale(range=["#9ecae1", "#d62728"]),
                        legend=alt.Legend(orient="bottom")),
        tooltip=["representation:N", "measure:N", alt.Tooltip("F1:Q", format=".3f")],
    ).properties(height=240)
    st.altair_chart(chart, width="stretch")


def _links(cat: Any, concept: str, row: pd.Series) -> None:
    from streamlit.errors import StreamlitAPIException

    v = _verdict_row(cat, concept)
    candidates = [row.get("beyond_feature"), v.get("feature_sae") if v is not None else None]
    fids = list(dict.fromkeys(f for f in (views.resolve_feature(cat, c) for c in candidates) if f))
    cols = st.columns(len(fids) + 1)
    for col, fid in zip(cols, fids):
        if col.button(f"open {fid}", key=f"_bp_open_{fid}", icon=":material/open_in_new:",
                      help="Show this SAE feature in the Feature browser"):
            views.open_feature(fid)
    if cols[-1].button("Open in Concept explorer", key="_bp_concepts", icon=":material/category:"):
        st.session_state["concept"] = concept
        try:
            st.switch_page(CONCEPTS_PAGE, query_params={"concept": concept})
        except StreamlitAPIException:
            st.info(f"Open the Concept explorer page to see {concept}.")


def evidence(cat: Any, findings: pd.DataFrame, shown: pd.DataFrame) -> None:
    st.subheader("Evidence")
    options = list(shown["concept"]) or list(findings["concept"])
    ss = st.session_state
    if ss.get(W_CONCEPT) not in options:
        ss[W_CONCEPT] = options[0]
    concept = st.selectbox("Concept", options, key=W_CONCEPT,
                           help="Pick a concept here or select a row of the table above")
    row = findings[findings["concept"] == concept].iloc[0]
    st.header(concept)
    status = row.get("finding") or "–"
    st.markdown(f"**{views.md_escape(status)}**: {views.md_escape(row.get('why') or STATUS_HELP.get(status, ''))}")
    _verdict(cat, concept, row)
    _survivor(cat, concept, row)
    _chart(findings, row)
    _links(cat, concept, row)


# ------------------------------------------------------------------------------------------------ page
def main() -> None:
    cat = get_catalog()
    st.title("Beyond position")
    st.caption("Which concepts the SAE captures beyond what position and residue explain, against the model's "
               "neurons and a random-weight control.")
    if "concept_findings" not in cat.tables:
        st.info("This catalog has no `concept_findings` table: it was built without a stratified association "
                "(an older catalog, or one without positions and residues to stratify by, such as an image catalog). "
                "Rebuild it with `workbench annotate` to see what survives position and residue.")
        return
    findings = _findings(str(cat.path), cat)
    if findings.empty:
        st.info("The catalog's `concept_findings` table is empty: no token concept was tested.")
        return
    headline(cat, findings)
    shown = findings_table(findings)
    evidence(cat, findings, shown)


try:
    main()
except WorkbenchError as exc:
    st.error(str(exc))
