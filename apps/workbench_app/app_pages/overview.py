"""Overview: the model, layer and SAE of the catalog, its fidelity, concepts captured against the controls, the
feature density histogram, sizes and the top discoveries."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import streamlit as st

from apps.workbench_app import _images as images
from apps.workbench_app import _views as views
from apps.workbench_app._state import get_catalog
from workbench.errors import WorkbenchError

FEATURE_RE = re.compile(r"\b[fu]\d{5}\b")


def _loss_recovered(cat: Any) -> tuple[Any, str]:
    """The loss-recovered value and a note (why it is missing, or what it compares)."""
    value = cat.summary.get("loss_recovered")
    raw = cat.metrics.get("loss_recovered")
    if isinstance(raw, dict):
        if views.is_missing(value):
            value = raw.get("loss_recovered")
        if "skipped" in raw:
            return value, f"not measured ({raw['skipped']})"
        if "ce_clean" in raw:
            return value, (f"(CE zero-ablation - CE with SAE) / (CE zero-ablation - CE clean) on {raw.get('sequences', '?')} "
                           f"{views.units(cat).items}: CE clean {views.fmt_num(raw.get('ce_clean'))}, with SAE "
                           f"{views.fmt_num(raw.get('ce_sae'))}, zero-ablated {views.fmt_num(raw.get('ce_zero_ablation'))}")
    return value, "" if not views.is_missing(value) else "not measured"


def _model(cat: Any) -> None:
    prov, summary = cat.provenance, cat.summary
    cfg = prov.get("sae_config") or {}
    st.subheader("Model and SAE")
    sae = [f"{cfg.get('arch', '?')}", f"width {views.fmt_num(cfg.get('width'))}"]
    if not views.is_missing(cfg.get("k")) and str(cfg.get("arch", "")).lower() in ("topk", "batchtopk", "matryoshka"):
        sae.append(f"k {cfg.get('k')}")
    sae.append(f"input {views.fmt_num(cfg.get('d_in'))}")
    st.markdown(f"**Model** `{prov.get('model', '?')}` · **layer** {prov.get('layer', '?')} · **SAE** "
                f"{views.md_escape(', '.join(sae))}")
    if prov.get("sae_path") or prov.get("model_source"):
        st.caption(f"Model source: {prov.get('model_source', '–')}; SAE: {prov.get('sae_path', 'not recorded')}")
    loss, note = _loss_recovered(cat)
    c = st.columns(4)
    c[0].metric("FVE", views.fmt_num(summary.get("fve")), help="Fraction of variance explained on held-out tokens")
    c[1].metric("L0", views.fmt_num(summary.get("l0")), help="Mean number of active features per token (held-out)")
    c[2].metric("Dead fraction", views.fmt_pct(summary.get("dead_fraction"), digits=3),
                help="Features that never fired on held-out tokens (SAE metrics); on the analysed tokens: "
                     f"{views.fmt_pct(summary.get('dead_fraction_catalog'), digits=3)}")
    c[3].metric("Loss recovered", "–" if views.is_missing(loss) else f"{float(loss):.3f}", help=note or None)
    if note:
        st.caption(f"Loss recovered: {note}.")
    if summary.get("metrics_source") == "none":
        st.caption("No SAE metrics were given to this catalog: fidelity figures are missing.")
    with st.expander("Provenance"):
        keep = {k: prov.get(k) for k in ("model_source", "sae_path", "store_path", "created", "workbench_version",
                                         "schema_version", "store_manifest_sha256", "weights_sha256") if k in prov}
        st.json({**keep, "sae_config": cfg}, expanded=False)


def _imaging(cat: Any) -> None:
    """Image catalogs: the model's own pathology performance against its features (pooled per image)."""
    s = cat.summary
    info = cat.image_info or {}
    positive = str(s.get("pathology") or info.get("positive_class") or "pathology")
    st.subheader(f"Pathology: {positive}")
    c = st.columns(3)
    c[0].metric("Model test AUROC", views.fmt_num(s.get("model_test_auroc")),
                help=f"The model's {positive} probability on the held-out test images")
    c[1].metric("Model test accuracy", views.fmt_pct(s.get("model_test_accuracy"), digits=3))
    best = s.get("best_feature")
    c[2].metric("Best single feature test AUROC", views.fmt_num(s.get("best_feature_test_auroc")),
                help=f"{best or '–'} ({s.get('best_feature_direction', '?')} in {positive}; its mean-pooled activation "
                     "as the score), chosen on the train + validation images")
    adjusted = s.get("pathology_significant_adjusted") or {}
    raw = s.get("pathology_significant_unadjusted") or {}
    tested = s.get("pathology_features_tested") or {}
    c = st.columns(3)
    for col, (key, label) in zip(c, (("sae", "SAE"), ("neurons", "neurons"), ("random_sae", "random-weight SAE"))):
        n = adjusted.get(key)
        col.metric(f"Pathology features ({label})",
                   "not run" if views.is_missing(n) else f"{int(n)} / {views.fmt_num(tested.get(key))}",
                   help=f"Units whose per-image mean activation is associated with {positive} at q < 0.05 after "
                        f"controlling for brightness, contrast, edges and position (of those tested); without that "
                        f"control: {views.fmt_num(raw.get(key))}")
    _imaging_controls(s, positive)
    if not views.is_missing(best) and str(best).startswith("f") and st.button(f"open {best}", key="_ovimg_best"):
        views.open_feature(str(best))
    st.caption("Per image: mean activation over the layer's grid. Best single feature vs the model: how much of the "
               "model's pathology call one feature carries. The Images page shows the features on the images.")


