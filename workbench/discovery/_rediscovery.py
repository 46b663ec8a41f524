"""Rediscovery: do withheld annotations come back at the top of the candidate missing annotations?"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench.associate import FeatureMatrix, associate
from workbench.concepts import ConceptLabels, _scope_name
from workbench.errors import InputError, WorkbenchError

from ._spans import _candidate_spans, _check_tokens, _concept_features, _rank

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd


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
    withheld instances depends only on ``seed``, the concept's name and its spans in store order (not on how the
    source numbered them), so a concept's row does not depend on which other concepts are evaluated. Only features that overlap the concept's remaining labels are passed to
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
        order = np.argsort(rows, kind="stable")
        uniq, first = np.unique(ids[order], return_index=True)
        uniq = uniq[np.argsort(first, kind="stable")]  # spans in store order: the draw ignores how a source numbers them
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
