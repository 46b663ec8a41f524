"""Images (image catalogs only): where a feature fires on the images, how it differs between labels, which features
track the pathology once image confounds are controlled, what ablating them does to the model against a matched
control, and where the model, its pathology features and the labels disagree.

The feature shown is the one other pages selected (``st.session_state["feature"]``), else the feature most associated
with the pathology after adjustment (largest partial correlation given the confounds, agreeing in sign with the raw
AUROC). Overlays colour the feature's activation on the layer's grid, each cell over its own block of pixels (nearest,
cell-aligned), beside the plain image, with an opacity slider; the catalog stores maps only for a feature's examples
(its top images and quantile-bin samples), so other images are drawn plain. A pathology feature whose activation mass
sits mostly on the same few cells of the frame in every image gets a shortcut warning.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from apps.workbench_app import _images as images
from apps.workbench_app import _views as views
from apps.workbench_app._state import get_catalog, select_feature
from workbench.errors import WorkbenchError

# A page's bare strings are drawn by Streamlit's magic, so these constants are described in comments. SHORTCUT_SHARE:
# the activation-mass share on the frame's top cells from which a pathology feature is flagged, and REGION_CELLS: the
# fraction of the frame's cells that share is measured on, for catalogs that do not record them (the imaging pipeline
# records its own under summary["pathology_fixed_region"]: "threshold", "cells_share").
SHORTCUT_SHARE = 0.8
REGION_CELLS = 0.05

PICK = "_im_pick"
SEEN_ROW = "_im_seen_row"
N_PER_LABEL = 4
N_DISAGREE = 4
ALPHA = 0.05


# ------------------------------------------------------------------------------------------------------------ features
def _association(cat: Any) -> pd.DataFrame:
    """Per-feature pathology association (``pooled_association`` rows of the pathology, else the ``var`` columns),
    indexed by feature id with ``auroc, auroc_adjusted, q_adjusted`` and, from the table, ``mean_with`` etc."""

    @st.cache_data(show_spinner=False, max_entries=4)
    def _load(path: str, _cat: Any) -> pd.DataFrame:
        var = _cat.features
        out = pd.DataFrame(index=pd.Index([str(i) for i in var.index]))
        if "pooled_association" in _cat.tables:
            t = _cat.table("pooled_association")
            t = t.set_index(t["feature"].astype(str)).drop(columns=["feature"])
            t = t[~t.index.duplicated()]
            out = out.join(t.drop(columns=[c for c in ("concept",) if c in t.columns]))
        for col, src in (("auroc", "pathology_auroc"), ("auroc_adjusted", "pathology_auroc_adjusted"),
                         ("q_adjusted", "pathology_q_adjusted")):
            if src in var.columns and (col not in out.columns or out[col].isna().all()):
                out[col] = var[src].to_numpy(dtype=np.float64)
        for col in ("auroc", "auroc_adjusted", "q_adjusted"):
            if col not in out.columns:
                out[col] = np.nan
        if "partial_r" in out.columns and out["partial_r"].notna().any():
            # the confound-controlled effect: |partial correlation|, where it agrees in sign with the raw AUROC
            r = out["partial_r"].astype(np.float64)
            agree = np.sign(r) == np.sign(out["auroc"].astype(np.float64) - 0.5)
            out["strength"] = np.where(agree, r.abs(), 0.0)
        else:
            out["strength"] = (out["auroc_adjusted"].astype(np.float64) - 0.5).abs()
        return out

    return _load(str(cat.path), cat)


def _default_feature(cat: Any) -> str:
    assoc = _association(cat)
    var = cat.features
    live = var["density"].to_numpy() > 0 if "density" in var else np.ones(len(var), dtype=bool)
    strength = np.where(live, np.nan_to_num(assoc["strength"].to_numpy(dtype=np.float64), nan=-1.0), -2.0)
    return str(assoc.index[int(np.argmax(strength))]) if len(strength) else str(var.index[0])


def _current_feature(cat: Any) -> str:
    fid = views.asked_feature(cat) or _default_feature(cat)
    select_feature(fid)
    return fid


def _labels(cat: Any) -> dict[str, str]:
    """``{fid: "f00042 · pathology AUROC 0.81 (adjusted 0.74)"}`` for the picker (one per catalog)."""

    @st.cache_resource(show_spinner=False, max_entries=4)
    def _build(path: str, _cat: Any) -> dict[str, str]:
        assoc = _association(_cat)
        out = {}
        for fid, a, adj in zip(assoc.index, assoc["auroc"], assoc["auroc_adjusted"]):
            out[fid] = (f"{fid} · pathology AUROC {a:.2f} (adjusted {adj:.2f})" if not views.is_missing(adj)
                        else f"{fid}")
        return out

    return _build(str(cat.path), cat)


def _on_pick() -> None:
    value = st.session_state.get(PICK)
    if value:
        select_feature(str(value))


def _picker(cat: Any, fid: str) -> None:
    labels = _labels(cat)
    st.session_state[PICK] = fid
    st.selectbox("Feature", list(labels), key=PICK, format_func=lambda f: labels.get(f, f), on_change=_on_pick,
                 help="Also set from the Feature browser and the other pages; the pathology-features tab below ranks "
                      "them.")


def _ramp_html() -> str:
    ramp = images.colour_ramp("inferno")
    stops = ", ".join(f"rgb({int(r * 255)},{int(g * 255)},{int(b * 255)})" for r, g, b in ramp[::32])
    return ('<div style="font-size:12px;color:#666">activation (fraction of the feature\'s max): 0 '
            f'<span style="display:inline-block;width:160px;height:10px;vertical-align:middle;'
            f'background:linear-gradient(to right, {stops})"></span> 1 · opacity grows with activation</div>')


# ------------------------------------------------------------------------------------------------------------ (a) grid
def _feature_header(cat: Any, fid: str, positive: str) -> None:
    assoc = _association(cat)
    row = assoc.loc[fid] if fid in assoc.index else pd.Series(dtype=object)
    st.header(fid)
    var = cat.features
    desc = var.at[fid, "description"] if "description" in var.columns else None
    st.markdown(f"**Description:** {views.md_escape(desc if not views.is_missing(desc) else 'none')}")
    c = st.columns(5)
    c[0].metric("Pathology AUROC", views.fmt_num(row.get("auroc")),
                help=f"Mean-pooled activation per image as a score for {positive} (0.5 = no association; below 0.5 = "
                     "lower in the pathology)")
    c[1].metric("Adjusted AUROC", views.fmt_num(row.get("auroc_adjusted")),
                help="After controlling for brightness, contrast, edge density and position (confounds)")
    c[2].metric("q (adjusted)", views.fmt_q(row.get("q_adjusted")), help="Benjamini-Hochberg over the features")
    c[3].metric(f"Mean with {positive}", views.fmt_num(row.get("mean_with")),
                help="Mean of the pooled activation over images with the pathology")
    c[4].metric("Mean without", views.fmt_num(row.get("mean_without")))
    _shortcut_warning(cat, row, positive)


def _fixed_region(cat: Any, key: str, default: float) -> float:
    fixed = cat.summary.get("pathology_fixed_region") or {}
    value = fixed.get(key) if isinstance(fixed, dict) else None
    return float(value) if isinstance(value, (int, float)) else default


def _shortcut_threshold(cat: Any) -> float:
    return _fixed_region(cat, "threshold", SHORTCUT_SHARE)


def _region_words(cat: Any) -> str:
    """``"5%"``: the share of the frame the region measure looks at."""
    return f"{100 * _fixed_region(cat, 'cells_share', REGION_CELLS):.0f}%"


def _shortcut_warning(cat: Any, row: pd.Series, positive: str) -> None:
    """Warn when a pathology feature's activation mass sits mostly on the same few cells of the frame."""
    share = row.get("region_share")
    if views.is_missing(share):
        return
    significant = not views.is_missing(row.get("q_adjusted")) and float(row["q_adjusted"]) < ALPHA
    if float(share) >= _shortcut_threshold(cat) and significant:
        st.warning(f"Possible shortcut: {100 * float(share):.0f}% of this feature's activation, summed over all images, "
                   f"lies on the same {_region_words(cat)} of the frame ({views.md_escape(str(row.get('region') or '?'))}: cells "
                   f"{views.md_escape(str(row.get('region_cells') or '?'))}). It tracks {views.md_escape(positive)}, but "
                   "it may read *where* in the frame (patient position, markers, collimation) rather than *what*; "
                   "check its top images of both labels before calling it a pathology feature.",
                   icon=":material/warning:")
    else:
        st.caption(f"Where in the frame: {100 * float(share):.0f}% of its activation mass on its top {_region_words(cat)} "
                   f"of the cells ({views.md_escape(str(row.get('region') or '–'))}); an even spread gives about "
                   f"{_region_words(cat)}; a possible shortcut from {100 * _shortcut_threshold(cat):.0f}%.")


