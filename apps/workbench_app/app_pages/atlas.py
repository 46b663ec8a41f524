"""Feature atlas: the UMAP of the SAE's decoder directions, one point per live feature.

Points are coloured by concept or by family:

- *Concept*: for a concept group the user picks (``region``, ``imgt``, ``chain_region`` ...; the default is the most
  specific group of :data:`SPECIFIC_GROUPS` the catalog has, so a catalog whose top concepts are mostly the coarse
  ``chain_region`` is not one blob of one colour), each feature's best concept *within that group* (best test F1
  among its association pairs with F1 >= :data:`MIN_F1` and q <= 0.05, else ``none``); the pseudo-group
  "group of the top concept" colours by the group of each feature's overall top concept instead.
- *Family*: its decoder family, named after the family's most common top concept (``3 · region=CDR3``).

Colours come from :func:`views.distinct_palette` (distinct for every category, ``none`` / ``unexplained`` grey).
The tooltip shows the id, top concept, family and description. Clicking a point selects the feature
(``select_feature``) and, unless turned off, opens it in the feature browser. Dead features (NaN UMAP rows) are
not drawn. The chart data goes to the browser as one Arrow table (Streamlit's own Altair data transformer), so
Altair's 5,000-row limit does not apply and 16,384 points stay responsive. The counts per colour and the atlas
itself download as CSV / Parquet.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from apps.workbench_app import _views as views
from apps.workbench_app._state import catalog_path, get_catalog, select_feature

PARAM = "pick"
COLOURINGS = {"Concept": "concept", "Family": "family_name"}
TOP_GROUP = "(group of the top concept)"
# Concept groups from the most to the least useful for colouring (the first one present is the default). No bare
# strings at the top level of a page: Streamlit's magic would show them.
SPECIFIC_GROUPS = ("region", "imgt", "motif", "liability_region", "liability", "cdr_h3_length", "cdr_l1_length",
                   "aa", "chain_region", "germline_residue")
MIN_F1 = 0.2
NONE = "none"
DESCRIPTION_CHARS = 160


def atlas_frame(cat: Any) -> pd.DataFrame:
    """One row per feature with a UMAP position: ``feature, umap_1, umap_2, group, family, family_name,
    top_concept, description`` (``group``: the group of the top concept, or ``unexplained``).

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
        frame = frame.loc[live].reset_index(drop=True)
        frame["family_name"] = frame["family"].map(family_names(frame))
        return frame

    return _build(str(catalog_path()))


def family_names(frame: pd.DataFrame) -> dict[str, str]:
    """``{family: "3 · region=CDR3"}``: each family named after its members' most common top concept
    (``unexplained`` when none has one)."""
    names = {}
    for fam, top in frame.groupby("family", sort=False)["top_concept"]:
        known = top[top != ""]
        names[str(fam)] = f"{fam} · {known.value_counts().index[0] if len(known) else 'unexplained'}"
    return names


def concept_groups(cat: Any) -> list[str]:
    """The catalog's concept groups, most useful for colouring first (:data:`SPECIFIC_GROUPS`, then the rest by
    name)."""

    @st.cache_data(show_spinner=False, max_entries=8)
    def _groups(path: str, _cat: Any) -> list[str]:
        if "association" not in _cat.tables:
            return []
        col = _cat.table("association")["concept"]
        names = col.cat.categories.astype(str) if hasattr(col, "cat") else pd.Index(col.astype(str).unique())
        found = sorted({n.split("=", 1)[0] for n in names})
        return [g for g in SPECIFIC_GROUPS if g in found] + [g for g in found if g not in SPECIFIC_GROUPS]

    return _groups(str(cat.path), cat)


def best_in_group(cat: Any, group: str) -> pd.Series:
    """Each feature's best concept of ``group`` (the value after ``=``; best test F1 among its pairs with F1 >=
    :data:`MIN_F1` and q <= 0.05), indexed by feature id; features without one are absent. Cached per catalog."""

    @st.cache_data(show_spinner="Finding each feature's best concept ...", max_entries=16)
    def _best(path: str, group: str, _cat: Any) -> pd.Series:
        pairs = _cat.table("association")
        col = pairs["concept"]
        if hasattr(col, "cat"):
            cats = pd.Series(col.cat.categories.astype(str))
            want = np.flatnonzero(cats.str.split("=", n=1).str[0].to_numpy() == group)
            mask = np.isin(col.cat.codes.to_numpy(), want)
        else:
            mask = (col.astype(str).str.split("=", n=1).str[0] == group).to_numpy()
        f1 = pairs["test_f1"].to_numpy(dtype=np.float64)
        mask &= np.nan_to_num(f1, nan=-1.0) >= MIN_F1
        if "q_value" in pairs.columns:
            mask &= np.nan_to_num(pairs["q_value"].to_numpy(dtype=np.float64), nan=1.0) <= 0.05
        hit = pairs.loc[mask, ["feature", "concept", "test_f1"]]
        hit = hit.sort_values("test_f1", ascending=False, kind="stable").drop_duplicates("feature")
        values = hit["concept"].astype(str).str.split("=", n=1).str[-1]
        return pd.Series(values.to_numpy(), index=hit["feature"].astype(str).to_numpy())

    return _best(str(cat.path), group, cat)


