"""Feature browser: search features, then everything the catalog knows about one of them.

The feature shown is, in order: a new ``?feature=f00042`` query parameter (links and bookmarks), the feature other
pages selected (``st.session_state["feature"]``), else the first feature that fires. The query parameter is kept in
step with the feature shown, so the address bar always bookmarks the current feature.

Searching opens the first hit at once (a new query selects it); every search result is a clickable row (selecting
it opens that feature), and the selectbox lists the results too. The nearest features are a table of clickable rows
as well. The page also draws a sequence logo of the
feature's top windows on IMGT positions, links the top sequences and the top concept out to public databases
(Thera-SAbDab, UniProt, IMGT; plain links for the browser), offers CSV / Parquet downloads of every table and a
button that compares the feature with another one (the Compare features page).

Catalogs with description scores (:mod:`workbench.description_scores`: ``description_corr`` and friends in the
feature table) add a "description correlation >=" filter: above 0 it keeps, in the list and the search results, the
features whose description predicts their held-out activations at least that well, and lists them in a table.
Catalogs without the scores show no filter.
"""

from __future__ import annotations

import functools
import zlib
from typing import Any

import numpy as np
import streamlit as st

from apps.workbench_app import _images as images
from apps.workbench_app import _links as links
from apps.workbench_app import _logos as logos
from apps.workbench_app import _views as views
from apps.workbench_app._state import get_catalog, select_feature
from workbench.errors import WorkbenchError

# Session keys. SEEN: the last ``?feature=`` value this page acted on (a query value is followed only when it changes).
SEEN = "_fb_qp_seen"
PICK_ALL = "_fb_pick"
PICK_HITS = "_fb_pick_hits"
QUERY = "_fb_query"
ALIGN = "_fb_align"
MIN_CORR = "_fb_min_corr"
COMPARE_PAGE = "app_pages/compare.py"
_SCORE_COLUMNS = ["description_corr", "description_spearman", "description_detection", "description_f1"]
_SCORE_CONFIG = {
    "description_corr": ("description r", "Pearson correlation of the activation the description predicts with the "
                         "real one, over the test sequences' tokens"),
    "description_spearman": ("Spearman", "Rank correlation of predicted and real activation on the test tokens"),
    "description_detection": ("detection", "Balanced accuracy of predicting where it fires from the description, "
                              "test tokens (threshold chosen on the validation half)"),
    "description_f1": ("detection F1", "F1 of the same detection"),
}


def _default_feature(cat: Any) -> str:
    var = cat.features
    live = np.flatnonzero(var["density"].to_numpy() > 0) if "density" in var else np.zeros(0, dtype=int)
    return str(var.index[int(live[0]) if len(live) else 0])


def _current_feature(cat: Any) -> str:
    """The feature to show (see the module docstring); a bad id gives a warning and falls back."""
    ss = st.session_state
    qp = st.query_params.get("feature")
    chosen = None
    if qp is not None and qp.strip() and qp != ss.get(SEEN):
        ss[SEEN] = qp
        chosen = views.resolve_feature(cat, qp)
        if chosen is None:
            st.warning(f"No feature {qp!r} in this catalog (ids run from {cat.features.index[0]} to "
                       f"{cat.features.index[-1]}); showing another feature instead.")
    if chosen is None:
        chosen = views.asked_feature(cat)
    if chosen is None:
        chosen = _default_feature(cat)
    select_feature(chosen)
    if st.query_params.get("feature") != chosen:
        st.query_params["feature"] = chosen
    ss[SEEN] = chosen
    return chosen


def _on_pick(key: str) -> None:
    value = st.session_state.get(key)
    if value:
        select_feature(str(value))


def _score_config() -> dict[str, Any]:
    return {c: st.column_config.NumberColumn(label, help=help_, format="%.2f")
            for c, (label, help_) in _SCORE_CONFIG.items()}