def grid_tab(cat: Any, fid: str) -> None:
    if not images.cached_examples(cat, fid):
        st.info("No examples: the feature never fires on the analysed images.")
        return
    left, right = st.columns([3, 1], vertical_alignment="bottom")
    left.html(_ramp_html())
    images.alpha_slider(right)
    images.show_example_grid(cat, fid, bins_note="bins of the per-image maxima over the images it fires in, highest bin first")


# ------------------------------------------------------------------------------------------------------------ (b) labels
def labels_tab(cat: Any, fid: str, positive: str) -> None:
    import altair as alt

    table = images.image_table(cat)
    values = images.image_values(cat, fid, pooling="mean")
    maxima = images.image_values(cat, fid, pooling="max")
    frame = pd.DataFrame({"image_id": table.index, "label": table["label"].astype(str).to_numpy(),
                          "mean activation": values, "max activation": maxima})
    frame = frame[table["label"].notna().to_numpy()]
    if frame.empty:
        st.info("The catalog records no label for its images.")
        return
    order = _label_order(cat, frame["label"])
    st.markdown("**Mean activation per image by label** (mean over the layer's grid positions, as a fraction of the "
                "feature's max)")
    left, right = st.columns(2)
    hist = alt.Chart(frame).mark_bar(opacity=0.6).encode(
        x=alt.X("mean activation:Q", bin=alt.Bin(maxbins=30), title="mean activation in the image"),
        y=alt.Y("count():Q", stack=None, title="images"),
        color=alt.Color("label:N", sort=order, title="label", scale=_colours(order, positive)),
        tooltip=["label:N", alt.Tooltip("count():Q", title="images")],
    ).properties(height=240)
    left.altair_chart(hist, width="stretch")
    box = alt.Chart(frame).mark_boxplot(extent="min-max", size=40).encode(
        x=alt.X("label:N", sort=order, title=None), y=alt.Y("mean activation:Q", title="mean activation"),
        color=alt.Color("label:N", sort=order, legend=None, scale=_colours(order, positive)),
    ).properties(height=240)
    right.altair_chart(box, width="stretch")
    stats = frame.groupby("label", observed=True).agg(
        images=("image_id", "size"), mean=("mean activation", "mean"), median=("mean activation", "median"),
        firing=("max activation", lambda v: float(np.mean(np.asarray(v) > 0)))).reindex(order).reset_index()
    st.dataframe(stats, hide_index=True, width="stretch", column_config={
        "mean": st.column_config.NumberColumn("mean of the mean activation", format="%.4f"),
        "median": st.column_config.NumberColumn("median", format="%.4f"),
        "firing": st.column_config.NumberColumn("share of images it fires in", format="%.2f"),
    })
    row = _association(cat).loc[fid]
    st.caption(f"Pathology ({positive}) association of this feature: AUROC {views.fmt_num(row.get('auroc'))}, adjusted "
               f"for confounds {views.fmt_num(row.get('auroc_adjusted'))} (q {views.fmt_q(row.get('q_adjusted'))}); mean "
               f"with {views.fmt_num(row.get('mean_with'))} vs without {views.fmt_num(row.get('mean_without'))}.")

    st.markdown("**Top images of each label** (by the image's max activation; overlays where the catalog stores the "
                "map, i.e. for the feature's examples)")
    cols = st.columns(len(order))
    for col, label in zip(cols, order):
        part = frame[frame["label"] == label].sort_values("max activation", ascending=False, kind="stable")
        part = part[part["max activation"] > 0].head(N_PER_LABEL)
        col.markdown(f"**{views.md_escape(label)}**")
        if part.empty:
            col.caption("The feature fires in no image of this label.")
            continue
        pics, caps = [], []
        for sid, top in zip(part["image_id"], part["max activation"]):
            img = images.render_overlay(cat, fid, sid)
            note = f"max {top:.2f}" + ("" if img is not None else " · no stored map")
            pics.append(img if img is not None else images.render_image(cat, sid))
            caps.append(images.image_caption(cat, sid, extra=note))
        col.image(pics, caption=caps, width=images.TILE_PX)


