"""Shared helpers of discovery and the candidate missing annotations (:func:`missing_annotations`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench.associate import FeatureMatrix
from workbench.concepts import ConceptLabels
from workbench.errors import InputError, WorkbenchError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from workbench.associate import Association


# ------------------------------------------------------------------------------------------------------ helpers


def _check_tokens(features: FeatureMatrix, labels: ConceptLabels | None, obs: pd.DataFrame) -> None:
    n = features.values.shape[0]
    if len(obs) != n or (labels is not None and labels.n_tokens != n):
        sizes = f"features {n}, obs {len(obs)}" + (f", labels {labels.n_tokens}" if labels is not None else "")
        raise WorkbenchError(f"token counts differ ({sizes}): they come from different stores")
    missing = [c for c in ("sequence_id", "position") if c not in obs.columns]
    if missing:
        raise InputError(f"obs lacks the column(s) {missing}; pass store.obs() (sequence_id, position, ...)")


def _token_sequence(obs: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Index of every token's sequence (in order of first appearance) and the sequence ids."""
    import pandas as pd

    codes, uniques = pd.factorize(obs["sequence_id"].astype(str), sort=False)
    return codes.astype(np.int64), np.asarray(uniques, dtype=object)


def _feature_index(features: FeatureMatrix, names: Sequence[str]) -> np.ndarray:
    index = {n: i for i, n in enumerate(features.names)}
    unknown = [n for n in dict.fromkeys(names) if n not in index]
    if unknown:
        raise WorkbenchError(
            f"the association names features {unknown[:3]} that this feature matrix does not have: they come from"
            " another SAE or feature set"
        )
    return np.array([index[n] for n in names], dtype=np.int64)


