"""Universality: do this catalog's features recur in another model, or in an SAE trained with another seed?

Shows the comparisons stored in the catalog's ``uns["universality"]`` (:func:`workbench.universality`,
stored with :func:`~workbench.write_universality` or ``workbench universality --catalog``): per pair the
fraction of features whose best match correlates above the threshold, one-to-one (Hungarian) and under the
within-sequence permutation null; for one pair the distribution of best-match r against the null's, the concept
groups of the shared and unshared features, and the shared features with their concepts on both sides. A catalog
without comparisons gets a note saying how to add one.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from apps.workbench_app import _views as views
from apps.workbench_app._state import get_catalog
from workbench.errors import WorkbenchError

W_PAIR = "_un_pair"
W_SHARED_ONLY = "_un_shared_only"
CONCEPT_COLUMNS = ("top_concept_a", "label_a", "top_concept_b", "label_b", "description_a", "description_b")


def _side(s: dict[str, Any], which: str) -> str:
    model = s.get(f"model_{which}") or "?"
    control = s.get(f"control_{which}")
    layer = s.get(f"layer_{which}")
    return f"{model}{' (control)' if control else ''} L{layer}"


def pairs_frame(stored: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per stored comparison: what was compared and the headline fractions."""
    rows = []
    for key, value in stored.items():
        s = value["summary"]
        rows.append({"comparison": key, "A": _side(s, "a"), "B": _side(s, "b"),
                     "shared": s.get("fraction_shared"), "shared_hungarian": s.get("fraction_shared_hungarian"),
                     "null": s.get("null_fraction"), "median_r": s.get("median_r"),
                     "live_a": s.get("n_live_a"), "live_b": s.get("n_live_b"), "tokens": s.get("n_tokens")})
    return pd.DataFrame(rows)


def overview(pairs: pd.DataFrame) -> None:
    import altair as alt

    st.subheader("Shared features per comparison")
    config = {
        "shared": st.column_config.NumberColumn("shared (best match)", format="%.3f"),
        "shared_hungarian": st.column_config.NumberColumn("shared (one-to-one)", format="%.3f"),
        "null": st.column_config.NumberColumn("null", format="%.3f"),
        "median_r": st.column_config.NumberColumn("median r", format="%.3f"),
    }
    st.dataframe(pairs, hide_index=True, width="stretch", column_config=config)
    long = pairs.melt(id_vars=["comparison"], value_vars=["shared", "shared_hungarian", "null"], var_name="measure",
                      value_name="fraction")
    order = ["shared", "shared_hungarian", "null"]
    chart = alt.Chart(long).mark_bar().encode(
        x=alt.X("comparison:N", title=None, sort=list(pairs["comparison"])),
        xOffset=alt.XOffset("measure:N", sort=order),
        y=alt.Y("fraction:Q", scale=alt.Scale(domain=[0, 1]), title="fraction of A's live features"),
        color=alt.Color("measure:N", sort=order, title=None, legend=alt.Legend(orient="bottom"),
                        scale=alt.Scale(range=["#1f77b4", "#9ecae1", "#bbbbbb"])),
        tooltip=["comparison:N", "measure:N", alt.Tooltip("fraction:Q", format=".3f")],
    ).properties(height=260)
    st.altair_chart(chart, width="stretch")
    st.caption("A feature of A is *shared* when some feature of B correlates with it above the threshold over the "
               "same tokens (best match), or its partner in a one-to-one Hungarian matching does. The null shuffles B's "
               "codes among the tokens of each sequence (position and alignment broken, composition kept).")


def histogram(features: pd.DataFrame, threshold: float) -> None:
    import altair as alt
    import numpy as np

    edges = np.linspace(-0.2, 1.0, 25)
    rows = []
    for col, label in (("r_best", "best match"), ("r_null_best", "null")):
        values = features[col].to_numpy(dtype=float)
        counts, _ = np.histogram(np.clip(values[np.isfinite(values)], edges[0], edges[-1]), bins=edges)
        rows += [{"r": float((lo + hi) / 2), "r_low": float(lo), "r_high": float(hi), "measure": label,
                  "features": int(c)} for lo, hi, c in zip(edges[:-1], edges[1:], counts)]
    frame = pd.DataFrame(rows)
    bars = alt.Chart(frame).mark_bar(opacity=0.65).encode(
        x=alt.X("r_low:Q", bin="binned", title="best-match r over the sampled tokens"), x2="r_high:Q",
        y=alt.Y("features:Q", stack=None, title="features of A"),
        color=alt.Color("measure:N", title=None, legend=alt.Legend(orient="bottom"),
                        scale=alt.Scale(domain=["best match", "null"], range=["#1f77b4", "#bbbbbb"])),
        tooltip=["measure:N", alt.Tooltip("r:Q", format=".2f"), "features:Q"],
    )
    rule = alt.Chart(pd.DataFrame({"threshold": [threshold]})).mark_rule(color="#d62728", strokeDash=[4, 3]).encode(
        x="threshold:Q")
    st.altair_chart((bars + rule).properties(height=240), width="stretch")