def _colours(order: list[str], positive: str) -> Any:
    """Red for the pathology, blues and greys for the other labels."""
    import altair as alt

    others = iter(["#1f77b4", "#7f7f7f", "#9467bd", "#2ca02c", "#8c564b", "#17becf"] * 4)
    return alt.Scale(domain=order, range=["#d62728" if label == positive else next(others) for label in order])


def _label_order(cat: Any, labels: pd.Series) -> list[str]:
    present = [str(v) for v in pd.unique(labels.astype(str))]
    classes = [str(c) for c in (cat.image_info or {}).get("classes", [])]
    return [c for c in classes if c in present] + sorted(c for c in present if c not in classes)


# ------------------------------------------------------------------------------------------------------------ (c) pathology
def _pathology_table(cat: Any, positive: str) -> tuple[pd.DataFrame, bool]:
    """Features with adjusted q < 0.05 ranked by the confound-controlled effect (``|partial_r|`` where it agrees in
    sign with the raw AUROC) (True), or, when none is significant, the ten strongest (False)."""
    assoc = _association(cat)
    var = cat.features
    frame = assoc.reset_index(names="feature")
    sign = frame["partial_r"] if "partial_r" in frame.columns else frame["auroc_adjusted"] - 0.5
    frame["direction"] = np.where(sign >= 0, f"higher in {positive}", f"lower in {positive}")
    frame["description"] = var["description"].astype(str).reindex(frame["feature"]).to_numpy() \
        if "description" in var.columns else ""
    frame = frame.sort_values(["strength", "q_adjusted"], ascending=[False, True], kind="stable", na_position="last")
    significant = frame[frame["q_adjusted"] < ALPHA]
    cols = [c for c in ("feature", "direction", "auroc", "partial_r", "auroc_adjusted", "q_adjusted", "mean_with",
                        "mean_without", "top_precision", "region_share", "region", "description") if c in frame.columns]
    if len(significant):
        return significant[cols].reset_index(drop=True), True
    return frame[cols].head(10).reset_index(drop=True), False