def _column_entries(csc: Any, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Concatenated non-zeros of columns ``cols`` (repeats allowed) of a CSC matrix: ``(which, rows, values)``."""
    starts = csc.indptr[cols]
    lengths = csc.indptr[cols + 1] - starts
    total = int(lengths.sum())
    which = np.repeat(np.arange(len(cols)), lengths)
    idx = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(total)
    return which, csc.indices[idx].astype(np.int64), csc.data[idx]


def _lookup(matrix: Any, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``matrix[rows[i], cols[i]]`` for arrays of coordinates, as a flat array (empty-safe)."""
    if len(rows) == 0:
        return np.zeros(0, dtype=matrix.dtype)
    return np.asarray(matrix[rows, cols]).ravel()


def _group_of(concepts: Sequence[str]) -> np.ndarray:
    return np.array([c.split("=", 1)[0] if "=" in c else "" for c in concepts], dtype=object)


def _in_scope(labels: ConceptLabels, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Whether token ``rows[i]`` lies in the scope of token concept ``cols[i]`` (True for unscoped concepts)."""
    masks, index = labels.scope_matrix("token")
    out = np.ones(len(rows), dtype=bool)
    if masks is None or len(rows) == 0:
        return out
    k = index[cols]
    scoped = k >= 0
    out[scoped] = masks[rows[scoped], k[scoped]]
    return out


def _scope_weights(labels: ConceptLabels, weights: Any, cols: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
    """For token concepts ``cols``: the weight of each row of ``weights`` (rows x tokens) inside each concept's scope
    (rows x cols; None when none of them is scoped) and the number of tokens in each scope (all tokens if unscoped).
    One weighted count per scope serves every concept."""
    import scipy.sparse as sp

    masks, index = labels.scope_matrix("token")
    n_tokens = labels.n_tokens
    k = index[cols]
    size = np.full(len(cols), n_tokens, dtype=np.float64)
    if masks is None or not (k >= 0).any():
        return None, size
    scoped = k >= 0
    size[scoped] = masks.sum(0)[k[scoped]]
    coo = sp.coo_matrix(weights)
    used = np.unique(k[scoped])
    per_scope = np.zeros((coo.shape[0], masks.shape[1]))  # rows x n_scopes
    for u in used:  # a few scopes: one weighted count each over the non-zeros of ``weights``
        per_scope[:, u] = np.bincount(coo.row, weights=coo.data * masks[coo.col, u], minlength=coo.shape[0])
    total = np.asarray(weights.sum(1), dtype=np.float64).reshape(-1, 1)
    inside = np.repeat(total, len(cols), axis=1)
    inside[:, scoped] = per_scope[:, k[scoped]]
    return inside, size


def _concept_features(association: Association, concepts: Sequence[str], *, min_test_f1: float, max_q: float,
                      features_per_concept: int) -> pd.DataFrame:
    """Each concept's reliable features: test F1 and q-value over the bars, the best ``features_per_concept`` by
    validation F1 (ties by test F1, then name)."""
    pairs = association.pairs
    sel = pairs[(pairs["test_f1"] >= min_test_f1) & (pairs["q_value"] <= max_q) & pairs["concept"].isin(set(concepts))]
    sel = sel.sort_values(["concept", "val_f1", "test_f1", "feature"], ascending=[True, False, False, True], kind="stable")
    return sel.groupby("concept", sort=False).head(max(0, int(features_per_concept))).reset_index(drop=True)


# ------------------------------------------------------------------------------------------- missing annotations


def whole_sequence_concepts(labels: ConceptLabels, seq: np.ndarray) -> np.ndarray:
    """Per token concept: True when it labels whole sequences, every token of a sequence or none (a label given per
    image or per sequence and broadcast to its tokens); ``seq`` is every token's sequence index."""
    import scipy.sparse as sp

    n_tok = labels.tokens.shape[0]
    if n_tok == 0:
        return np.zeros(labels.tokens.shape[1], dtype=bool)
    n_seq = int(seq.max()) + 1
    member = sp.csr_matrix((np.ones(n_tok, dtype=np.int64), (seq, np.arange(n_tok))), shape=(n_seq, n_tok))
    counts = (member @ labels.tokens.tocsc().astype(np.int64)).toarray()
    length = np.bincount(seq, minlength=n_seq)[:, None]
    return ((counts == 0) | (counts == length)).all(0) & (counts.sum(0) > 0)


def _candidate_spans(features: FeatureMatrix, labels: ConceptLabels, obs: pd.DataFrame, chosen: pd.DataFrame) -> pd.DataFrame:
    """All candidate spans (unranked) with the store rows they cover (``row_start``, ``row_end``). For a concept
    given per whole sequence (:func:`whole_sequence_concepts`) a sequence's candidate tokens form one span, whether
    or not they are neighbours: the label belongs to the sequence, not to a stretch of it."""
    import pandas as pd

    concept_names = labels.token_concepts["concept"].tolist()
    concept_col = {c: j for j, c in enumerate(concept_names)}
    empty = pd.DataFrame({c: pd.Series(dtype=t) for c, t in [
        ("concept", object), ("feature", object), ("sequence_id", object), ("start", np.int64), ("end", np.int64),
        ("n_tokens", np.int64), ("score", np.float64), ("max_activation", np.float64), ("feature_precision", np.float64),
        ("feature_test_f1", np.float64), ("q_value", np.float64), ("adjacent", bool), ("in_scope", bool),
        ("whole_sequence", bool), ("row_start", np.int64), ("row_end", np.int64)]})
    if chosen.empty:
        return empty
    feat = _feature_index(features, chosen["feature"].tolist())
    conc = chosen["concept"].map(concept_col).to_numpy(dtype=np.int64)
    thresholds = chosen["threshold"].to_numpy(dtype=np.float64)
    precision = chosen["test_precision"].to_numpy(dtype=np.float64)

    # Every (pair, token) where the pair's feature is above the pair's threshold: only the needed columns, as CSC.
    uniq, local = np.unique(feat, return_inverse=True)
    sub = features.values.tocsr()[:, uniq].tocsc()
    sub.sort_indices()
    pair, rows, act = _column_entries(sub, local)
    act = act.astype(np.float64)
    above = act > thresholds[pair]
    pair, rows, act = pair[above], rows[above], act[above]
    lab = labels.tokens.tocsr()
    unlabelled = ~_lookup(lab, rows, conc[pair]).astype(bool)
    pair, rows, act = pair[unlabelled], rows[unlabelled], act[unlabelled]
    if len(rows) == 0:
        return empty
    score = act * precision[pair]
    c_of = conc[pair]

    # One entry per (concept, token): the pair with the best score there.
    order = np.lexsort((-score, rows, c_of))
    pair, rows, act, score, c_of = pair[order], rows[order], act[order], score[order], c_of[order]
    first = np.r_[True, (rows[1:] != rows[:-1]) | (c_of[1:] != c_of[:-1])]
    pair, rows, act, score, c_of = pair[first], rows[first], act[first], score[first], c_of[first]

    # Consecutive tokens of one sequence (and one concept) form a span; a span is wholly in or out of the concept's
    # scope (it splits where the scope starts or ends).
    seq, _ = _token_sequence(obs)
    pos = obs["position"].to_numpy(dtype=np.int64)
    inside = _in_scope(labels, rows, c_of)
    whole = whole_sequence_concepts(labels, seq)[c_of]
    apart = (rows[1:] != rows[:-1] + 1) | (pos[rows[1:]] != pos[rows[:-1]] + 1)
    new = np.r_[True, (c_of[1:] != c_of[:-1]) | (apart & ~whole[1:])
                | (seq[rows[1:]] != seq[rows[:-1]]) | (inside[1:] != inside[:-1])]
    span = np.cumsum(new) - 1
    starts = np.flatnonzero(new)
    ends = np.r_[starts[1:], len(rows)] - 1
    best = np.lexsort((-score, span))
    best = best[np.r_[True, span[best][1:] != span[best][:-1]]]  # highest-scoring entry of each span

    row_start, row_end, c_span = rows[starts], rows[ends], c_of[starts]
    n_tokens = len(pos)
    seq_start = seq[row_start]
    before = np.clip(row_start - 1, 0, n_tokens - 1)
    after = np.clip(row_end + 1, 0, n_tokens - 1)
    adj_before = (row_start > 0) & (seq[before] == seq_start) & _lookup(lab, before, c_span).astype(bool)
    adj_after = (row_end < n_tokens - 1) & (seq[after] == seq_start) & _lookup(lab, after, c_span).astype(bool)
    p_best = pair[best]
    return pd.DataFrame({
        "concept": np.asarray(concept_names, dtype=object)[c_span],
        "feature": chosen["feature"].to_numpy(dtype=object)[p_best],
        "sequence_id": obs["sequence_id"].astype(str).to_numpy()[row_start],
        "start": pos[row_start], "end": pos[row_end], "n_tokens": (ends - starts + 1).astype(np.int64),
        "score": score[best], "max_activation": act[best], "feature_precision": precision[p_best],
        "feature_test_f1": chosen["test_f1"].to_numpy(dtype=np.float64)[p_best],
        "q_value": chosen["q_value"].to_numpy(dtype=np.float64)[p_best],
        "adjacent": (adj_before | adj_after) & ~whole[starts], "in_scope": inside[starts],
        "whole_sequence": whole[starts], "row_start": row_start, "row_end": row_end,
    })


_KIND_ORDER = {"silent": 0, "conflict": 1, "boundary": 2, "numbering artefact": 3}
_STRATIFIED_ORDER = {"survives": 0, "not testable": 1}  # every other status after these


def _numbering_artefacts(labels: ConceptLabels, spans: pd.DataFrame, obs: pd.DataFrame, group: str) -> np.ndarray:
    """Spans at the edge of a sequence's numbering: touching its first or last numbered token, lying before or
    after the numbered stretch, or touching an unnumbered token inside it (a gap in the numbering). A token is
    numbered when it carries a concept of ``group`` (``imgt``); sequences without numbering have no artefacts."""
    names = labels.token_concepts["concept"].astype(str)
    cols = np.flatnonzero(names.str.startswith(group + "=").to_numpy())
    out = np.zeros(len(spans), dtype=bool)
    if len(cols) == 0 or len(spans) == 0:
        return out
    numbered = np.asarray(labels.tokens[:, cols].sum(1)).ravel() > 0
    seq, seq_ids = _token_sequence(obs)
    rows = np.flatnonzero(numbered)
    first = np.full(len(seq_ids), -1, dtype=np.int64)
    last = np.full(len(seq_ids), -1, dtype=np.int64)
    np.maximum.at(last, seq[rows], rows)
    first_fill = np.full(len(seq_ids), np.iinfo(np.int64).max)
    np.minimum.at(first_fill, seq[rows], rows)
    first[last >= 0] = first_fill[last >= 0]
    gaps = np.r_[0, np.cumsum(~numbered)]  # unnumbered tokens before each row
    rs, re_ = spans["row_start"].to_numpy(np.int64), spans["row_end"].to_numpy(np.int64)
    s = seq[rs]
    has = last[s] >= 0
    lo, hi = np.maximum(rs - 1, first[s]), np.minimum(re_ + 1, last[s])
    gap = (hi >= lo) & (gaps[np.maximum(hi, lo) + 1] - gaps[lo] > 0)
    out[:] = has & ((rs <= first[s]) | (re_ >= last[s]) | gap)
    return out


def _database_view(labels: ConceptLabels, spans: pd.DataFrame) -> tuple[list[str], list[str]]:
    """For each candidate span: the label of the concept's group on its first token ('' if none) and its kind."""
    names = labels.token_concepts["concept"].astype(str).to_numpy()
    groups = np.asarray([n.split("=", 1)[0] if "=" in n else n for n in names], dtype=object)
    tokens = labels.tokens.tocsr()
    first: dict[str, np.ndarray] = {}
    out_label, out_kind = [], []
    for concept, row, adjacent in zip(spans["concept"].astype(str), spans["row_start"].to_numpy(), spans["adjacent"].to_numpy()):
        group = concept.split("=", 1)[0] if "=" in concept else concept
        if group not in first:
            cols = np.flatnonzero(groups == group)
            sub = tokens[:, cols].tocsr()
            lab = np.full(sub.shape[0], -1, dtype=np.int64)
            has = np.diff(sub.indptr) > 0
            lab[has] = cols[sub.indices[sub.indptr[:-1][has]]]
            first[group] = lab
        j = first[group][int(row)]
        label = str(names[j]) if j >= 0 else ""
        out_label.append(label)
        out_kind.append("boundary" if bool(adjacent) else ("conflict" if label else "silent"))
    return out_label, out_kind


def _rank(table: pd.DataFrame, by: list[str], ascending: list[bool], top: int | None) -> pd.DataFrame:
    table = table.sort_values(by, ascending=ascending, kind="stable", ignore_index=True)
    if top is not None:
        table = table.head(max(0, int(top)))
    table.insert(0, "rank", np.arange(1, len(table) + 1, dtype=np.int64))
    return table


def missing_annotations(
    features: FeatureMatrix,
    labels: ConceptLabels,
    association: Association,
    obs: pd.DataFrame,
    *,
    min_test_f1: float = 0.5,
    max_q: float = 0.05,
    features_per_concept: int = 3,
    top: int | None = 200,
    residue_column: str | None = "residue",
    position_group: str | None = None,
) -> pd.DataFrame:
    """Candidate missing annotations: unlabelled spans where a feature that reliably marks a concept fires.

    For each token concept of ``labels``, its reliable features are the pairs of ``association.pairs`` with
    ``test_f1 >= min_test_f1`` and ``q_value <= max_q``, at most ``features_per_concept`` of them by validation F1.
    A token is a candidate for the concept when one of these features is above the pair's chosen threshold
    (normalised activation, as in the association) and the token does not carry the concept. Consecutive candidate
    tokens of one sequence are merged into a span (the union over the concept's features), and each span keeps the
    feature with the best token score.

    The score of a (token, feature) is ``normalised activation x the feature's test precision``: the precision is
    the held-out fraction of the feature's active tokens that carry the concept (how often such a firing is a real
    instance), the activation how strongly this firing resembles the feature's strongest one. A span's score is the
    best over its tokens and the concept's features. ``features``, ``labels`` and ``obs`` (``store.obs()``) must
    describe the same tokens in the same order. ``top`` keeps the best spans over all concepts (``None``: all).

    Columns (sorted by ``rank``):

    * ``rank``: numbering artefacts last; before them, when the association is stratified, by the pair's
      ``stratified`` status (``survives`` first, then ``not testable``, then the pairs that position and residue
      explain); then by ``kind`` (silent, then conflict, then boundary), then by score (ties: concept, sequence,
      start). ``top`` applies to the candidates and, separately, to the artefacts listed after them;
    * ``concept``: the concept the span may be missing;
    * ``feature``: the concept feature with the best score in the span;
    * ``sequence_id``, ``start``, ``end``: the span, 1-based inclusive positions from ``obs["position"]``;
    * ``n_tokens``: its candidate tokens;
    * ``whole_sequence``: the concept is given per whole sequence (an image's label, broadcast to its positions):
      the row is a candidate for the sequence, its candidate tokens anywhere in it (``start``..``end`` the first and
      last of them), never a stretch;
    * ``score``: ``max_activation x feature_precision`` (see above), in [0, 1];
    * ``max_activation``: the feature's highest normalised activation in the span (1 = its maximum in the store);
    * ``feature_precision``, ``feature_test_f1``, ``q_value``: the feature-concept pair's test precision, test F1
      and enrichment q-value from the association;
    * ``adjacent``: the span touches a labelled token of the concept (just before or after, same sequence), i.e. it
      may be a boundary disagreement rather than a missing instance;
    * ``in_scope``: the span lies in the concept's scope (always True for unscoped concepts). False: the source
      could not decide there (a residue not compared with a germline, a chain it could not number), so the span is
      not a disagreement with the database but a place it is silent about by construction; spans never straddle a
      scope boundary. Such spans are kept (they may be interesting) and ranked like the others; filter on this
      column to keep only what the source could have labelled;
    * ``residues``: the span's residues, when ``obs`` has ``residue_column``;
    * ``database_label``: what the database says instead on the span's first token, among the concepts of the same
      group (the part of the name before ``=``; for example ``imgt=96`` for an ``imgt=95`` candidate), '' if nothing;
    * ``kind``: ``silent`` (the database has no label of that group there: a candidate missing annotation proper),
      ``conflict`` (it labels the span with another concept of the group: a disagreement) or ``boundary`` (the span
      touches a labelled instance of the concept: a boundary disagreement) or, with ``position_group`` (the
      concept group of a numbering, ``imgt``), ``numbering artefact``: the span touches the first or last numbered
      residue of its sequence, lies outside the numbered stretch or touches a gap in the numbering (IMGT 1 or 2 at
      a chain start that the numbering tool left out is not a discovery);
    * ``stratified``: the feature-concept pair's status in a stratified association (``pairs["stratified"]``:
      ``survives``, ``explained``, ``not testable``, ``not significant``) with its Mantel-Haenszel odds ratio
      ``or_mh`` and q-value ``q_cmh``, when the association is stratified.
    """
    import pandas as pd

    _check_tokens(features, labels, obs)
    chosen = _concept_features(association, labels.token_concepts["concept"].tolist(), min_test_f1=min_test_f1,
                               max_q=max_q, features_per_concept=features_per_concept)
    spans = _candidate_spans(features, labels, obs, chosen)
    spans["database_label"], spans["kind"] = _database_view(labels, spans)
    if position_group:
        artefact = _numbering_artefacts(labels, spans, obs, position_group)
        spans.loc[artefact, "kind"] = "numbering artefact"
    spans["_kind_order"] = spans["kind"].map(_KIND_ORDER).astype(np.int64)
    by, ascending = ["_kind_order", "score", "concept", "sequence_id", "start"], [True, False, True, True, True]
    if "stratified" in association.pairs.columns:
        status = association.pairs.set_index(["concept", "feature"])["stratified"]
        key = pd.MultiIndex.from_arrays([spans["concept"].astype(str), spans["feature"].astype(str)])
        pair_table = association.pairs.set_index(["concept", "feature"]).reindex(key)
        spans["stratified"] = status.reindex(key).fillna("not testable").to_numpy(dtype=object)
        spans["or_mh"] = pair_table["or_mh"].to_numpy(dtype=float)
        spans["q_cmh"] = pair_table["q_cmh"].to_numpy(dtype=float)
        spans["_stratified_order"] = spans["stratified"].map(_STRATIFIED_ORDER).fillna(2).astype(np.int64)
        by.insert(0, "_stratified_order")
        ascending.insert(0, True)
    artefact = (spans["kind"] == "numbering artefact").to_numpy()
    by.insert(0, "_artefact")
    ascending.insert(0, True)
    spans["_artefact"] = artefact
    if top is not None:  # ``top`` candidates, then at most ``top`` artefacts after them
        spans = spans.sort_values(by, ascending=ascending, kind="stable")
        top = max(0, int(top))
        spans = pd.concat([spans[~spans["_artefact"]].head(top), spans[spans["_artefact"]].head(top)])
    table = _rank(spans, by, ascending, None)
    table = table.drop(columns=[c for c in ("_kind_order", "_stratified_order", "_artefact") if c in table.columns])
    if residue_column and residue_column in obs.columns:
        residues = obs[residue_column].astype(str).to_numpy()
        table["residues"] = ["".join(residues[a : b + 1]) for a, b in zip(table["row_start"], table["row_end"])]
    return table.drop(columns=["row_start", "row_end"])