def concept_groups(summary: dict[str, Any]) -> None:
    groups = summary.get("concept_groups") or {}
    if not groups or summary.get("concept_source") in (None, "none"):
        st.caption("No concepts were given for this comparison (no catalog or labels).")
        return
    frame = pd.DataFrame([{"concept group": g, "shared": int(c.get("shared", 0)), "unshared": int(c.get("unshared", 0))}
                          for g, c in groups.items()])
    frame["share shared"] = frame["shared"] / (frame["shared"] + frame["unshared"]).where(lambda x: x > 0)
    st.markdown(f"**Concept groups of A's features** (from {views.md_escape(summary.get('concept_source'))})")
    st.dataframe(frame, hide_index=True, width="stretch",
                 column_config={"share shared": st.column_config.NumberColumn(format="%.3f")})
    agreement = summary.get("concept_agreement")
    if not views.is_missing(agreement):
        st.caption(f"Shared features whose best match carries the same label: **{float(agreement):.3f}**")


def feature_table(features: pd.DataFrame, key: str) -> None:
    st.subheader("Features")
    shared_only = st.checkbox("Shared features only", value=True, key=W_SHARED_ONLY)
    shown = features[features["shared"].astype(bool)] if shared_only else features
    shown = shown.sort_values("r_best", ascending=False, kind="stable").reset_index(drop=True)
    cols = ["feature", "best_b", "r_best", "hungarian_b", "r_hungarian", "r_null_best", "density_a"]
    cols += [c for c in CONCEPT_COLUMNS if c in shown.columns]
    st.markdown(f"**{len(shown):,}** of {len(features):,} live features of A")
    fmt = {c: st.column_config.NumberColumn(format="%.3f") for c in ("r_best", "r_hungarian", "r_null_best")}
    fmt["density_a"] = st.column_config.NumberColumn("density", format="%.4f")
    st.dataframe(shown[cols], hide_index=True, width="stretch", column_config=fmt)
    views.csv_download(shown[cols], name=f"universality_{key}", key="_un")


def main() -> None:
    cat = get_catalog()
    st.title("Universality")
    st.caption("Do this catalog's features recur in another model, or in an SAE trained with another seed?")
    stored = cat.universality
    if not stored:
        st.info("This catalog holds no cross-model comparison. Compare its SAE with another on the same records "
                "(`workbench universality --sae-a ... --store-a ... --sae-b ... --store-b ... --catalog CATALOG "
                "--key NAME`) to see here which features recur beyond a permutation null.")
        return
    pairs = pairs_frame(stored)
    overview(pairs)
    keys = list(stored)
    if st.session_state.get(W_PAIR) not in keys:
        st.session_state[W_PAIR] = keys[0]
    key = st.selectbox("Comparison", keys, key=W_PAIR)
    summary, features = stored[key]["summary"], stored[key]["features"]
    st.header(key)
    st.markdown(f"A: {views.md_escape(summary.get('sae_a'))} on {views.md_escape(summary.get('store_a'))}  \n"
                f"B: {views.md_escape(summary.get('sae_b'))} on {views.md_escape(summary.get('store_b'))}")
    c = st.columns(4)
    c[0].metric("Shared (best match)", views.fmt_num(summary.get("fraction_shared")))
    c[1].metric("Shared (one-to-one)", views.fmt_num(summary.get("fraction_shared_hungarian")))
    c[2].metric("Null", views.fmt_num(summary.get("null_fraction")),
                help=f"Mean over {summary.get('n_null')} shuffles of B's codes within each sequence")
    c[3].metric("Median r", views.fmt_num(summary.get("median_r")))
    st.caption(f"{views.fmt_num(summary.get('n_tokens'))} tokens of {views.fmt_num(summary.get('n_sequences'))} "
               f"sequences; live features A {views.fmt_num(summary.get('n_live_a'))}, B "
               f"{views.fmt_num(summary.get('n_live_b'))}; threshold r > {summary.get('threshold')}.")
    if features is None or features.empty:
        st.info("This comparison stored no per-feature table.")
        return
    histogram(features, float(summary.get("threshold", 0.5)))
    concept_groups(summary)
    feature_table(features, key)


try:
    main()
except WorkbenchError as exc:
    st.error(str(exc))