def _imaging_controls(s: dict[str, Any], positive: str) -> None:
    """What the controls say (catalogs that record them): the causal check against its random-direction control,
    the model's errors against its features' own call, and features fixed in the frame."""
    lines = []
    n = len(s.get("causal_features") or [])
    if "causal_beyond_control" in s and n:
        lines.append(f"**Causal check:** {int(s['causal_beyond_control'])} of {n} ablated features move the {positive} "
                     "logit more than the same amount removed along a random direction (the others are no evidence "
                     "that the model uses them).")
    errors, kinds = s.get("model_test_errors") or {}, s.get("disagreements") or {}
    if errors:
        right = int(kinds.get("model wrong, features right", 0))
        both = int(kinds.get("model and features both wrong", 0))
        lines.append(f"**Errors:** the model is wrong on {int(errors.get('model_wrong', 0)):,} of "
                     f"{int(errors.get('images', 0)):,} test images ({int(errors.get('false_positive', 0)):,} called "
                     f"{positive} wrongly, {int(errors.get('false_negative', 0)):,} missed); its pathology features read "
                     f"{right:,} of them right and err with it on {both:,}.")
    fixed = s.get("pathology_fixed_region") or {}
    if isinstance(fixed, dict) and "features" in fixed and fixed.get("of"):
        lines.append(f"**Possible shortcuts:** {len(fixed['features']):,} of {int(fixed.get('of', 0)):,} pathology "
                     f"features hold ≥ {100 * float(fixed.get('threshold', 0.8)):.0f}% of their activation on the same "
                     f"{100 * float(fixed.get('cells_share', 0.05)):.0f}% of the frame.")
    if lines:
        st.markdown("\n\n".join(lines))


def _captured(cat: Any) -> None:
    import altair as alt
    import pandas as pd

    summary = cat.summary
    st.subheader("Concepts captured")
    n = summary.get("n_concepts")
    f1 = summary.get("captured_f1", 0.5)
    rows = []
    for key, label in (("sae", "SAE features"), ("neurons", "neurons"), ("random", "random-weight control")):
        value = summary.get(f"concepts_captured_{key}")
        rows.append({"units": label, "concepts": None if views.is_missing(value) else int(value)})
    known = {"sae", "neurons", "random"}
    for key in sorted(summary):
        name = key.removeprefix("concepts_captured_")
        if key.startswith("concepts_captured_") and name not in known and not views.is_missing(summary[key]):
            rows.append({"units": name, "concepts": int(summary[key])})
    frame = pd.DataFrame(rows)
    cols = st.columns(len(rows))
    for col, row in zip(cols, rows):
        col.metric(row["units"], "not run" if row["concepts"] is None else f"{row['concepts']} / {views.fmt_num(n)}")
    shown = frame.dropna(subset=["concepts"])
    if len(shown):
        chart = alt.Chart(shown).mark_bar().encode(
            x=alt.X("concepts:Q", title=f"concepts with a unit reaching test F1 > {f1}",
                    scale=alt.Scale(domain=[0, max(int(n or 0), int(shown["concepts"].max()), 1)])),
            y=alt.Y("units:N", sort=None, title=None, axis=alt.Axis(labelLimit=220, labelOverlap=False)),
            color=alt.Color("units:N", legend=None, scale=alt.Scale(range=["#d62728", "#1f77b4", "#7f7f7f", "#9467bd"])),
            tooltip=["units:N", "concepts:Q"],
        ).properties(height=50 + 36 * len(shown))
        st.altair_chart(chart, width="stretch")
    st.caption(f"A concept is captured by a set of units when one of them reaches test F1 > {f1} on it (the unit is "
               "chosen on the validation half). Neurons are the model's raw dimensions; the random control is an SAE "
               "trained on a random-weight copy of the model. Details per concept: Concept explorer.")
    scores = summary.get("description_corr_above_0_5")  # workbench.description_scores; older catalogs lack it
    if isinstance(scores, dict) and scores:
        names = {"sae": "SAE", "neurons": "neurons", "random": "random-weight control", "shuffled": "shuffled descriptions"}
        shown = "; ".join(f"{names.get(k, k)} {100 * float(v):.0f}%" for k, v in scores.items()
                          if not views.is_missing(v))
        st.markdown(f"**Descriptions that predict held-out activations** (r > 0.5, test sequences): {shown}")


