"""Compare features: two features side by side, on the same sequences.

Feature A is a new ``?a=`` query parameter, else the one the feature browser sent (``st.session_state["compare_a"]``
or the feature shown there), else the first live feature; feature B is ``?b=``, else A's nearest feature by decoder
direction. The page shows, for both:

- their descriptions, top concepts, statistics and decoder cosine;
- their firing sets over the catalog's sequences (per-sequence maxima, the catalog's ``X``): sequences where each
  fires, where both fire, Jaccard index, correlation of the maxima, and a scatter of one against the other;
- the overlap of their top examples (:meth:`Catalog.examples_frame`);
- their per-residue activations on the same sequences (the top sequences of both): computed with the catalog's
  model and SAE (:meth:`Catalog.encode_sparse`, as the Live input page) when they are on this machine, else
  taken from the stored examples where a sequence is an example of the feature;
- their concept associations side by side (the association table through :meth:`Catalog.feature`).

Every table downloads as CSV / Parquet.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from apps.workbench_app import _views as views
from apps.workbench_app._state import get_catalog
from workbench.errors import WorkbenchError

A_KEY, B_KEY = "_cmp_a", "_cmp_b"
SEEN = "_cmp_qp_seen"
N_TRACK = 3  # top sequences of each feature drawn with both features' per-residue activations


def _default_a(cat: Any) -> str:
    var = cat.features
    live = np.flatnonzero(var["density"].to_numpy() > 0) if "density" in var else np.zeros(0, dtype=int)
    return str(var.index[int(live[0]) if len(live) else 0])


def _default_b(cat: Any, a: str) -> str:
    nb = views.cached_neighbors(cat, a, k=1)
    if len(nb):
        return str(nb["feature"].iloc[0])
    ids = [str(i) for i in cat.features.index]
    return ids[1] if len(ids) > 1 and ids[0] == a else ids[0]


def _current(cat: Any) -> tuple[str, str]:
    """Features A and B (see the module docstring); unknown ids in the address give a warning."""
    ss = st.session_state
    qp = (st.query_params.get("a"), st.query_params.get("b"))
    chosen: list[str | None] = [ss.get(A_KEY), ss.get(B_KEY)]
    if qp != ss.get(SEEN):
        ss[SEEN] = qp
        for i, value in enumerate(qp):
            if value is None or not str(value).strip():
                continue
            fid = views.resolve_feature(cat, value)
            if fid is None:
                st.warning(f"No feature {value!r} in this catalog; showing another feature instead.")
            else:
                chosen[i] = fid
    sent = views.resolve_feature(cat, ss.pop("compare_a", None))
    if sent is not None and qp[0] is None:
        chosen[0] = sent
    a = views.resolve_feature(cat, chosen[0]) or views.resolve_feature(cat, ss.get("feature")) or _default_a(cat)
    b = views.resolve_feature(cat, chosen[1]) or _default_b(cat, a)
    ss[A_KEY], ss[B_KEY] = a, b
    if st.query_params.get("a") != a or st.query_params.get("b") != b:
        st.query_params["a"], st.query_params["b"] = a, b
    ss[SEEN] = (a, b)
    return a, b


def _pickers(cat: Any, a: str, b: str) -> None:
    labels = views.feature_labels(cat)
    left, right = st.columns(2)
    left.selectbox("Feature A", list(labels), key=A_KEY, format_func=lambda f: labels.get(f, f))
    right.selectbox("Feature B", list(labels), key=B_KEY, format_func=lambda f: labels.get(f, f))


def _summary(cat: Any, fid: str, tag: str, where: Any) -> None:
    info = views.cached_feature(cat, fid)
    with where:
        st.subheader(f"{tag}: {fid}")
        desc = info.get("description")
        st.markdown(f"**Description:** {views.md_escape(desc if not views.is_missing(desc) else 'none')}")
        top = info.get("top_concept")
        st.markdown("**Top concept:** " + ("none" if views.is_missing(top) else
                                           f"`{top}` (test F1 {views.fmt_num(info.get('top_f1'))})"))
        c = st.columns(3)
        c[0].metric("Density", views.fmt_pct(info.get("density"), digits=3))
        c[1].metric("Sequences", views.fmt_num(info.get("n_sequences")))
        c[2].metric("Family", str(info.get("family", "–")))
        if st.button(f"Open {fid} in the feature browser", key=f"_cmp_open_{tag}", icon=":material/open_in_new:"):
            views.open_feature(fid)


def _maxima(cat: Any, fid: str) -> np.ndarray:
    """The feature's per-sequence maxima over every catalog sequence (0 where it does not fire)."""
    j = int(cat.features.index.get_loc(fid))
    m = views.obs_matrix(cat, "X")
    if isinstance(m, np.ndarray):
        return np.asarray(m[:, j], dtype=np.float64)
    return np.asarray(m[:, j].toarray(), dtype=np.float64).ravel()