def _min_corr(cat: Any, where: Any) -> float | None:
    """The "description correlation >=" slider (catalogs with description scores only); None when off (0)."""
    if "description_corr" not in cat.features.columns:
        return None
    value = where.slider("Description correlation ≥", min_value=0.0, max_value=1.0, value=0.0, step=0.05,
                         key=MIN_CORR,
                         help="Keep features whose description (top concept, region / IMGT / residue profile, built "
                              "on the validation sequences) predicts their activations on the test sequences with at "
                              "least this Pearson correlation. 0: no filter.")
    return float(value) if value and value > 0 else None


def _scores(cat: Any) -> Any:
    """The feature table's description-score columns (those present), indexed by feature id."""
    var = cat.features
    return var[[c for c in _SCORE_COLUMNS if c in var.columns]]


def _hits(cat: Any, query: str, min_corr: float | None) -> Any:
    """The search results of ``query`` (:meth:`Catalog.search`, best first), filtered by the description score."""
    hits = views.cached_search(cat, query, limit=50)
    if min_corr is not None:
        hits = hits.join(_scores(cat), on="feature")
        hits = hits[hits["description_corr"].to_numpy(dtype=np.float64) >= min_corr].reset_index(drop=True)
    elif "description_corr" in cat.features.columns:
        hits = hits.join(_scores(cat)[["description_corr"]], on="feature")
    return hits


def _on_query() -> None:
    """A new search opens its first hit (widget callback: runs before the page, so the page shows that hit)."""
    query = str(st.session_state.get(QUERY) or "").strip()
    if not query:
        return
    cat = get_catalog()
    value = st.session_state.get(MIN_CORR)
    min_corr = float(value) if value and "description_corr" in cat.features.columns else None
    hits = _hits(cat, query, min_corr)
    if len(hits):
        select_feature(str(hits["feature"].iloc[0]))


def _on_row(key: str, ids: tuple[str, ...]) -> None:
    """A clicked row of a table of features (search results, nearest features) opens its feature; ``ids`` are the
    table's feature ids in the order shown."""
    event = st.session_state.get(key)
    try:
        rows = list(event["selection"]["rows"])
    except (KeyError, TypeError):
        rows = []
    if rows and 0 <= int(rows[0]) < len(ids):
        select_feature(str(ids[int(rows[0])]))


def _pick(cat: Any, fid: str) -> None:
    """Search box, description-score filter, results table (rows clickable) and the feature selectbox."""
    labels = views.feature_labels(cat)
    left, right = st.columns([2, 3])
    query = left.text_input("Search features", key=QUERY, on_change=_on_query,
                            placeholder=f"id (f00042, 42), concept ({', '.join(views.example_concepts(cat)) or 'name'}) "
                                        "or description words",
                            help="A feature id or number, part of a concept name (ranked by test F1), or words that all "
                                 "occur in the description. Enter opens the first hit; click a result to open it.")
    query = (query or "").strip()
    min_corr = _min_corr(cat, left)
    if not query and min_corr is None:
        st.session_state[PICK_ALL] = fid
        right.selectbox("Feature", list(labels), key=PICK_ALL, format_func=lambda f: labels.get(f, f),
                        on_change=_on_pick, args=(PICK_ALL,))
        return
    if not query:
        _filtered(cat, fid, min_corr, right)
        return
    hits = _hits(cat, query, min_corr)
    if hits.empty:
        right.selectbox("Feature (search results)", [], key=PICK_HITS, placeholder="no match")
        st.info(f"No feature matches {query!r}.")
        return
    options = [str(f) for f in hits["feature"]]
    st.session_state[PICK_HITS] = fid if fid in options else None
    right.selectbox(f"Feature ({len(options)} search result{'s' if len(options) != 1 else ''})", options, key=PICK_HITS,
                    format_func=lambda f: labels.get(f, f), on_change=_on_pick, args=(PICK_HITS,),
                    placeholder="pick a result")
    key = f"_fb_hits_{zlib.crc32(f'{query}|{min_corr}'.encode()):08x}"  # a new search starts with no row selected
    with st.expander(f"Search results for {query!r} (click a row to open it)", expanded=True):
        st.dataframe(hits, hide_index=True, width="stretch", key=key,
                     on_select=functools.partial(_on_row, key, tuple(options)),
                     selection_mode="single-row",
                     column_config={"feature": st.column_config.TextColumn("feature", pinned=True),
                                    "test_f1": st.column_config.NumberColumn("test F1", format="%.3f"),
                                    "description": st.column_config.TextColumn("description", width="large"),
                                    **_score_config()})
        views.table_downloads(hits, name="search_results", key="_fb_dl_hits")


