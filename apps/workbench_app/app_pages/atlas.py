"""Feature atlas: the UMAP of the SAE's decoder directions, one point per live feature.

Points are coloured by the group of the feature's top concept (the part before ``=``, or ``unexplained``) or by
its decoder family; the tooltip shows the id, top concept and description. Clicking a point selects the feature
(``select_feature``) and, unless turned off, opens it in the feature browser. Dead features (NaN UMAP rows) are
not drawn. The chart data goes to the browser as one Arrow table (Streamlit's own Altair data transformer), so
Altair's 5,000-row limit does not apply and 16,384 points stay responsive.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from apps.workbench_app import _views as views
from apps.workbench_app._state import catalog_path, get_catalog, select_feature

PARAM = "pick"
COLOURINGS = {"Concept group": "group", "Family": "family"}
DESCRIPTION_CHARS = 160


def atlas_frame(cat: Any) -> pd.DataFrame:
    """One row per feature with a UMAP position: ``feature, umap_1, umap_2, group, family, top_concept, description``.

    Cached per catalog (``st.cache_resource``: the frame is built once per server process and never modified).
    """

    @st.cache_resource(show_spinner="Laying out the atlas ...")
    def _build(path: str) -> pd.DataFrame:
        feats = cat.features
        xy = np.asarray(cat.umap, dtype=np.float64)
        live = np.isfinite(xy).all(axis=1)
        top = feats["top_concept"] if "top_concept" in feats.columns else pd.Series(np.nan, index=feats.index)
        top = top.astype(object).where(top.notna(), None)
        group = [str(t).split("=", 1)[0] if t is not None and "=" in str(t) else ("unexplained" if t is None else str(t))
                 for t in top]
        family = feats["family"].astype(str) if "family" in feats.columns else pd.Series("none", index=feats.index)
        desc = feats["description"].astype(str) if "description" in feats.columns else pd.Series("", index=feats.index)
        desc = desc.where(desc.str.len() <= DESCRIPTION_CHARS, desc.str.slice(0, DESCRIPTION_CHARS - 1) + "…")
        frame = pd.DataFrame({
            "feature": feats.index.astype(str),
            "umap_1": xy[:, 0].astype(np.float32),
            "umap_2": xy[:, 1].astype(np.float32),
            "group": group,
            "family": family.to_numpy(),
            "top_concept": ["" if t is None else str(t) for t in top],
            "description": desc.to_numpy(),
        })
        return frame.loc[live].reset_index(drop=True)

    return _build(str(catalog_path()))


def _category_order(values: pd.Series, colour: str) -> list[str]:
    """Legend order: families numerically, groups by size (``unexplained`` last)."""
    uniq = [str(v) for v in values.unique()]
    if colour == "family":
        return sorted(uniq, key=lambda v: (not v.isdigit(), int(v) if v.isdigit() else 0, v))
    counts = values.value_counts()
    return sorted(uniq, key=lambda v: (v == "unexplained", -int(counts.get(v, 0)), v))


def atlas_chart(frame: pd.DataFrame, *, colour: str) -> Any:
    """The Altair scatter with a click selection named :data:`PARAM` on the ``feature`` field (zoom and pan too)."""
    import altair as alt

    pick = alt.selection_point(name=PARAM, fields=["feature"], on="click", clear="dblclick")
    order = _category_order(frame[colour], colour)
    scheme = "tableau20" if len(order) > 10 else "tableau10"
    return (
        alt.Chart(frame)
        .mark_circle()
        .encode(
            x=alt.X("umap_1:Q", title="UMAP 1", axis=alt.Axis(labels=False, ticks=False, grid=False)),
            y=alt.Y("umap_2:Q", title="UMAP 2", axis=alt.Axis(labels=False, ticks=False, grid=False)),
            color=alt.Color(f"{colour}:N", sort=order, scale=alt.Scale(scheme=scheme),
                            title="concept group" if colour == "group" else "family",
                            legend=alt.Legend(symbolLimit=60, columns=1 if len(order) <= 30 else 2)),
            opacity=alt.condition(pick, alt.value(0.85), alt.value(0.25)),
            size=alt.condition(pick, alt.value(90), alt.value(18), empty=False),
            tooltip=[alt.Tooltip("feature:N", title="feature"), alt.Tooltip("top_concept:N", title="top concept"),
                     alt.Tooltip("family:N", title="family"), alt.Tooltip("description:N", title="description")],
        )
        .add_params(pick)
        .interactive()
        .properties(height=620)
    )


def selected_feature(event: Any, *, param: str = PARAM) -> str | None:
    """The feature id a chart selection event points at (the first selected point), or None."""
    try:
        points = event["selection"][param]
    except (KeyError, TypeError):
        return None
    if isinstance(points, dict):  # some Vega versions send {"feature": [...]}
        values = points.get("feature")
        points = [{"feature": v} for v in values] if isinstance(values, list) else []
    for point in points or []:
        fid = point.get("feature") if isinstance(point, dict) else None
        if fid:
            return str(fid)
    return None


# ------------------------------------------------------------------------------------------------ page

catalog = get_catalog()
st.title("Feature atlas")
frame = atlas_frame(catalog)
n_dead = len(catalog.features) - len(frame)
st.caption(
    f"UMAP of the {len(frame):,} live features' decoder directions (cosine): nearby points write similar directions "
    f"into the model. {n_dead:,} dead feature(s) not drawn. Hover for details, scroll to zoom, drag to pan, click a "
    "point to open it (double-click clears)."
)
if frame.empty:
    st.info("No feature has a UMAP position (all features are dead, or the catalog was built without a layout).")
    st.stop()

c1, c2, c3 = st.columns([2, 3, 2], vertical_alignment="bottom")
colour_label = c1.radio("Colour by", list(COLOURINGS), horizontal=True, key="atlas_colour")
colour = COLOURINGS[colour_label or "Concept group"]
text = c2.text_input("Show only features whose concept or description contains", key="atlas_text",
                     placeholder="e.g. CDR3, unexplained, motif")
open_on_click = c3.toggle("Open the feature browser on click", value=True, key="atlas_open_on_click")
shown = frame
if text.strip():
    needle = text.strip()
    mask = (frame["top_concept"].str.contains(needle, case=False, regex=False)
            | frame["description"].str.contains(needle, case=False, regex=False)
            | (frame["feature"] == needle))
    shown = frame.loc[mask].reset_index(drop=True)
    st.caption(f"{len(shown):,} of {len(frame):,} features match.")
if shown.empty:
    st.warning("No feature matches this filter.")
    st.stop()

event = st.altair_chart(atlas_chart(shown, colour=colour), on_select="rerun", selection_mode=[PARAM],
                        key="atlas_chart", width="stretch")
fid = selected_feature(event)
if fid is not None and fid in catalog.features.index:
    if open_on_click:
        views.open_feature(fid)
    select_feature(fid)
    row = catalog.features.loc[fid]
    st.success(f"Selected **{fid}**: {views.md_escape(row.get('description', ''))}")
    if st.button(f"Open {fid} in the feature browser", icon=":material/open_in_new:", key="atlas_open"):
        views.open_feature(fid)

with st.expander("Counts per colour"):
    counts = shown[colour].value_counts().rename_axis(colour).reset_index(name="features")
    st.dataframe(counts, hide_index=True)