def _cosine(cat: Any, a: str, b: str) -> float:
    dec = cat.decoder
    i, j = int(cat.features.index.get_loc(a)), int(cat.features.index.get_loc(b))
    den = float(np.linalg.norm(dec[i]) * np.linalg.norm(dec[j]))
    return float(dec[i] @ dec[j] / den) if den > 0 else float("nan")


def firing_overlap(xa: np.ndarray, xb: np.ndarray) -> dict[str, float]:
    """Sequences where A fires, B fires, both fire, their Jaccard index and the Pearson correlation of the
    per-sequence maxima over the sequences where either fires."""
    fa, fb = xa > 0, xb > 0
    both, either = int((fa & fb).sum()), int((fa | fb).sum())
    r = float("nan")
    if either > 2:
        sa, sb = xa[fa | fb], xb[fa | fb]
        if sa.std() > 0 and sb.std() > 0:
            r = float(np.corrcoef(sa, sb)[0, 1])
    return {"a": int(fa.sum()), "b": int(fb.sum()), "both": both,
            "jaccard": both / either if either else float("nan"), "r": r}


def _firing(cat: Any, a: str, b: str) -> None:
    import altair as alt

    st.subheader("Firing sets over the catalog's sequences")
    xa, xb = _maxima(cat, a), _maxima(cat, b)
    o = firing_overlap(xa, xb)
    c = st.columns(5)
    c[0].metric(f"A ({a}) fires in", f"{o['a']:,}", help="Sequences where the feature fires at least once")
    c[1].metric(f"B ({b}) fires in", f"{o['b']:,}")
    c[2].metric("Both fire in", f"{o['both']:,}")
    c[3].metric("Jaccard", views.fmt_num(o["jaccard"], digits=2), help="Both / either, over sequences")
    c[4].metric("r of the maxima", views.fmt_num(o["r"], digits=2),
                help="Pearson correlation of the per-sequence maxima over sequences where either fires")
    keep = (xa > 0) | (xb > 0)
    frame = pd.DataFrame({"sequence_id": cat.sequences.index.astype(str)[keep], "A": xa[keep], "B": xb[keep]})
    if len(frame):
        chart = alt.Chart(frame).mark_circle(size=22, opacity=0.5, color="#d62728").encode(
            x=alt.X("A:Q", title=f"max activation of A ({a})", scale=alt.Scale(domain=[0, 1])),
            y=alt.Y("B:Q", title=f"max activation of B ({b})", scale=alt.Scale(domain=[0, 1])),
            tooltip=["sequence_id:N", alt.Tooltip("A:Q", format=".2f"), alt.Tooltip("B:Q", format=".2f")],
        ).properties(height=280)
        st.altair_chart(chart, width="stretch")
        st.caption("One point per sequence where either fires: the features' maxima in it (fractions of their maxima).")
        views.table_downloads(frame, name=f"{a}_{b}_maxima", key="_cmp_dl_maxima")