def _counts(cat: Any) -> None:
    s = cat.summary
    adjusted = s.get("pathology_significant_adjusted") or {}
    raw = s.get("pathology_significant_unadjusted") or {}
    tested = s.get("pathology_features_tested") or {}
    c = st.columns(3)
    for col, (key, label) in zip(c, (("sae", "SAE features"), ("neurons", "neurons"),
                                      ("random_sae", "random-weight SAE"))):
        n, t = adjusted.get(key), tested.get(key)
        value = "not run" if views.is_missing(n) else f"{int(n)} / {views.fmt_num(t)}"
        col.metric(f"Significant: {label}", value,
                   help=f"q < {ALPHA} after adjusting for confounds; without adjustment: {views.fmt_num(raw.get(key))}")
    c = st.columns(3)
    best = s.get("best_feature")
    c[0].metric("Best single feature, test AUROC", views.fmt_num(s.get("best_feature_test_auroc")),
                help=f"{best or '–'} ({s.get('best_feature_direction', '?')} in the pathology), chosen on the train + "
                     "validation images, scored on the held-out test images")
    c[1].metric("Model, test AUROC", views.fmt_num(s.get("model_test_auroc")),
                help="The model's own pathology probability on the held-out test images")
    c[2].metric("Model, test accuracy", views.fmt_pct(s.get("model_test_accuracy"), digits=3))


