"""Discovery: what the features know that the annotations do not, and whether the model uses it.

Association (:mod:`workbench.associate`) measures how well features match *known* concepts. This module turns the
same numbers around:

* :func:`missing_annotations` lists places where a feature that reliably marks a concept fires but the concept is
  not annotated: candidate missing (or mis-placed) annotations, merged into residue spans and ranked;
* :func:`unexplained_features` lists features that are active and consistent across sequences but match no known
  concept, with the evidence a person needs to name them (residues, numbering profile, motifs, top sequences);
* :func:`rediscovery` makes the first measurable: it withholds a random part of a concept's annotated instances,
  re-runs the association on what is left, and asks whether the withheld instances come back at the top of
  :func:`missing_annotations` (precision@k against a chance rate);
* :func:`causal_effects` asks whether the model *uses* a feature: it removes (or amplifies) the feature inside the
  model through the adapter's edit hook and compares the output distribution where the feature fires with where it
  does not.

Every table has a ``rank`` column (1 = most interesting) and is sorted by it. The core stays domain-free: labels,
observations and adapters come in through their generic interfaces.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench.associate import FeatureMatrix, _check_sae_matches, associate
from workbench.concepts import ConceptLabels, _scope_name
from workbench.errors import InputError, WorkbenchError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from workbench.adapter import Adapter
    from workbench.associate import Association
    from workbench.store import ActivationStore

__all__ = ["missing_annotations", "unexplained_features", "rediscovery", "causal_effects", "feature_edit"]

_SPAN_COLUMNS = [
    "rank", "concept", "feature", "sequence_id", "start", "end", "n_tokens", "score", "max_activation",
    "feature_precision", "feature_test_f1", "q_value", "adjacent", "in_scope",
]


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


def _candidate_spans(features: FeatureMatrix, labels: ConceptLabels, obs: pd.DataFrame, chosen: pd.DataFrame) -> pd.DataFrame:
    """All candidate spans (unranked) with the store rows they cover (``row_start``, ``row_end``)."""
    import pandas as pd

    concept_names = labels.token_concepts["concept"].tolist()
    concept_col = {c: j for j, c in enumerate(concept_names)}
    empty = pd.DataFrame({c: pd.Series(dtype=t) for c, t in [
        ("concept", object), ("feature", object), ("sequence_id", object), ("start", np.int64), ("end", np.int64),
        ("n_tokens", np.int64), ("score", np.float64), ("max_activation", np.float64), ("feature_precision", np.float64),
        ("feature_test_f1", np.float64), ("q_value", np.float64), ("adjacent", bool), ("in_scope", bool),
        ("row_start", np.int64), ("row_end", np.int64)]})
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
    new = np.r_[True, (c_of[1:] != c_of[:-1]) | (rows[1:] != rows[:-1] + 1)
                | (seq[rows[1:]] != seq[rows[:-1]]) | (pos[rows[1:]] != pos[rows[:-1]] + 1)
                | (inside[1:] != inside[:-1])]
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
        "start": pos[row_start], "end": pos[row_end], "n_tokens": (row_end - row_start + 1).astype(np.int64),
        "score": score[best], "max_activation": act[best], "feature_precision": precision[p_best],
        "feature_test_f1": chosen["test_f1"].to_numpy(dtype=np.float64)[p_best],
        "q_value": chosen["q_value"].to_numpy(dtype=np.float64)[p_best],
        "adjacent": adj_before | adj_after, "in_scope": inside[starts], "row_start": row_start, "row_end": row_end,
    })


_KIND_ORDER = {"silent": 0, "conflict": 1, "boundary": 2}


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

    * ``rank``: by ``kind`` (silent, then conflict, then boundary), then by score (ties: concept, sequence, start);
    * ``concept``: the concept the span may be missing;
    * ``feature``: the concept feature with the best score in the span;
    * ``sequence_id``, ``start``, ``end``: the span, 1-based inclusive positions from ``obs["position"]``;
    * ``n_tokens``: its length in tokens;
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
      touches a labelled instance of the concept: a boundary disagreement).
    """
    _check_tokens(features, labels, obs)
    chosen = _concept_features(association, labels.token_concepts["concept"].tolist(), min_test_f1=min_test_f1,
                               max_q=max_q, features_per_concept=features_per_concept)
    spans = _candidate_spans(features, labels, obs, chosen)
    spans["database_label"], spans["kind"] = _database_view(labels, spans)
    spans["_kind_order"] = spans["kind"].map(_KIND_ORDER).astype(np.int64)
    table = _rank(spans, ["_kind_order", "score", "concept", "sequence_id", "start"], [True, False, True, True, True], top)
    table = table.drop(columns="_kind_order")
    if residue_column and residue_column in obs.columns:
        residues = obs[residue_column].astype(str).to_numpy()
        table["residues"] = ["".join(residues[a : b + 1]) for a, b in zip(table["row_start"], table["row_end"])]
    return table.drop(columns=["row_start", "row_end"])