def _density_frame(cat: Any, source: str) -> tuple[Any, int, str]:
    """(bars ``lo, hi, features``, dead count, caption) of the feature density histogram from ``source``."""
    import pandas as pd

    @st.cache_data(show_spinner=False, max_entries=8)
    def _from_var(path: str, _cat: Any) -> tuple[list[float], list[int], int]:
        density = _cat.features["density"].to_numpy(dtype=np.float64)
        live = density[density > 0]
        lo = min(-7.0, float(np.floor(np.log10(live.min()) * 2) / 2)) if len(live) else -7.0
        edges = np.arange(lo, 0.0 + 1e-9, 0.5)
        counts, _ = np.histogram(np.log10(live), bins=edges)
        return edges.tolist(), counts.tolist(), int((density <= 0).sum())

    if source == "metrics":
        hist = cat.metrics.get("density_histogram") or {}
        edges, counts, dead = hist.get("log10_bin_edges"), hist.get("counts"), int(hist.get("dead") or 0)
        caption = f"SAE metrics: firing rate of each feature on the held-out tokens; {dead} dead features not shown."
    else:
        edges, counts, dead = _from_var(str(cat.path), cat)
        caption = (f"Catalog: fraction of the analysed tokens each feature fires on (var density); {dead} dead features "
                   "not shown.")
    frame = pd.DataFrame({"lo": edges[:-1], "hi": edges[1:], "features": counts})
    return frame, dead, caption


def _density(cat: Any) -> None:
    import altair as alt

    st.subheader("Feature density")
    has_metrics = bool((cat.metrics.get("density_histogram") or {}).get("counts"))
    options = ["catalog"] + (["metrics"] if has_metrics else [])
    source = st.radio("Source", options, horizontal=True, key="_ov_density_source",
                      format_func={"catalog": "analysed tokens (catalog)", "metrics": "held-out tokens (SAE metrics)"}.get)
    frame, _dead, caption = _density_frame(cat, source or "catalog")
    chart = alt.Chart(frame).mark_bar(color="#1f77b4").encode(
        x=alt.X("lo:Q", bin="binned", title="log10 feature density (fraction of tokens)"), x2="hi:Q",
        y=alt.Y("features:Q", title="features"), tooltip=["lo:Q", "hi:Q", "features:Q"],
    ).properties(height=230)
    st.altair_chart(chart, width="stretch")
    st.caption(caption)


def _counts(cat: Any) -> None:
    s = cat.summary
    st.subheader("Catalog")
    c = st.columns(6)
    c[0].metric("Features", views.fmt_num(s.get("n_features", len(cat.features))))
    u = views.units(cat)
    c[1].metric(u.items.capitalize(), views.fmt_num(s.get("n_sequences")))
    c[2].metric(u.tokens.capitalize() if u.item == "image" else "Tokens", views.fmt_num(s.get("n_tokens")))
    c[3].metric("Concepts", views.fmt_num(s.get("n_concepts")))
    c[4].metric("Families", views.fmt_num(s.get("n_families")), help="Leiden clusters of decoder directions")
    c[5].metric("Dead features", views.fmt_num(s.get("n_dead")), help="Never fire on the analysed tokens")