def pathology_tab(cat: Any, positive: str) -> None:
    _counts(cat)
    table, significant = _pathology_table(cat, positive)
    if significant:
        st.markdown(f"**{len(table):,} SAE features associated with {views.md_escape(positive)}** after adjustment "
                    f"(q < {ALPHA}), strongest first (|partial correlation| given the confounds)")
    else:
        st.info(f"No SAE feature is associated with {positive} at q < {ALPHA} once brightness, contrast, edges and "
                "position are controlled; the ten strongest (not significant) are listed.")
    event = st.dataframe(table, hide_index=True, width="stretch", on_select="rerun", selection_mode="single-row",
                         key="_im_path_table", column_config={
                             "auroc": st.column_config.NumberColumn("AUROC", format="%.3f"),
                             "partial_r": st.column_config.NumberColumn("partial r", format="%.3f"),
                             "auroc_adjusted": st.column_config.NumberColumn("adjusted AUROC", format="%.3f"),
                             "q_adjusted": st.column_config.NumberColumn("q (adjusted)", format="%.1e"),
                             "mean_with": st.column_config.NumberColumn("mean with", format="%.4f"),
                             "mean_without": st.column_config.NumberColumn("mean without", format="%.4f"),
                             "top_precision": st.column_config.NumberColumn("top precision", format="%.2f"),
                             "region_share": st.column_config.ProgressColumn(
                                 f"mass on {_region_words(cat)} of the frame", min_value=0.0, max_value=1.0, format="%.2f",
                                 help=f"Share of the feature's activation, summed over all images, on the "
                                      f"{_region_words(cat)} of the grid's cells holding most of it (about that share "
                                      f"if spread evenly; ≥ "
                                      f"{_shortcut_threshold(cat):.1f}: possible shortcut)"),
                         })
    views.csv_download(table, name="pathology_features", key="_im_path")
    if "region_share" in table.columns and significant:
        fixed = table[table["region_share"] >= _shortcut_threshold(cat)]
        if len(fixed):
            st.warning(f"{len(fixed):,} of these {len(table):,} features hold ≥ {100 * _shortcut_threshold(cat):.0f}% of "
                       f"their activation on the same {_region_words(cat)} of the frame: possible shortcuts (position, not pathology); "
                       f"for example {', '.join(map(str, fixed['feature'].head(5)))}.", icon=":material/warning:")
    rows = list(getattr(getattr(event, "selection", None), "rows", []) or [])
    picked = str(table["feature"].iloc[rows[0]]) if rows and rows[0] < len(table) else None
    if picked and picked != st.session_state.get(SEEN_ROW):
        st.session_state[SEEN_ROW] = picked
        select_feature(picked)
        st.rerun()
    if len(table):
        left, mid, right = st.columns([3, 1, 1], vertical_alignment="bottom")
        fid = left.selectbox("Open a listed feature", [str(f) for f in table["feature"]], key="_im_path_pick")
        if mid.button("Show on this page", key="_im_path_show", icon=":material/image:") and fid:
            select_feature(fid)
            st.rerun()
        if right.button("Open in feature browser", key="_im_path_open", icon=":material/open_in_new:") and fid:
            views.open_feature(fid)
    if "pooled_best" in cat.tables:
        with st.expander("Best unit per representation (pooled_best)"):
            st.dataframe(cat.table("pooled_best"), hide_index=True, width="stretch")