def _filtered(cat: Any, fid: str, min_corr: float, right: Any) -> None:
    """Without a query but with the description filter on: the features that pass it, as a selectbox and a table."""
    labels = views.feature_labels(cat)
    var = cat.features
    scores = _scores(cat)
    keep = scores[scores["description_corr"].to_numpy(dtype=np.float64) >= min_corr]
    keep = keep.sort_values("description_corr", ascending=False, kind="stable")
    options = [str(f) for f in keep.index]
    if not options:
        right.selectbox("Feature (filtered)", [], key=PICK_HITS, placeholder="no match")
        st.info(f"No feature's description reaches a held-out correlation of {min_corr:.2f}.")
        return
    st.session_state[PICK_HITS] = fid if fid in options else None
    right.selectbox(f"Feature ({len(options)} with description r ≥ {min_corr:.2f})", options, key=PICK_HITS,
                    format_func=lambda f: labels.get(f, f), on_change=_on_pick, args=(PICK_HITS,),
                    placeholder="pick a feature")
    import pandas as pd

    table = pd.DataFrame({"feature": options, "description": var.loc[keep.index, "description"].astype(str).to_numpy()})
    for col in keep.columns:
        table[col] = keep[col].to_numpy(dtype=np.float64)
    with st.expander(f"Features whose description predicts held-out activations (r ≥ {min_corr:.2f}): "
                     f"{len(options)} of {len(var)}", expanded=True):
        st.dataframe(table, hide_index=True, width="stretch", column_config=_score_config())
        views.table_downloads(table, name="features_by_description_score", key="_fb_dl_filtered")


def _header(cat: Any, fid: str, info: dict[str, Any]) -> None:
    """The feature's id, description, top concept (one Markdown block), activation profile and description score (one
    caption), and its figures (one HTML row)."""
    st.header(fid)
    desc = info.get("description")
    text = [f"**Description:** {views.md_escape(desc if not views.is_missing(desc) else 'none')}"]
    top = info.get("top_concept")
    if views.is_missing(top):
        text.append("**Top concept:** none (overlaps no labelled concept)")
    else:
        out = links.concept_links(str(top))
        text.append(f"**Top concept:** `{top}` — test F1 {views.fmt_num(info.get('top_f1'))}, precision "
                    f"{views.fmt_num(info.get('top_precision'))}, q {views.md_escape(views.fmt_q(info.get('top_q')))}, "
                    f"threshold {views.fmt_num(info.get('top_threshold'))} of its max"
                    + (f" ({links.md_links(out)})" if out else ""))
    st.markdown("\n\n".join(text))
    notes = []
    if not views.is_missing(info.get("profile")):
        notes.append(f"Activation profile: {views.md_escape(info['profile'])}")
    if "description_corr" in info or "description_detection" in info:
        if views.is_missing(info.get("description_detection")):
            notes.append("Description score: none (no description from the validation sequences, or no activation on "
                         "the test sequences).")
        else:
            notes.append(
                f"Description score on held-out sequences: predicted vs real activation r "
                f"{views.fmt_num(info.get('description_corr'), digits=2)} (Spearman "
                f"{views.fmt_num(info.get('description_spearman'), digits=2)}); detection balanced accuracy "
                f"{views.fmt_num(info.get('description_detection'), digits=2)}, F1 "
                f"{views.fmt_num(info.get('description_f1'), digits=2)}.")
    if notes:
        st.caption("  \n".join(notes))
    n_seq = cat.summary.get("n_sequences") or len(cat.sequences)
    u = views.units(cat)
    st.html(views.metrics_html([
        ("Density", views.fmt_pct(info.get("density"), digits=3), "Fraction of the analysed tokens it fires on"),
        ("Max activation", views.fmt_num(info.get("max_activation")), "In SAE units; examples are normalised by it"),
        (u.items.capitalize(), views.fmt_num(info.get("n_sequences")),
         f"{u.items.capitalize()} (of {views.fmt_num(n_seq)}) in which it fires at least once"),
        ("Test F1", views.fmt_num(info.get("top_f1")),
         "Of its top concept: precision x domain-level recall on the test half"),
        ("q-value", views.fmt_q(info.get("top_q")), "Benjamini-Hochberg q of the hypergeometric enrichment"),
        ("Family", str(info.get("family", "–")), "Leiden cluster of decoder directions"),
    ]))