# ------------------------------------------------------------------------------------------ unexplained features


def _format_shares(names: np.ndarray, weights: np.ndarray, total: float, *, n: int, min_share: float = 0.05) -> str:
    if total <= 0:
        return ""
    order = np.argsort(-weights, kind="stable")[:n]
    parts = [f"{names[i]} {100 * weights[i] / total:.0f}%" for i in order if weights[i] > 0 and weights[i] / total >= min_share]
    return ", ".join(parts)


def unexplained_features(
    features: FeatureMatrix,
    association: Association,
    labels: ConceptLabels,
    obs: pd.DataFrame,
    *,
    max_q: float = 0.05,
    min_f1: float = 0.2,
    min_density: float = 1e-4,
    min_sequences: int = 5,
    top: int | None = 200,
    profile_groups: Sequence[str] = ("imgt", "region"),
    residue_column: str = "residue",
    motif_groups: Sequence[str] = ("motif",),
    n_top_tokens: int = 500,
) -> pd.DataFrame:
    """Features that are active and consistent but match no known concept, with evidence for naming them.

    A feature is listed when it is active on at least ``min_density`` of the tokens, fires in at least
    ``min_sequences`` distinct sequences, and no concept pairs with it at ``q_value <= max_q`` and
    ``test_f1 >= min_f1`` in ``association``. The evidence is computed on the feature's ``n_top_tokens`` most
    strongly activated tokens, each weighted by its (normalised) activation. Label groups (the part of a concept
    name before ``=``) named in ``profile_groups`` / ``motif_groups`` that ``labels`` lacks are skipped, and so is
    ``top_residues`` when ``obs`` has no ``residue_column``.

    Columns (sorted by ``rank``):

    * ``rank``: 1 for the highest score (ties: feature order);
    * ``feature``: feature name;
    * ``score``: ``mass x consistency``, how much well-spread activation the feature carries;
    * ``mass``: sum of the feature's normalised activations over all tokens (number of full-strength firings);
    * ``consistency``: fraction of ``mass`` outside the single sequence where the feature is strongest (0 when it
      fires in one sequence only; near 1 when spread over many);
    * ``density``: fraction of tokens where the feature is active (> 0);
    * ``n_active``: number of such tokens;
    * ``n_sequences``: number of distinct sequences with an active token;
    * ``best_concept``, ``best_f1``, ``best_q``: the feature's best concept by test F1 (however weak; ``""``, 0 and
      NaN when it overlaps no concept) with that pair's test F1 and q-value;
    * ``top_residues``: residue composition of the top tokens by activation weight, e.g. ``"C 62%, S 10%"`` (up to
      three residues with at least 5%);
    * ``profile``: for each group of ``profile_groups`` present in the labels, up to two of its concepts carrying
      the most activation weight of the top tokens, e.g. ``"imgt=104 80%; region=FR3 95%"`` (shares of all top-token
      weight, so tokens outside any concept of the group count against the share). For a scoped group (every
      concept of it has a scope) the shares are of the weight inside the union of their scopes, and the text adds
      which part of the weight that is, e.g. ``"shm=mutated 90% (of the 40% in scope)"``;
    * ``motif``: the concept of ``motif_groups`` most enriched among the top tokens (weight share at least 10%),
      with its share and its enrichment over its store-wide token frequency, e.g. ``"motif=Cys 95% (40x)"``; for a
      scoped concept both are taken inside its scope (weight in scope, tokens in scope);
    * ``top_sequences``: the three sequences where the feature's activation mass is largest.
    """
    import pandas as pd
    import scipy.sparse as sp

    _check_tokens(features, labels, obs)
    values = features.values.tocsr()
    n_tokens, n_feat = values.shape
    seq, seq_ids = _token_sequence(obs)

    positive = values.data > 0
    n_active = np.bincount(values.indices[positive], minlength=n_feat)
    density = n_active / max(1, n_tokens)
    seq_of_token = sp.csr_matrix((np.ones(n_tokens, dtype=np.float32), (seq, np.arange(n_tokens))),
                                 shape=(len(seq_ids), n_tokens))
    per_seq = (seq_of_token @ values).tocsc()  # sequences x features: activation mass per sequence
    per_seq.eliminate_zeros()
    n_sequences = np.diff(per_seq.indptr)
    mass = np.asarray(per_seq.sum(0), dtype=np.float64).ravel()
    top_mass = np.asarray(per_seq.max(0).todense(), dtype=np.float64).ravel()
    with np.errstate(divide="ignore", invalid="ignore"):
        consistency = np.where(mass > 0, 1.0 - top_mass / np.where(mass > 0, mass, 1.0), 0.0)

    pairs = association.pairs
    name_index = {n: i for i, n in enumerate(features.names)}
    explained = np.zeros(n_feat, dtype=bool)
    good = pairs[(pairs["q_value"] <= max_q) & (pairs["test_f1"] >= min_f1)]
    explained[[name_index[f] for f in good["feature"] if f in name_index]] = True
    best_concept = np.full(n_feat, "", dtype=object)
    best_f1 = np.zeros(n_feat)
    best_q = np.full(n_feat, np.nan)
    if len(pairs):
        best = pairs.sort_values(["feature", "test_f1", "q_value"], ascending=[True, False, True], kind="stable")
        best = best.drop_duplicates("feature")
        known = best["feature"].isin(name_index)
        idx = best.loc[known, "feature"].map(name_index).to_numpy(dtype=np.int64)
        best_concept[idx] = best.loc[known, "concept"].to_numpy(dtype=object)
        best_f1[idx] = best.loc[known, "test_f1"].to_numpy(dtype=np.float64)
        best_q[idx] = best.loc[known, "q_value"].to_numpy(dtype=np.float64)

    eligible = (density >= min_density) & (n_sequences >= min_sequences) & ~explained
    cand = np.flatnonzero(eligible)
    score = mass[cand] * consistency[cand]
    order = cand[np.lexsort((cand, -score))]
    if top is not None:
        order = order[: max(0, int(top))]
    table = pd.DataFrame({
        "feature": np.asarray(features.names, dtype=object)[order], "score": mass[order] * consistency[order],
        "mass": mass[order], "consistency": consistency[order], "density": density[order],
        "n_active": n_active[order].astype(np.int64), "n_sequences": n_sequences[order].astype(np.int64),
        "best_concept": best_concept[order], "best_f1": best_f1[order], "best_q": best_q[order],
    })
    evidence = _evidence(values, order, per_seq, seq_ids, labels, obs, profile_groups=profile_groups,
                         residue_column=residue_column, motif_groups=motif_groups, n_top_tokens=n_top_tokens)
    for column, items in evidence.items():
        table[column] = items
    table.insert(0, "rank", np.arange(1, len(table) + 1, dtype=np.int64))
    return table