def _category_order(values: pd.Series, colour: str) -> list[str]:
    """Legend order: families numerically, concepts by size (``none`` / ``unexplained`` last)."""
    uniq = [str(v) for v in values.unique()]
    if colour == "family_name":
        def num(v: str) -> tuple[bool, int, str]:
            head = v.split(" · ", 1)[0]
            return (not head.isdigit(), int(head) if head.isdigit() else 0, v)

        return sorted(uniq, key=num)
    counts = values.value_counts()
    return sorted(uniq, key=lambda v: (v in (NONE, "unexplained"), -int(counts.get(v, 0)), v))


def colour_scale(order: list[str]) -> tuple[list[str], list[str]]:
    """``(domain, range)`` of the colour scale: a distinct colour per category, grey for ``none`` / ``unexplained``."""
    palette = iter(views.distinct_palette(len(order)))
    colours = ["#c7c7c7" if v in (NONE, "unexplained") else next(palette) for v in order]
    return order, colours


def atlas_chart(frame: pd.DataFrame, *, colour: str, title: str | None = None) -> Any:
    """The Altair scatter with a click selection named :data:`PARAM` on the ``feature`` field (zoom and pan too),
    coloured by column ``colour`` with a colour per category (none repeated)."""
    import altair as alt

    pick = alt.selection_point(name=PARAM, fields=["feature"], on="click", clear="dblclick")
    order = _category_order(frame[colour], colour)
    domain, colours = colour_scale(order)
    return (
        alt.Chart(frame)
        .mark_circle()
        .encode(
            x=alt.X("umap_1:Q", title="UMAP 1", axis=alt.Axis(labels=False, ticks=False, grid=False)),
            y=alt.Y("umap_2:Q", title="UMAP 2", axis=alt.Axis(labels=False, ticks=False, grid=False)),
            color=alt.Color(f"{colour}:N", sort=order, scale=alt.Scale(domain=domain, range=colours),
                            title=title or colour.replace("_", " "),
                            legend=alt.Legend(symbolLimit=200, labelLimit=260,
                                              columns=1 if len(order) <= 30 else 2)),
            opacity=alt.condition(pick, alt.value(0.85), alt.value(0.25)),
            size=alt.condition(pick, alt.value(90), alt.value(18), empty=False),
            tooltip=[alt.Tooltip("feature:N", title="feature"), alt.Tooltip("top_concept:N", title="top concept"),
                     alt.Tooltip("family_name:N", title="family"),
                     alt.Tooltip("description:N", title="description")],
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

c1, c2, c3, c4 = st.columns([2, 2, 3, 2], vertical_alignment="bottom")
colour_label = c1.radio("Colour by", list(COLOURINGS), horizontal=True, key="atlas_colour")
colour = COLOURINGS[colour_label or "Concept"]
groups = concept_groups(catalog)
title = "family (named after its most common top concept)"
if colour == "concept":
    group = c2.selectbox("Concept group", [*groups, TOP_GROUP], key="atlas_group",
                         help="Each feature takes its best concept of this group (test F1 >= "
                              f"{MIN_F1}, q <= 0.05), else 'none'. Finer groups (imgt, region) separate the "
                              "atlas better than coarse ones (chain_region).")
    if group is None or group == TOP_GROUP or not groups:
        frame = frame.assign(concept=frame["group"])
        title = "group of the top concept"
    else:
        best = best_in_group(catalog, group)
        frame = frame.assign(concept=frame["feature"].map(best).fillna(NONE).astype(str))
        title = f"best {group} concept"
text = c3.text_input("Show only features whose concept or description contains", key="atlas_text",
                     placeholder="e.g. " + ", ".join([*views.example_concepts(catalog), "unexplained"]))
open_on_click = c4.toggle("Open the feature browser on click", value=True, key="atlas_open_on_click")
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

event = st.altair_chart(atlas_chart(shown, colour=colour, title=title), on_select="rerun", selection_mode=[PARAM],
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
    st.dataframe(counts, hide_index=True, width="stretch")
    views.table_downloads(counts, name=f"atlas_counts_{colour}", key="atlas_dl_counts")
with st.expander("Download the atlas"):
    st.caption("One row per feature drawn: its UMAP position, colour and labels.")
    views.table_downloads(shown, name="atlas", key="atlas_dl_points")