def _histogram(cat: Any, fid: str) -> None:
    st.subheader("Activation histogram")
    values = views.feature_maxima(cat, fid)
    n_seq = int(cat.summary.get("n_sequences") or len(cat.sequences))
    u = views.units(cat)
    if len(values) == 0:
        st.info(f"The feature fires in no analysed {u.item}.")
        return
    counts, edges = np.histogram(values, bins=20, range=(0.0, 1.0))
    st.vega_lite_chart(views.histogram_spec(edges, counts, x_title=f"max per {u.item} / the feature's max",
                                            y_title=u.items, colour="#d62728"), width="stretch")
    st.caption(f"Fires in {len(values):,} of {n_seq:,} {u.items}; median of the per-{u.item} maxima "
               f"{float(np.median(values)):.2f}.")


_ASSOC_COLUMNS = ["concept", "test_f1", "test_precision", "test_recall", "test_domain_recall", "threshold", "q_value",
                  "val_f1"]
# Column labels and widths of the association table: it spans the page and its eight columns fit in 730 px, so nothing
# is cut off on the right (the token counts tp / n_active / n_labelled are in the downloads).
_ASSOC_CONFIG = {
    "concept": st.column_config.TextColumn("concept", width="medium", pinned=True),
    "test_f1": st.column_config.NumberColumn("test F1", format="%.3f", width="small"),
    "test_precision": st.column_config.NumberColumn("precision", format="%.3f", width="small"),
    "test_recall": st.column_config.NumberColumn("recall", format="%.3f", width="small",
                                                 help="Token-level recall on the test half"),
    "test_domain_recall": st.column_config.NumberColumn("dom. recall", format="%.3f", width="small",
                                                        help="Domain-level recall on the test half"),
    "threshold": st.column_config.NumberColumn("threshold", format="%.2f", width="small",
                                               help="Fraction of the feature's max, chosen on the validation half"),
    "q_value": st.column_config.TextColumn("q", width="small"),
    "val_f1": st.column_config.NumberColumn("val F1", format="%.3f", width="small"),
}