def _evidence(values: Any, order: np.ndarray, per_seq: Any, seq_ids: np.ndarray, labels: ConceptLabels, obs: pd.DataFrame,
              *, profile_groups: Sequence[str], residue_column: str, motif_groups: Sequence[str],
              n_top_tokens: int) -> dict[str, list[str]]:
    """The text evidence columns of :func:`unexplained_features` for the features ``order``."""
    import pandas as pd
    import scipy.sparse as sp

    n = len(order)
    out: dict[str, list[str]] = {k: [""] * n for k in ("top_residues", "profile", "motif", "top_sequences")}
    if n == 0:
        return out
    n_tokens = values.shape[0]
    sub = values[:, order].tocsc()
    w_rows, w_cols, w_vals = [], [], []
    for i in range(n):
        rows = sub.indices[sub.indptr[i] : sub.indptr[i + 1]]
        vals = sub.data[sub.indptr[i] : sub.indptr[i + 1]]
        if len(vals) > n_top_tokens:
            keep = np.argpartition(-vals, n_top_tokens - 1)[:n_top_tokens]
            rows, vals = rows[keep], vals[keep]
        w_rows.append(np.full(len(rows), i)), w_cols.append(rows), w_vals.append(vals)
    weights = sp.csr_matrix((np.concatenate(w_vals).astype(np.float64), (np.concatenate(w_rows), np.concatenate(w_cols))),
                            shape=(n, n_tokens))
    total = np.asarray(weights.sum(1)).ravel()

    if residue_column in obs.columns:
        codes, names = pd.factorize(obs[residue_column].astype(str), sort=True)
        onehot = sp.csr_matrix((np.ones(n_tokens), (np.arange(n_tokens), codes)), shape=(n_tokens, len(names)))
        comp = (weights @ onehot).toarray()
        names = np.asarray(names, dtype=object)
        out["top_residues"] = [_format_shares(names, comp[i], total[i], n=3) for i in range(n)]

    concepts = np.asarray(labels.token_concepts["concept"].tolist(), dtype=object)
    groups = _group_of(concepts)
    lab = labels.tokens.tocsc().astype(np.float64)
    profile_parts: list[list[str]] = [[] for _ in range(n)]
    coo = weights.tocoo()
    for group in profile_groups:
        cols = np.flatnonzero(groups == group)
        if len(cols) == 0:
            continue
        shares = (weights @ lab[:, cols]).toarray()
        scope = labels.group_scope(cols)
        # A scoped group: shares of the weight where the group is defined (outside it, a token is no negative).
        inside = total if scope is None else np.bincount(coo.row, weights=coo.data * scope[coo.col], minlength=n)
        for i in range(n):
            text = _format_shares(concepts[cols], shares[i], inside[i], n=2)
            if text and scope is not None and inside[i] < 0.995 * total[i]:  # say so only when part lies outside
                text += f" (of the {100 * inside[i] / total[i]:.0f}% in scope)"
            if text:
                profile_parts[i].append(text)
    out["profile"] = ["; ".join(p) for p in profile_parts]

    cols = np.flatnonzero(np.isin(groups, list(motif_groups)))
    if len(cols):
        inside, scope_size = _scope_weights(labels, weights, cols)
        inside = total[:, None] if inside is None else inside
        shares = (weights @ lab[:, cols]).toarray() / np.where(inside > 0, inside, 1.0)
        background = np.asarray(lab[:, cols].sum(0)).ravel() / np.maximum(scope_size, 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            lift = np.where(background > 0, shares / np.where(background > 0, background, 1.0), 0.0)
        lift = np.where(shares >= 0.1, lift, 0.0)
        for i in range(n):
            j = int(np.argmax(lift[i]))
            if lift[i, j] > 0:
                out["motif"][i] = f"{concepts[cols][j]} {100 * shares[i, j]:.0f}% ({lift[i, j]:.1f}x)"

    cols_seq = per_seq[:, order].tocsc()
    for i in range(n):
        rows = cols_seq.indices[cols_seq.indptr[i] : cols_seq.indptr[i + 1]]
        vals = cols_seq.data[cols_seq.indptr[i] : cols_seq.indptr[i + 1]]
        best = rows[np.lexsort((rows, -vals))[:3]]
        out["top_sequences"][i] = ", ".join(str(s) for s in seq_ids[best])
    return out


# -------------------------------------------------------------------------------------------------- rediscovery


def _window_base_rate(lengths: np.ndarray, labelled: np.ndarray, withheld: np.ndarray, seq: np.ndarray) -> float:
    """Chance that a random window of each length in ``lengths`` (averaged over them), placed on unlabelled tokens
    of one sequence, overlaps a withheld token (see :func:`rediscovery`). ``labelled`` marks every token a window
    may not cover (the kept labels, and for a scoped concept the tokens outside its scope)."""
    n = len(labelled)
    cum_lab = np.r_[0, np.cumsum(labelled, dtype=np.int64)]
    cum_w = np.r_[0, np.cumsum(withheld, dtype=np.int64)]
    rates = {}
    for length in np.unique(lengths):
        length = int(length)
        if length > n:
            rates[length] = np.nan
            continue
        s = np.arange(n - length + 1)
        valid = (seq[s] == seq[s + length - 1]) & (cum_lab[s + length] - cum_lab[s] == 0)
        hit = valid & (cum_w[s + length] - cum_w[s] > 0)
        n_valid = int(valid.sum())
        rates[length] = hit.sum() / n_valid if n_valid else np.nan
    return float(np.nanmean([rates[int(x)] for x in lengths])) if len(lengths) else float("nan")


def rediscovery(
    features: FeatureMatrix,
    labels: ConceptLabels,
    obs: pd.DataFrame,
    sequence_ids: Sequence[str],
    token_sequence: np.ndarray,
    *,
    concepts: Sequence[str] | None = None,
    withhold: float = 0.5,
    k: int = 20,
    min_instances: int = 10,
    seed: int = 0,
    association_options: Mapping[str, Any] | None = None,
    candidate_options: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Measure discovery: do withheld annotations come back at the top of :func:`missing_annotations`?

    For each concept (default: every token concept with at least ``min_instances`` instances), a random fraction
    ``withhold`` of its instances (spans, from ``labels.instances``; at least one withheld and one kept) is removed
    from its labels, :func:`workbench.associate.associate` is re-run on the reduced labels of that concept alone
    (``association_options`` are passed on; permutations default to 0), and :func:`missing_annotations` is run for
    the concept with ``candidate_options`` (``min_test_f1``, ``max_q``, ``features_per_concept``). The draw of
    withheld instances depends only on ``seed`` and the concept's name, so a concept's row does not depend on
    which other concepts are evaluated. Only features that overlap the concept's remaining labels are passed to
    the association: the others cannot form a pair (their overlap is zero at every threshold), so the pairs and the
    Benjamini-Hochberg q-values are exactly those of the full feature set.

    A scoped concept (:attr:`~workbench.concepts.ConceptLabels.scopes`) keeps its scope in the reduced labels, so the
    association counts negatives only inside it; candidate spans outside the scope are dropped (the source could
    not have labelled them: they are neither hits nor misses), and chance windows of ``base_rate`` lie inside it.

    ``sequence_ids`` and ``token_sequence`` are as for :func:`~workbench.associate.associate`; ``obs`` is
    ``store.obs()`` (``sequence_id``, ``position``).

    Columns (sorted by ``rank``):

    * ``rank``: by ``lift``, then ``precision_at_k`` (concepts without candidates last);
    * ``concept``;
    * ``feature``: the concept's best reliable feature in the reduced association (highest validation F1 among
      those passing the candidate bars; ``""`` when none does, and then there are no candidates);
    * ``n_instances``, ``n_withheld``: instances of the concept, and how many were withheld;
    * ``n_candidates``: candidate spans found for the concept (all ranks; inside its scope);
    * ``precision_at_k``: fraction of the top ``min(k, n_candidates)`` candidate spans that overlap a withheld
      instance (share at least one token with it); NaN without candidates;
    * ``base_rate``: the same fraction expected by chance: for each of those top spans, the probability that a
      window of the same number of tokens, placed uniformly at random where it lies within one sequence and covers
      no token that still carries the concept (nor, for a scoped concept, a token outside its scope), overlaps a
      withheld token; averaged over the spans;
    * ``lift``: ``precision_at_k / base_rate``;
    * ``withheld_found``: fraction of the withheld instances overlapped by at least one candidate span (any rank);
    * ``k``: the ``k`` asked for.
    """
    import pandas as pd
    import scipy.sparse as sp

    _check_tokens(features, labels, obs)
    token_sequence = np.asarray(token_sequence)
    if len(token_sequence) != labels.n_tokens:
        raise WorkbenchError(f"token_sequence has {len(token_sequence)} entries, labels cover {labels.n_tokens} tokens")
    if not 0 < withhold < 1:
        raise InputError(f"withhold must be a fraction between 0 and 1, not {withhold}")
    if k < 1:
        raise InputError(f"k must be at least 1, not {k}")
    names = labels.token_concepts["concept"].tolist()
    inst = labels.instances.tocsc()
    inst.sort_indices()
    n_inst = np.array([len(np.unique(inst.data[inst.indptr[j] : inst.indptr[j + 1]])) for j in range(len(names))],
                      dtype=np.int64)
    if concepts is None:
        chosen = [j for j in range(len(names)) if n_inst[j] >= max(2, min_instances)]
    else:
        col = {c: j for j, c in enumerate(names)}
        unknown = [c for c in concepts if c not in col]
        if unknown:
            raise InputError(f"no token concept {unknown[0]!r} in the labels")
        chosen = [col[c] for c in concepts]
        few = [names[j] for j in chosen if n_inst[j] < 2]
        if few:
            raise InputError(f"concept {few[0]!r} has fewer than two instances: nothing to withhold and keep")
    options = {"n_permutations": 0, **dict(association_options or {})}
    cand_options = dict(candidate_options or {})
    unknown_opts = set(cand_options) - {"min_test_f1", "max_q", "features_per_concept"}
    if unknown_opts:
        raise InputError(f"unknown candidate options {sorted(unknown_opts)}")
    values = features.values.tocsr()
    n_tokens = labels.n_tokens
    empty_seq = sp.csr_matrix((labels.sequences.shape[0], 0), dtype=bool)
    seq_concepts = labels.sequence_concepts.iloc[:0].reset_index(drop=True)
    rows_out = []
    for j in chosen:
        concept = names[j]
        rows = inst.indices[inst.indptr[j] : inst.indptr[j + 1]].astype(np.int64)
        ids = inst.data[inst.indptr[j] : inst.indptr[j + 1]]
        uniq = np.unique(ids)
        n_w = int(np.clip(round(withhold * len(uniq)), 1, len(uniq) - 1))
        rng = np.random.default_rng([int(seed), zlib.crc32(concept.encode())])
        withheld_ids = rng.choice(uniq, n_w, replace=False)
        gone = np.isin(ids, withheld_ids)
        kept_rows, kept_ids = rows[~gone], ids[~gone]
        at = (kept_rows, np.zeros(len(kept_rows), dtype=np.int64))
        # The concept alone, with its scope (if any): outside it the association and the candidates see no negatives.
        scope = labels.token_scope(j)
        scope_name = _scope_name(labels.token_concepts["scope"].iloc[j]) if scope is not None else ""
        reduced = ConceptLabels(
            sp.csr_matrix((np.ones(len(kept_rows), dtype=bool), at), shape=(n_tokens, 1)),
            sp.csr_matrix((kept_ids.astype(np.int32), at), shape=(n_tokens, 1)),
            labels.token_concepts.iloc[[j]].reset_index(drop=True).assign(
                n_tokens=[len(kept_rows)], n_instances=[len(uniq) - n_w],
                n_sequences=[len(np.unique(token_sequence[kept_rows]))]),
            empty_seq, seq_concepts, scopes={scope_name: scope} if scope is not None else {},
        )
        # Features with no active token on the remaining labels cannot pair with the concept: leave them out.
        overlap = np.unique(values[kept_rows].indices)
        sub = features if len(overlap) > 0.5 * values.shape[1] else FeatureMatrix(
            values[:, overlap], np.asarray(features.max_activation)[overlap], [features.names[i] for i in overlap])
        assoc = associate(sub, reduced, sequence_ids, token_sequence, **options)
        pick = _concept_features(assoc, [concept], min_test_f1=cand_options.get("min_test_f1", 0.5),
                                 max_q=cand_options.get("max_q", 0.05),
                                 features_per_concept=cand_options.get("features_per_concept", 3))
        spans = _candidate_spans(sub, reduced, obs, pick)
        spans = spans[spans["in_scope"].to_numpy(dtype=bool)]  # outside the scope a span is neither right nor wrong
        spans = spans.sort_values(["score", "sequence_id", "start"], ascending=[False, True, True], kind="stable",
                                  ignore_index=True)

        withheld_tok = np.zeros(n_tokens, dtype=bool)
        withheld_tok[rows[gone]] = True
        cum_w = np.r_[0, np.cumsum(withheld_tok, dtype=np.int64)]
        rs, re_ = spans["row_start"].to_numpy(np.int64), spans["row_end"].to_numpy(np.int64)
        overlaps = cum_w[re_ + 1] - cum_w[rs] > 0
        top_k = min(k, len(spans))
        precision = float(overlaps[:top_k].mean()) if top_k else float("nan")
        blocked = np.zeros(n_tokens, dtype=bool)  # where a chance window may not go: kept labels, outside the scope
        blocked[kept_rows] = True
        if scope is not None:
            blocked |= ~np.asarray(scope, dtype=bool)
        lengths = spans["n_tokens"].to_numpy()[:top_k]
        base = _window_base_rate(lengths, blocked, withheld_tok, token_sequence) if top_k else float("nan")
        # Withheld instances overlapped by any candidate span: mark span tokens, then any marked token per instance.
        in_span = np.zeros(n_tokens + 1, dtype=np.int64)
        np.add.at(in_span, rs, 1)
        np.add.at(in_span, re_ + 1, -1)
        covered = np.cumsum(in_span)[:n_tokens] > 0
        found = np.unique(ids[gone][covered[rows[gone]]])
        rows_out.append({
            "concept": concept, "feature": pick["feature"].iloc[0] if len(pick) else "",
            "n_instances": int(len(uniq)), "n_withheld": n_w, "n_candidates": int(len(spans)),
            "precision_at_k": precision, "base_rate": base,
            "lift": precision / base if top_k and base > 0 else float("nan"),
            "withheld_found": len(found) / n_w, "k": int(k),
        })
    table = pd.DataFrame(rows_out, columns=["concept", "feature", "n_instances", "n_withheld", "n_candidates",
                                            "precision_at_k", "base_rate", "lift", "withheld_found", "k"])
    return _rank(table, ["lift", "precision_at_k", "concept"], [False, False, True], None)


# ----------------------------------------------------------------------------------------------- causal effects


def _sequences_for(column_rows: np.ndarray, column_vals: np.ndarray, seq: np.ndarray, n_seq: int, n: int,
                   rng: np.random.Generator) -> np.ndarray:
    """The ``n`` sequences with the most activation mass of a feature (a seeded random ``n`` if it never fires)."""
    mass = np.bincount(seq[column_rows], weights=column_vals.astype(np.float64), minlength=n_seq)
    firing = np.flatnonzero(mass > 0)
    if len(firing) == 0:
        return np.sort(rng.choice(n_seq, min(n, n_seq), replace=False))
    return firing[np.lexsort((firing, -mass[firing]))][:n]


def feature_edit(sae: Any, feature: int | Sequence[int], *, mode: str, amount: float, state: dict[str, Any]) -> Any:
    """The edit function of :func:`causal_effects` for one feature, or several at once (``mode`` ``"ablate"``: remove
    their contributions; ``"steer"``: add ``amount`` (normalised units) along each decoder direction); the first call
    stores ``state["fires"]``, the rows where any of the features fires."""
    import torch

    device = next(sae.parameters()).device
    scale = float(sae.input_scale) if sae.cfg.normalize else 1.0
    index = [int(feature)] if isinstance(feature, (int, np.integer)) else [int(f) for f in feature]
    directions = sae.W_dec[index].detach().to(device=device, dtype=torch.float32) * scale  # (n, d)

    def edit(h: torch.Tensor) -> torch.Tensor:
        x = h.to(device=device, dtype=torch.float32)
        codes = sae.encode(x)[:, index]
        state.setdefault("fires", (codes > 0).any(1).cpu())
        delta = -(codes @ directions) if mode == "ablate" else amount * directions.sum(0).expand_as(x)
        return (x + delta).to(device=h.device, dtype=h.dtype)

    return edit


def causal_effects(
    adapter: Adapter,
    store: ActivationStore,
    sae: Any,
    *,
    layer: int,
    features: Sequence[int | str],
    feature_matrix: FeatureMatrix,
    n_sequences: int = 8,
    mode: str = "ablate",
    steer: float = 1.0,
    tokens_per_batch: int = 4096,
    seed: int = 0,
    mask_rate: float = 0.15,
) -> pd.DataFrame:
    """Does the model use a feature? Edit it inside the model and compare outputs where it fires and elsewhere.

    For each feature (an index or a name of ``feature_matrix``), the ``n_sequences`` sequences with the largest
    activation mass of the feature are rebuilt with ``adapter.records_from_store`` (a feature that never fires gets
    ``n_sequences`` seeded random sequences, where its effect should be nil). The model is run clean and with an
    edit at ``layer`` on every kept token, through ``adapter.run_with_edit``; ``h`` is the layer's representation
    in model units, ``c = sae.encode(h)`` its codes (normalised units) and ``d_f`` the feature's unit decoder row:

    * ``"ablate"``: ``h - c_f * d_f * s``, with ``s = sae.input_scale`` (1 without normalisation). The SAE decodes
      ``denormalize(c W_dec + b_dec) = (c W_dec + b_dec) s + mean``, so the difference between decoding ``c`` and
      decoding ``c`` with ``c_f = 0`` is exactly ``c_f d_f s``: the feature's contribution is removed and the
      rest of ``h``, SAE reconstruction error included, is left untouched;
    * ``"steer"``: ``h + steer * m_f * d_f * s`` with ``m_f`` the feature's maximum activation in the store
      (``feature_matrix.max_activation``, normalised units), at every kept token.

    A token "fires" when ``c_f > 0`` on the clean input of the same run. Reported per feature:

    * ``rank``: the order of ``features`` as given;
    * ``feature``, ``mode``;
    * ``n_sequences``, ``n_tokens``: sequences used and their kept tokens;
    * ``n_firing_tokens``: kept tokens where the feature fires;
    * ``kl_firing``, ``kl_other``: mean KL(clean || edited) of the output distribution at firing tokens and at the
      other tokens of the same sequences (NaN when there are none); for a classifier (one output per input, such as
      an image model) per input, an input firing when any of its rows does;
    * ``kl_ratio``: ``kl_firing / kl_other`` (inf when only firing tokens change; NaN when nothing changes);
    * ``dlogp_firing``, ``dlogp_other``: mean change (edited - clean) of the log-probability of the true token, at
      firing and other tokens, measured as masked-LM evaluation does: one extra clean and one edited run per batch
      in which a seeded random ``mask_rate`` of the kept tokens is replaced by the adapter's mask token
      (``adapter.mask_token_id()``), compared at those masked positions (firing = the feature fires there on the
      unmasked input). An adapter with ``tokens_of`` but no mask token is evaluated on its unmasked predictions at
      every kept token; an adapter without ``tokens_of`` gets NaN;
    * ``n_dlogp_firing``, ``n_dlogp_other``: how many positions each of these means averages over.

    The SAE must match the store (model, layer, width) and the adapter's weights the store's
    ``manifest["weights_sha256"]``; otherwise a :class:`WorkbenchError` names both.
    """
    import pandas as pd
    import torch

    if mode not in ("ablate", "steer"):
        raise InputError(f"mode must be 'ablate' or 'steer', not {mode!r}")
    if layer not in store.layers:
        raise WorkbenchError(f"{store.path} holds layers {store.layers}, not {layer}")
    _check_sae_matches(store, sae, layer)
    expected = store.manifest.get("weights_sha256")
    actual = adapter.weights_hash()
    if actual != expected:
        raise WorkbenchError(
            f"adapter {adapter.name!r} has weights {actual[:12]}, but {store.path} was extracted from {store.model!r}"
            f" with weights {str(expected)[:12]}: load the model the store was made with"
        )
    if feature_matrix.values.shape[0] != store.n_tokens or feature_matrix.values.shape[1] != sae.cfg.width:
        raise WorkbenchError(
            f"feature matrix is {feature_matrix.values.shape[0]} tokens x {feature_matrix.values.shape[1]} features; the store"
            f" has {store.n_tokens} tokens and the SAE {sae.cfg.width} features"
        )
    name_index = {n: i for i, n in enumerate(feature_matrix.names)}
    feats = []
    for f in features:
        if isinstance(f, str):
            if f not in name_index:
                raise InputError(f"no feature {f!r} in the feature matrix")
            feats.append(name_index[f])
        elif 0 <= int(f) < sae.cfg.width:
            feats.append(int(f))
        else:
            raise InputError(f"feature {f} is outside the SAE's {sae.cfg.width} features")

    adapter.prepare([layer])  # models whose rows depend on the layer (a conv layer's grid) batch for this one
    obs = store.obs(["sequence_id"])
    seq, seq_ids = _token_sequence(obs)
    csc = feature_matrix.values.tocsc()
    rng = np.random.default_rng(seed)
    max_act = np.asarray(feature_matrix.max_activation, dtype=np.float64)
    has_tokens = callable(getattr(adapter, "tokens_of", None))
    mask_id = adapter.mask_token_id() if callable(getattr(adapter, "mask_token_id", None)) else None

    rows_out = []
    for rank, f in enumerate(feats, start=1):
        chosen = _sequences_for(csc.indices[csc.indptr[f] : csc.indptr[f + 1]], csc.data[csc.indptr[f] : csc.indptr[f + 1]],
                                seq, len(seq_ids), n_sequences, rng)
        records = adapter.records_from_store(store, [str(s) for s in seq_ids[chosen]])
        acc = {"kl_f": 0.0, "kl_o": 0.0, "n_f": 0, "n_o": 0, "lp_f": 0.0, "lp_o": 0.0, "m_f": 0, "m_o": 0}
        for b, batch in enumerate(adapter.batches(records, tokens_per_batch=tokens_per_batch)):
            state: dict[str, Any] = {}
            edit = feature_edit(sae, f, mode=mode, amount=steer * float(max_act[f]), state=state)
            keep = batch.keep
            clean = adapter.run_with_edit(batch, layer, None)
            edited = adapter.run_with_edit(batch, layer, edit)
            fires = state["fires"]
            if clean.ndim == 2:  # a classifier: one output per input; an input "fires" where any of its rows does
                rows = keep.nonzero()[:, 0].cpu()
                fires = torch.zeros(keep.shape[0], dtype=torch.bool).index_put_((rows[fires],), torch.tensor(True))
                lp_clean = torch.log_softmax(clean.float(), -1)
                lp_edit = torch.log_softmax(edited.float(), -1)
            else:
                lp_clean = torch.log_softmax(clean[keep.to(clean.device)].float(), -1)
                lp_edit = torch.log_softmax(edited[keep.to(edited.device)].float(), -1)
            kl = (lp_clean.exp() * (lp_clean - lp_edit)).sum(-1).clamp_min(0).cpu()
            acc["kl_f"] += float(kl[fires].sum())
            acc["kl_o"] += float(kl[~fires].sum())
            acc["n_f"] += int(fires.sum())
            acc["n_o"] += int((~fires).sum())
            if not has_tokens or clean.ndim == 2:
                continue
            tokens = adapter.tokens_of(batch)
            key = next((name for name, v in batch.inputs.items() if v is tokens), None)
            if mask_id is not None and key is not None:
                gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + b)
                masked = (torch.rand(tokens.shape, generator=gen) < mask_rate) & keep
                inputs = dict(batch.inputs)
                inputs[key] = tokens.masked_fill(masked, mask_id)
                mbatch = type(batch)(batch.index, inputs, keep, batch.obs)
                lp_c = torch.log_softmax(adapter.run_with_edit(mbatch, layer, None).float(), -1).cpu()
                lp_e = torch.log_softmax(adapter.run_with_edit(mbatch, layer, edit).float(), -1).cpu()
                where = masked
            else:
                lp_c, lp_e, where = lp_clean.cpu(), lp_edit.cpu(), None
            if where is None:
                true = tokens[keep].cpu()
                d = lp_e.gather(1, true[:, None])[:, 0] - lp_c.gather(1, true[:, None])[:, 0]
                sel = fires
            else:
                true = tokens[where].cpu()
                d = lp_e[where].gather(1, true[:, None])[:, 0] - lp_c[where].gather(1, true[:, None])[:, 0]
                # kept-token index of every masked position (kept tokens are numbered row-major, as in ``fires``)
                kept_index = torch.cumsum(keep.flatten().long(), 0).view(keep.shape) - 1
                sel = fires[kept_index[where]]
            acc["lp_f"] += float(d[sel].sum())
            acc["lp_o"] += float(d[~sel].sum())
            acc["m_f"] += int(sel.sum())
            acc["m_o"] += int((~sel).sum())

        def mean(total: float, count: int) -> float:
            return total / count if count else float("nan")

        kl_f, kl_o = mean(acc["kl_f"], acc["n_f"]), mean(acc["kl_o"], acc["n_o"])
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = float(np.divide(kl_f, kl_o)) if not (np.isnan(kl_f) or np.isnan(kl_o)) else float("nan")
        rows_out.append({
            "rank": rank, "feature": feature_matrix.names[f], "mode": mode, "n_sequences": len(chosen),
            "n_tokens": acc["n_f"] + acc["n_o"], "n_firing_tokens": acc["n_f"], "kl_firing": kl_f, "kl_other": kl_o,
            "kl_ratio": ratio, "dlogp_firing": mean(acc["lp_f"], acc["m_f"]) if has_tokens else float("nan"),
            "dlogp_other": mean(acc["lp_o"], acc["m_o"]) if has_tokens else float("nan"),
            "n_dlogp_firing": acc["m_f"], "n_dlogp_other": acc["m_o"],
        })
    columns = ["rank", "feature", "mode", "n_sequences", "n_tokens", "n_firing_tokens", "kl_firing", "kl_other", "kl_ratio",
               "dlogp_firing", "dlogp_other", "n_dlogp_firing", "n_dlogp_other"]
    return pd.DataFrame(rows_out, columns=columns)