def _top_overlap(cat: Any, a: str, b: str) -> list[str]:
    """Table of the two features' top examples; returns the sequences to draw (top of A, then of B)."""
    st.subheader("Top examples")
    ea, eb = cat.examples_frame(a), cat.examples_frame(b)
    ta = ea[ea["kind"] == "top"]
    tb = eb[eb["kind"] == "top"]
    sa, sb = list(dict.fromkeys(ta["sequence_id"].astype(str))), list(dict.fromkeys(tb["sequence_id"].astype(str)))
    shared = [s for s in sa if s in set(sb)]
    union = list(dict.fromkeys(sa + sb))
    jac = len(shared) / len(union) if union else float("nan")
    st.markdown(f"**{len(shared)}** of their top sequences are shared (A {len(sa)}, B {len(sb)}; Jaccard "
                f"{views.fmt_num(jac, digits=2)}).")
    xa, xb = _maxima(cat, a), _maxima(cat, b)
    pos = {s: i for i, s in enumerate(cat.sequences.index.astype(str))}
    rows = [{"sequence_id": s, "top of A": s in sa, "top of B": s in sb,
             "rank in A": sa.index(s) + 1 if s in sa else None, "rank in B": sb.index(s) + 1 if s in sb else None,
             "max A": float(xa[pos[s]]) if s in pos else float("nan"),
             "max B": float(xb[pos[s]]) if s in pos else float("nan")} for s in union]
    table = pd.DataFrame(rows)
    if len(table):
        table = table.astype({"rank in A": "Int64", "rank in B": "Int64"})  # blank, not "None", where not a top example
        st.dataframe(table, hide_index=True, width="stretch",
                     column_config={"max A": st.column_config.NumberColumn(f"max A ({a})", format="%.2f"),
                                    "max B": st.column_config.NumberColumn(f"max B ({b})", format="%.2f")})
        views.table_downloads(table, name=f"{a}_{b}_top_examples", key="_cmp_dl_top")
    return list(dict.fromkeys(sa[:N_TRACK] + sb[:N_TRACK]))