def _associations(cat: Any, fid: str, info: dict[str, Any]) -> None:
    st.subheader("Concept associations")
    pairs = info.get("concepts")
    if pairs is None:
        st.info("This catalog has no association table.")
        return
    if len(pairs) == 0:
        st.info("The feature overlaps no labelled concept.")
    else:
        cols = [c for c in _ASSOC_COLUMNS if c in pairs.columns]
        shown = pairs[cols].copy()
        if "q_value" in shown:
            shown["q_value"] = [views.fmt_q(q) for q in shown["q_value"]]
        st.dataframe(shown, hide_index=True, width="stretch", height=min(38 + 35 * len(pairs), 300),
                     column_config=_ASSOC_CONFIG)
        views.table_downloads(pairs, name=f"{fid}_associations", key="_fb_dl_assoc")
        st.caption("One row per concept at the pair's chosen threshold (fraction of the feature's max, picked on the "
                   "validation half); F1 = precision x domain-level recall on the test half. The downloads add the "
                   "token counts (tp, firing, labelled) and p-values.")
    top = info.get("top_concept")
    if views.is_missing(top):
        return
    own = pairs[pairs["concept"].astype(str) == str(top)] if pairs is not None and len(pairs) else None
    own_val = float(own["val_f1"].iloc[0]) if own is not None and len(own) and "val_f1" in own else float("nan")
    rows = [{"unit": fid, "set": "this feature", "test_f1": info.get("top_f1"), "val_f1": own_val,
             "threshold": info.get("top_threshold"), "q_value": info.get("top_q")}]
    for table, name in (("best_sae", "best SAE feature"), ("best_neurons", "best neuron"),
                        ("best_random", "best random-control feature")):
        if table not in cat.tables:
            continue
        best = cat.table(table)
        hit = best[best["concept"].astype(str) == str(top)]
        if len(hit):
            r = hit.iloc[0]
            rows.append({"unit": str(r.get("best_feature")), "set": name, "test_f1": r.get("test_f1"),
                         "val_f1": r.get("val_f1"), "threshold": r.get("threshold"), "q_value": r.get("q_value")})
    import pandas as pd

    st.markdown(f"**Controls for its top concept** `{top}`")
    controls = pd.DataFrame(rows)
    raw = controls.copy()
    controls["q_value"] = [views.fmt_q(q) for q in controls["q_value"]]
    st.dataframe(controls, hide_index=True, width="stretch",
                 column_config={"test_f1": st.column_config.NumberColumn("test F1", format="%.3f"),
                                "val_f1": st.column_config.NumberColumn("val F1", format="%.3f"),
                                "threshold": st.column_config.NumberColumn(format="%.2f"),
                                "q_value": st.column_config.TextColumn("q")})
    views.table_downloads(raw, name=f"{fid}_controls", key="_fb_dl_controls")
    missing = [n for t, n in (("best_neurons", "neurons"), ("best_random", "random-weight control")) if t not in cat.tables]
    if missing:
        st.caption(f"Not run for this catalog: {', '.join(missing)}. Best units are chosen on validation F1.")
    else:
        st.caption("Best units are chosen on validation F1 (neurons = the model's raw dimensions; random control = an SAE "
                   "trained on a random-weight copy of the model).")


def _image_examples(cat: Any, fid: str) -> None:
    """Image catalogs: each example as its image with the feature's activation map laid over it."""
    if not images.cached_examples(cat, fid):
        st.info("No examples: the feature never fires on the analysed images.")
        return
    left, right = st.columns([3, 1])
    left.caption("Each image plain, then with the feature's activation map: every cell of the layer's grid covers its "
                 "own block of pixels, coloured by its activation as a fraction of the feature's max (brighter and "
                 "more opaque = stronger). More in the Images page.")
    images.alpha_slider(right)
    images.show_example_grid(cat, fid, bins_note="bins of the per-image maxima, highest bin first")