# ------------------------------------------------------------------------------------------------------------ (d) causal
_CAUSAL_CONFIG = {
    "dlogit_firing": ("Δ logit (feature)", "%.3f"),
    "dlogit_random": ("Δ logit (random direction)", "%.3f"),
    "abs_dlogit_firing": ("|Δ logit| (feature)", "%.3f"),
    "abs_dlogit_random": ("|Δ logit| (random)", "%.3f"),
    "flip_fraction": ("flips (feature)", "%.2f"),
    "flip_fraction_random": ("flips (random)", "%.2f"),
    "p_vs_random": ("p vs random", "%.1e"),
    "mean_activation_firing": ("mean act.", "%.3f"),
}


def causal_tab(cat: Any, positive: str) -> None:
    st.subheader("Ablating pathology features")
    if "pathology_causal" not in cat.tables:
        st.info("This catalog has no `pathology_causal` table.")
    else:
        _causal_table(cat, cat.table("pathology_causal"), positive)
    st.subheader("Where the model, its features and the labels disagree")
    _disagreements(cat, positive)


def _causal_table(cat: Any, table: pd.DataFrame, positive: str) -> None:
    if table.empty:
        st.info("No feature was ablated (no pathology feature passed the significance filter).")
        return
    view = table.drop(columns=[c for c in ("dlogit_other", "n_other") if c in table.columns])  # silent images: 0 by construction
    if "dlogit_random" not in view.columns:
        st.caption(f"Change of the {positive} logit when the feature's contribution is removed from the layer on the "
                   "images where it fires most. This catalog predates the matched control: without it a change is not "
                   "evidence that the model uses the feature (rebuild the catalog to get the control).")
    else:
        feats = view[view["kind"] == "feature"]
        beyond = int(feats["beyond_control"].astype(bool).sum())
        st.caption(f"Change of the {positive} logit when the feature's contribution is removed from the layer on the "
                   "images where it fires most, against the control: the same amount removed along a random "
                   "direction of the same norm, on the same images. **beyond control**: the feature's |Δ| exceeds the "
                   "control's (paired Wilcoxon over the images, p < 0.05). Rows of kind *group* remove several "
                   "features at once: the strongest pathology features, and as many random live features.")
        msg = (f"{beyond} of {len(feats)} ablated features move the {positive} logit more than a random direction of the "
               "same size")
        if beyond < len(feats):
            st.warning(msg + f"; the other {len(feats) - beyond} are explained as well by the control: their change is "
                       "not evidence that the model uses them.", icon=":material/rule:")
        else:
            st.success(msg + ".", icon=":material/check:")
    var = cat.features
    if "description" in var.columns:
        view["description"] = var["description"].astype(str).reindex(view["feature"].astype(str)).to_numpy()
    st.dataframe(view, hide_index=True, width="stretch", column_config={
        k: st.column_config.NumberColumn(label, format=fmt) for k, (label, fmt) in _CAUSAL_CONFIG.items()
    } | {"beyond_control": st.column_config.CheckboxColumn("beyond control")})
    views.csv_download(view, name="pathology_causal", key="_im_causal")


def _model_errors(cat: Any, positive: str) -> None:
    """The model's calls against the labels on the held-out images (from the ``images`` table)."""
    table = images.image_table(cat)
    split = table["split"].astype(str)
    held = (split == "test").to_numpy()
    part = table[held] if held.any() else table
    part = part[part["label"].notna() & pd.to_numeric(part["p_model"], errors="coerce").notna()]
    if part.empty:
        return
    call = np.where(pd.to_numeric(part["p_model"]) >= 0.5, positive, "other")
    truth = np.where(part["label"].astype(str) == positive, positive, "other")
    confusion = pd.crosstab(pd.Series(truth, name="label"), pd.Series(call, name="model call"))
    wrong = int((call != truth).sum())
    st.markdown(f"**The model is wrong on {wrong:,} of {len(part):,} {'test ' if held.any() else ''}images** "
                f"({100 * wrong / len(part):.0f}%; model p ≥ 0.5 = {views.md_escape(positive)})")
    st.dataframe(confusion, width=360)