def _tracks_from_model(cat: Any, a: str, b: str, sids: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
    """Per-residue activations of A and B on ``sids`` by the catalog's model and SAE (None when they are not here).
    Cached per catalog, features and sequences."""
    from apps.workbench_app import _live

    model_source, sae_path, problem = _live.live_sources(cat.provenance)
    if problem is not None or not model_source or not sae_path:
        return None

    @st.cache_data(show_spinner="Running the model and the SAE on the top sequences ...", max_entries=64)
    def _run(path: str, a: str, b: str, sids: tuple[str, ...], _cat: Any) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        adapter = _live.load_model(model_source)
        sae = _live.load_sae_cached(sae_path)
        seqs = _cat.sequences["sequence"]
        result = _cat.encode_sparse([(s, str(seqs.loc[s])) for s in sids], adapter=adapter, sae=sae)
        return {s: (_live.feature_track(result, a, s), _live.feature_track(result, b, s)) for s in result.ids}

    return _run(str(cat.path), a, b, tuple(sids), cat)


def _tracks_from_examples(cat: Any, a: str, b: str, sids: list[str]) -> dict[str, tuple[Any, Any]]:
    """Per-residue activations of A and B from the stored examples (None where the sequence is not an example)."""
    found: dict[str, list[Any]] = {s: [None, None] for s in sids}
    for k, fid in enumerate((a, b)):
        for ex in views.cached_feature(cat, fid)["examples"]:
            if ex.sequence_id in found and found[ex.sequence_id][k] is None:
                found[ex.sequence_id][k] = np.asarray(ex.activations, dtype=np.float64)
    return {s: (v[0], v[1]) for s, v in found.items()}


def _same_sequences(cat: Any, a: str, b: str, sids: list[str]) -> None:
    st.subheader("Activations on the same sequences")
    if not sids:
        st.info("Neither feature has top examples.")
        return
    tracks = None
    if st.toggle("Compute with the catalog's model", value=True, key="_cmp_model",
                 help="Runs the model and the SAE on these sequences (as the Live input page); off: the stored "
                      "examples only, where a sequence is an example of the feature"):
        try:
            tracks = _tracks_from_model(cat, a, b, sids)
        except WorkbenchError as exc:
            st.caption(f"The model could not run ({str(exc).strip().splitlines()[0]}); stored examples instead.")
    source = "the catalog's model and SAE"
    if tracks is None:
        tracks = _tracks_from_examples(cat, a, b, sids)
        source = "the stored examples (a dash row: not an example of that feature)"
    sep = str(cat.provenance.get("sequence_separator") or "")
    obs = cat.sequences
    has_imgt = "imgt" in obs.columns
    rows = []
    for sid in sids:
        tokens = views.tokens_of(str(obs.at[sid, "sequence"]), sep)
        positions = views.parse_positions(obs.at[sid, "imgt"], len(tokens)) if has_imgt else None
        for tag, fid, track in (("A", a, tracks.get(sid, (None, None))[0]), ("B", b, tracks.get(sid, (None, None))[1])):
            acts = np.zeros(len(tokens)) if track is None else np.asarray(track, dtype=np.float64)
            note = f"{tag} {fid} · " + ("not an example" if track is None else f"max {float(acts.max()):.2f}")
            rows.append(views.ResidueRow(label=sid, tokens=tokens, activations=acts, positions=positions, note=note))
    st.html(views.legend_html() + views.examples_html(rows, align=has_imgt))
    st.caption(f"The top {N_TRACK} sequences of each feature, two rows each (A above B), from {source}.")


def _associations(cat: Any, a: str, b: str) -> None:
    st.subheader("Concept associations side by side")
    pa, pb = views.cached_feature(cat, a)["concepts"], views.cached_feature(cat, b)["concepts"]
    if pa is None or pb is None:
        st.info("This catalog has no association table.")
        return
    cols = [c for c in ("concept", "test_f1", "test_precision", "test_recall", "q_value") if c in pa.columns]
    left = pa[cols].astype({"concept": str}).set_index("concept").add_suffix(" A")
    right = pb[cols].astype({"concept": str}).set_index("concept").add_suffix(" B")
    table = left.join(right, how="outer")
    table["best"] = table[["test_f1 A", "test_f1 B"]].max(axis=1)
    table = table.sort_values("best", ascending=False, kind="stable").drop(columns="best").reset_index()
    if table.empty:
        st.info("Neither feature overlaps a labelled concept.")
        return
    both = int((table["test_f1 A"].notna() & table["test_f1 B"].notna()).sum())
    st.caption(f"{len(table)} concepts among the best {len(pa)} of A ({a}) and {len(pb)} of B ({b}); {both} in both "
               "lists. Each pair at its own threshold; F1 on the test half.")
    shown = table.copy()
    for col in ("q_value A", "q_value B"):
        if col in shown:
            shown[col] = [views.fmt_q(q) for q in shown[col]]
    config = {"concept": st.column_config.TextColumn("concept", pinned=True)}
    for tag, fid in (("A", a), ("B", b)):
        config[f"test_f1 {tag}"] = st.column_config.NumberColumn(f"F1 {tag} ({fid})", format="%.3f")
        config[f"test_precision {tag}"] = st.column_config.NumberColumn(f"precision {tag}", format="%.3f")
        config[f"test_recall {tag}"] = st.column_config.NumberColumn(f"recall {tag}", format="%.3f")
        config[f"q_value {tag}"] = st.column_config.TextColumn(f"q {tag}")
    st.dataframe(shown, hide_index=True, width="stretch", column_config=config, key="_cmp_assoc")
    views.table_downloads(table, name=f"{a}_{b}_associations", key="_cmp_dl_assoc")


def main() -> None:
    st.title("Compare features")
    cat = get_catalog()
    a, b = _current(cat)
    _pickers(cat, a, b)
    if a == b:
        st.info("Pick two different features.")
    left, right = st.columns(2)
    _summary(cat, a, "A", left)
    _summary(cat, b, "B", right)
    st.caption(f"Decoder cosine of A and B: **{views.fmt_num(_cosine(cat, a, b), digits=3)}** (1 = the same "
               "direction written into the model).")
    _firing(cat, a, b)
    sids = _top_overlap(cat, a, b)
    from apps.workbench_app._images import is_image_catalog

    if is_image_catalog(cat):
        st.caption("Image catalog: per-residue activations do not apply (the Images page shows activation maps).")
    else:
        _same_sequences(cat, a, b, sids)
    _associations(cat, a, b)


try:
    main()
except WorkbenchError as exc:
    st.error(str(exc))