def _examples(cat: Any, fid: str) -> None:
    st.subheader("Examples")
    if images.is_image_catalog(cat):
        _image_examples(cat, fid)
        return
    has_imgt = "imgt" in cat.sequences.columns
    align = has_imgt and st.toggle("Align on IMGT positions", value=True, key=ALIGN,
                                   help="Columns = IMGT positions (insertions share their position's column); CDRs marked")
    rows = views.example_rows(cat, fid, use_imgt=has_imgt)
    if not rows:
        st.info("No examples: the feature never fires on the analysed sequences.")
        return
    top = [r for r in rows if r.extra.get("kind") == "top"]
    rest = sorted((r for r in rows if r.extra.get("kind") != "top"), key=lambda r: images.bin_start(r.extra.get("kind", "")),
                  reverse=True)
    # one HTML block for the legend, the top examples and the quantile samples: each element costs the browser a
    # separate mount (bench_app), so the residue views are drawn together
    parts = [views.legend_html(), f"<p><b>Top-activating sequences</b> ({len(top)})</p>",
             views.examples_html(top, align=bool(align))]
    if rest:
        parts += [f"<p><b>Sequences from the activation quantiles</b> ({len(rest)}: bins of the per-sequence maxima over "
                  "the sequences it fires in, highest bin first)</p>", views.examples_html(rest, align=bool(align))]
    st.html("".join(parts))
    _sequence_links(cat, [r.extra["sequence_id"] for r in top])


def _sequence_links(cat: Any, sequence_ids: list[str]) -> None:
    """Links of the top sequences to public databases (Thera-SAbDab, UniProt), where the catalog has identifiers."""
    obs = cat.sequences
    thera = links.is_therasabdab(obs)
    lines = []
    for sid in dict.fromkeys(sequence_ids):
        row = obs.loc[sid] if sid in obs.index else None
        found = links.sequence_links(sid, row, therasabdab=thera)
        if found:
            lines.append(f"- {views.md_escape(sid)}: {links.md_links(found)}")
    if lines:
        with st.expander(f"Top sequences in public databases ({len(lines)})"):
            st.markdown("\n".join(lines))


def _logo(cat: Any, fid: str) -> None:
    """Sequence logo of the feature's top windows (IMGT columns when the catalog numbers its sequences)."""
    st.subheader("Sequence logo")
    if images.is_image_catalog(cat):
        st.caption("Image catalog: no sequence logo.")
        return
    logos.show_logo(cat, [fid], lead="Top {n} windows of " + fid, empty="No top examples to draw a logo from.")


def _probe(cat: Any, fid: str, info: dict[str, Any]) -> None:
    import pandas as pd

    st.subheader("Probe weight")
    target, weight = info.get("probe_target"), info.get("probe_weight")
    if views.is_missing(target) and views.is_missing(weight) and "probe_weights" not in cat.tables:
        st.info("No probes were fitted for this catalog.")
        return
    if not views.is_missing(target):
        st.markdown(f"Largest standardised weight of this feature in a dense probe: **{views.fmt_num(weight)}** for "
                    f"`{target}`")
    if "probe_weights" in cat.tables:
        rows = _probe_rows(cat, int(info["index"]))
        if len(rows):
            st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", height=min(36 + 35 * len(rows), 250),
                         column_config={"weight": st.column_config.NumberColumn(format="%.3f")})
            views.table_downloads(pd.DataFrame(rows), name=f"{fid}_probe_weights", key="_fb_dl_probe")
        elif views.is_missing(target):
            st.caption("Not among the top weights of any probe.")


def _probe_rows(cat: Any, j: int) -> list[dict[str, Any]]:
    @st.cache_data(show_spinner=False, max_entries=512)
    def _rows(path: str, j: int, _cat: Any) -> list[dict[str, Any]]:
        w = _cat.table("probe_weights")
        if not {"dim", "weight"} <= set(w.columns):
            return []
        mask = w["dim"].to_numpy() == j
        if "representation" in w.columns:
            mask &= (w["representation"].astype(str) == "sae").to_numpy()
        hit = w[mask]
        order = np.argsort(-np.abs(hit["weight"].to_numpy(dtype=np.float64)), kind="stable")
        cols = [c for c in ("target", "class", "weight") if c in hit.columns]
        return [{c: (str(v) if c != "weight" else float(v)) for c, v in zip(cols, row)}
                for row in hit.iloc[order][cols].itertuples(index=False)]

    return _rows(str(cat.path), j, cat)