def _discovery_list(title: str, items: Any, key: str) -> None:
    if not items:
        return
    st.markdown(f"**{title}**")
    for i, item in enumerate(items if isinstance(items, list) else [items]):
        text = str(item)
        found = FEATURE_RE.search(text)
        left, right = st.columns([6, 1], vertical_alignment="center")
        left.markdown(f"- {views.md_escape(text)}")
        if found and found.group(0).startswith("f") and right.button(f"open {found.group(0)}", key=f"_ov_{key}_{i}"):
            views.open_feature(found.group(0))


def _discoveries(cat: Any) -> None:
    s = cat.summary
    st.subheader("Top discoveries")
    shown = False
    if s.get("top_concept_findings"):
        _discovery_list("Concepts captured beyond position and residue, better than every control (page Beyond "
                        "position)", s["top_concept_findings"], "findings")
        shown = True
    if s.get("top_missing_annotations"):
        _discovery_list("Candidate missing annotations (feature fires confidently where the database has no label, "
                        "beyond position and residue)", s["top_missing_annotations"], "missing")
        shown = True
    elif s.get("top_missing_annotations_trivial"):
        _discovery_list("No candidate missing annotation survives the stratification by position and residue; the "
                        "strongest candidates, for reference (not discoveries)", s["top_missing_annotations_trivial"],
                        "missing")
        shown = True
    if s.get("top_unexplained_features"):
        _discovery_list("Unexplained features (consistent, strong, matching no labelled concept)",
                        s["top_unexplained_features"], "unexplained")
        shown = True
    if not views.is_missing(s.get("rediscovery_concepts")):
        st.markdown(f"**Rediscovery**: with half the instances of {s['rediscovery_concepts']} concepts withheld from the "
                    "labels, the top candidate missing annotations overlap a withheld instance with mean precision@k "
                    f"{views.fmt_num(s.get('rediscovery_precision_at_k_mean'))} (chance "
                    f"{views.fmt_num(s.get('rediscovery_base_rate_mean'))}).")
        shown = True
    best = _best_captured(cat)
    if best is not None and len(best):
        st.markdown("**Best-captured concepts** (SAE feature with the highest test F1)")
        st.dataframe(best, hide_index=True, width="stretch",
                     column_config={"test_f1": st.column_config.NumberColumn("test F1", format="%.3f"),
                                    "neuron_f1": st.column_config.NumberColumn("best neuron F1", format="%.3f"),
                                    "random_f1": st.column_config.NumberColumn("random control F1", format="%.3f")})
        shown = True
    probes = s.get("probes")
    if isinstance(probes, dict) and probes:
        with st.expander("Probe scores (balanced accuracy; sae vs neurons vs random-weight SAE)"):
            import pandas as pd

            rows: dict[tuple[str, str], dict[str, Any]] = {}
            for k, v in probes.items():
                level, _, rest = str(k).partition(":")
                target, _, rep = rest.rpartition(":")
                rows.setdefault((level, target), {"level": level, "target": target})[rep] = v
            st.dataframe(pd.DataFrame(list(rows.values())), hide_index=True, width="stretch")
    if not shown:
        st.info("No discoveries recorded in this catalog's summary.")


def _best_captured(cat: Any) -> Any:
    @st.cache_data(show_spinner=False, max_entries=8)
    def _table(path: str, _cat: Any) -> Any:
        if "best_sae" not in _cat.tables:
            return None
        best = _cat.table("best_sae").sort_values("test_f1", ascending=False, kind="stable").head(8)
        out = best[["concept", "best_feature", "test_f1"]].astype({"concept": str, "best_feature": str}).reset_index(drop=True)
        for table, col in (("best_neurons", "neuron_f1"), ("best_random", "random_f1")):
            if table in _cat.tables:
                ctrl = _cat.table(table)
                out[col] = out["concept"].map(dict(zip(ctrl["concept"].astype(str), ctrl["test_f1"]))).to_numpy()
        return out

    return _table(str(cat.path), cat)


def main() -> None:
    cat = get_catalog()
    st.title("Overview")
    st.caption(f"Catalog: {cat.path.parent if cat.path.name == 'catalog.h5ad' else cat.path}")
    _model(cat)
    if images.is_image_catalog(cat):
        _imaging(cat)
    left, right = st.columns(2)
    with left:
        _captured(cat)
    with right:
        _density(cat)
    _counts(cat)
    _discoveries(cat)


try:
    main()
except WorkbenchError as exc:
    st.error(str(exc))