def _disagreements(cat: Any, positive: str) -> None:
    _model_errors(cat, positive)
    if "disagreements" not in cat.tables:
        st.info("This catalog has no `disagreements` table.")
        return
    table = cat.table("disagreements")
    if "p_features" not in table.columns:
        st.info("This catalog's disagreements table predates the features' own call (rebuild the catalog).")
        return
    feats = str(table["features"].iloc[0]) if len(table) else ""
    st.caption("The features' call is a logistic regression of the label on the pooled activations of the pathology "
               f"features ({views.md_escape(feats) or 'none'}), fitted on the training and validation images; the images "
               "below are the others. *model wrong, features right*: the error arises after or beside these features; "
               "*both wrong*: the features read the image as the model does (a shared confound, a hard image or a "
               "label to check); *model right, features wrong*: the model uses evidence these features do not carry.")
    if table.empty:
        st.info("The model's call, its features' call and the label agree on every held-out image.")
        return
    counts = table["kind"].astype(str).value_counts()
    for kind in [str(k) for k in pd.unique(table["kind"].astype(str))]:
        part = table[table["kind"].astype(str) == kind].head(N_DISAGREE)
        st.markdown(f"**{views.md_escape(kind)}** ({int(counts.get(kind, 0)):,} images)")
        pics, caps = [], []
        for sid, pf in zip(part["image_id"].astype(str), part["p_features"]):
            try:
                pics.append(images.render_image(cat, sid))
            except WorkbenchError:
                continue
            caps.append(images.image_caption(cat, sid, extra=f"features p {float(pf):.2f}"))
        if pics:
            st.image(pics, caption=caps, width=images.TILE_PX)
    st.dataframe(table, hide_index=True, width="stretch", column_config={
        "p_model": st.column_config.NumberColumn("model p", format="%.3f"),
        "p_features": st.column_config.NumberColumn("features p", format="%.3f"),
    })
    views.csv_download(table, name="disagreements", key="_im_disagree")


# ------------------------------------------------------------------------------------------------------------ page
def main() -> None:
    cat = get_catalog()
    st.title("Images")
    if not images.is_image_catalog(cat):
        st.info("This catalog holds sequences, not images: the Images page is for image catalogs.")
        return
    info = cat.image_info or {}
    positive = str(info.get("positive_class") or cat.summary.get("pathology") or "pathology")
    shape = "x".join(str(v) for v in info.get("shape", [])[-2:])
    grid = "x".join(str(v) for v in info.get("grid", []))
    st.caption(f"{info.get('dataset', 'images')}: {views.fmt_num(len(cat.sequences))} images of {shape} pixels; layer "
               f"{info.get('layer_name', cat.provenance.get('layer', '?'))} ({grid} grid); classes "
               f"{', '.join(str(c) for c in info.get('classes', [])) or '–'} (pathology: {positive}).")
    fid = _current_feature(cat)
    _picker(cat, fid)
    _feature_header(cat, fid, positive)
    tab_grid, tab_labels, tab_path, tab_causal = st.tabs(
        ["Top images", "By label", "Pathology features", "Causal check & disagreements"])
    with tab_grid:
        grid_tab(cat, fid)
    with tab_labels:
        labels_tab(cat, fid, positive)
    with tab_path:
        pathology_tab(cat, positive)
    with tab_causal:
        causal_tab(cat, positive)


try:
    main()
except WorkbenchError as exc:
    st.error(str(exc))