def _causal(cat: Any, fid: str, info: dict[str, Any]) -> None:
    import pandas as pd

    st.subheader("Causal effect")
    keys = ["causal_kl_firing", "causal_kl_other", "causal_kl_ratio", "causal_dlogp_firing", "causal_dlogp_other"]
    values = {k: info.get(k) for k in keys}
    if all(views.is_missing(v) for v in values.values()):
        n = int(cat.features["causal_kl_ratio"].notna().sum()) if "causal_kl_ratio" in cat.features else 0
        st.info("Not measured for this feature" + (f" (causal checks ran on {n} features)." if n else "."))
        return
    c = st.columns(3)
    c[0].metric("KL on firing tokens", views.fmt_num(values["causal_kl_firing"]),
                help="Mean KL divergence of the model's output when the feature is ablated, on tokens where it fires")
    c[1].metric("KL elsewhere", views.fmt_num(values["causal_kl_other"]))
    c[2].metric("Ratio", views.fmt_num(values["causal_kl_ratio"]))
    c = st.columns(3)
    c[0].metric("Δ log p (firing)", views.fmt_num(values["causal_dlogp_firing"]),
                help="Change of the log-probability of the true residue when ablated")
    c[1].metric("Δ log p (elsewhere)", views.fmt_num(values["causal_dlogp_other"]))
    if "causal" in cat.tables:
        table = cat.table("causal")
        row = table[table["feature"].astype(str) == fid] if "feature" in table.columns else table.iloc[:0]
        if len(row):
            st.dataframe(pd.DataFrame(row), hide_index=True, width="stretch")
            views.table_downloads(pd.DataFrame(row), name=f"{fid}_causal", key="_fb_dl_causal")


def _neighbors(cat: Any, fid: str) -> None:
    """The ten features with the most similar decoder directions; clicking a row opens that feature (one table, not a
    button per neighbour: fewer elements for the browser to redraw on every switch)."""
    st.subheader("Nearest features by decoder direction")
    nb = views.cached_neighbors(cat, fid, k=10)
    if nb.empty:
        st.info("No other features.")
        return
    st.caption("Click a row to open that feature.")
    key = f"_fb_nb_{fid}"  # a new feature starts with no row selected
    st.dataframe(nb, hide_index=True, width="stretch", key=key,
                 on_select=functools.partial(_on_row, key, tuple(str(f) for f in nb["feature"])),
                 selection_mode="single-row",
                 column_config={"feature": st.column_config.TextColumn("feature", pinned=True),
                                "cosine": st.column_config.NumberColumn(format="%.3f"),
                                "description": st.column_config.TextColumn("description", width="large")})
    views.table_downloads(nb, name=f"{fid}_neighbours", key="_fb_dl_nb")


def _open_compare(fid: str) -> None:
    """Go to the Compare features page with ``fid`` as feature A (a note when the page runs outside the app)."""
    from streamlit.errors import StreamlitAPIException

    st.session_state["compare_a"] = fid
    try:
        st.switch_page(COMPARE_PAGE, query_params={"a": fid})
    except StreamlitAPIException:
        st.info(f"Open the Compare features page to compare {fid} with another feature.")


def main() -> None:
    st.title("Feature browser")
    cat = get_catalog()
    fid = _current_feature(cat)
    _pick(cat, fid)
    info = views.cached_feature(cat, fid)
    _header(cat, fid, info)
    if st.button(f"Compare {fid} with another feature", key="_fb_compare", icon=":material/compare_arrows:"):
        _open_compare(fid)
    left, right = st.columns([2, 3])
    with left:
        _histogram(cat, fid)
    with right:
        _logo(cat, fid)
    _associations(cat, fid, info)
    _examples(cat, fid)
    left, right = st.columns(2)
    with left:
        _probe(cat, fid, info)
    with right:
        _causal(cat, fid, info)
    _neighbors(cat, fid)


try:
    main()
except WorkbenchError as exc:
    st.error(str(exc))
