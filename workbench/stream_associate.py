"""Feature-concept association shard by shard: :func:`workbench.associate.associate`'s tables without ever holding the
``tokens x features`` matrix, on one process or across ``torchrun`` ranks.

Two passes over the store, one shard in memory at a time:

1. the per-feature maxima (the normalisation of every InterPLM threshold): each shard is encoded and its column
   maxima kept;
2. the counts: each shard is encoded again, normalised by the global maxima, its tokens split into the validation and
   test sequences (:func:`~workbench.associate.sequence_split`) and counted at every threshold
   (:func:`~workbench.associate.split_counts`). The counts add up over shards because a record, and so every span of
   a concept, lies inside one shard.

Everything else (best thresholds, F1, enrichment, q-values, threshold curves) follows from the summed counts by the
same code as the in-memory path (:func:`~workbench.associate.association_from_counts`), so the tables are identical to
:func:`~workbench.associate.associate_store`'s. Under ``torchrun`` rank ``r`` of ``N`` takes shards ``r, r+N, ...``;
maxima are all-reduced with max and counts with sum (in float64, exact for integer counts), and every rank returns
the same result.

Memory: one shard's codes and its labels, plus the counts (``thresholds x features x concepts`` per split). The token
labels themselves are still a whole-store :class:`~workbench.concepts.ConceptLabels` (sparse, a few entries per token).

Not streamed yet: the permutation null (its circular shift moves labels across shard boundaries) and the stratified
test; ask for ``n_permutations=0`` and no strata, or use the in-memory path for them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench._dist import Dist
from workbench.associate import (
    THRESHOLDS,
    Association,
    _check_sae,
    _names,
    association_from_counts,
    null_pvalues,
    sequence_split,
    shard_codes,
    shard_neurons,
    split_counts,
)
from workbench.errors import WorkbenchError

if TYPE_CHECKING:  # pragma: no cover
    import scipy.sparse as sp

    from workbench.concepts import ConceptLabels
    from workbench.store import ActivationStore

__all__ = ["associate_streaming", "feature_maxima"]


def _shard_values(store: ActivationStore, sae: Any, shard: int, layer: int, batch_size: int) -> sp.csr_matrix | np.ndarray:
    return shard_codes(store, sae, shard, layer=layer, batch_size=batch_size) if sae is not None else shard_neurons(store, shard, layer=layer)


def _column_max(values: sp.csr_matrix | np.ndarray, n: int) -> np.ndarray:
    if values.shape[0] == 0:
        return np.zeros(n, dtype=np.float32)
    if isinstance(values, np.ndarray):
        return values.max(0).astype(np.float32)
    return np.asarray(values.max(axis=0).todense(), dtype=np.float32).ravel()


def feature_maxima(store: ActivationStore, *, layer: int, sae: Any | None = None, batch_size: int = 8192,
                   dist: Dist | None = None) -> np.ndarray:
    """Per-feature maximum activation over the store (SAE codes, or the neurons' positive part when ``sae`` is None);
    this rank's shards, all-reduced with max across ranks."""
    dist = dist or Dist()
    n = sae.cfg.width if sae is not None else store.d_model
    maxima = np.zeros(n, dtype=np.float32)
    for i in range(dist.rank, len(store.shards), dist.world_size):
        maxima = np.maximum(maxima, _column_max(_shard_values(store, sae, i, layer, batch_size), n))
    return _all_reduce(maxima, dist, "max").astype(np.float32)


def _all_reduce(array: np.ndarray, dist: Dist, op: str) -> np.ndarray:
    if dist.world_size == 1:
        return array
    import torch

    t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64))
    dist.all_reduce_(t, op=op)
    return t.numpy()


def _normalised(values: sp.csr_matrix | np.ndarray, maxima: np.ndarray) -> sp.csr_matrix | np.ndarray:
    """Divide each feature by its global maximum, as :func:`~workbench.associate.feature_matrix` does."""
    import scipy.sparse as sp

    if isinstance(values, np.ndarray):  # neurons: the in-memory path scales a CSR by 1 / max (0 where never active)
        scale = np.where(maxima > 0, 1.0 / np.where(maxima > 0, maxima, 1), 0).astype(np.float32)
        out = sp.csr_matrix(sp.csr_matrix(values) @ sp.diags(scale))
        out.eliminate_zeros()
        return out
    out = values.copy()
    out.data /= maxima[out.indices]
    return out


def associate_streaming(
    store: ActivationStore,
    labels: ConceptLabels,
    *,
    layer: int,
    sae: Any | None = None,
    thresholds: Sequence[float] = THRESHOLDS,
    split_seed: int = 0,
    n_permutations: int = 0,
    seed: int = 0,
    top_per_threshold: int = 5,
    batch_size: int = 8192,
) -> Association:
    """:func:`~workbench.associate.associate_store` computed shard by shard (module docstring): the same tables, with
    memory bounded by one shard. Run under ``torchrun`` to split the shards across processes; every rank returns the
    same :class:`~workbench.associate.Association`."""
    if n_permutations:
        raise WorkbenchError("the permutation null is not streamed yet: pass n_permutations=0 or use associate_store")
    if labels.n_tokens != store.n_tokens:
        raise WorkbenchError(f"labels cover {labels.n_tokens} tokens but {store.path} holds {store.n_tokens}")
    if sae is not None:
        _check_sae(store, sae, layer)
    names = _names(sae.cfg.width) if sae is not None else [f"u{i:04d}" for i in range(store.d_model)]
    dist = Dist.setup("cpu")
    try:
        maxima = feature_maxima(store, layer=layer, sae=sae, batch_size=batch_size, dist=dist)
        is_val_seq = sequence_split(store.sequences["sequence_id"].astype(str).tolist(), seed=split_seed)
        token_seq = store.token_sequence()
        lab, inst = labels.tokens.tocsr(), labels.instances.tocsr()
        masks, scope_index = labels.scope_matrix("token")
        if masks is not None:
            masks = masks.astype(np.float32)
        starts = np.concatenate([[0], np.cumsum([s.n_tokens for s in store.shards])])
        totals: dict[str, list[dict[str, np.ndarray]]] | None = None
        n_scope_sum = np.zeros(len(scope_index), dtype=np.float64)
        for i in range(dist.rank, len(store.shards), dist.world_size):
            a, b = int(starts[i]), int(starts[i + 1])
            values = _normalised(_shard_values(store, sae, i, layer, batch_size), maxima)
            is_val = is_val_seq[token_seq[a:b]]
            shard = {}
            for name, rows in (("val", np.flatnonzero(is_val)), ("test", np.flatnonzero(~is_val))):
                shard[name] = split_counts(values[rows], lab[a:b][rows], inst[a:b][rows],
                                           None if masks is None else masks[a:b][rows], thresholds, scope_index)
            totals = _add(totals, shard)
            if masks is not None:
                n_scope_sum += _scope_counts(masks[a:b], scope_index)
        totals = _reduce_counts(totals, dist, len(thresholds), len(names), labels)
        n_scope = np.full(len(scope_index), labels.n_tokens, dtype=np.int64)
        if masks is not None:
            n_scope_sum = _all_reduce(n_scope_sum, dist, "sum")
            scoped = scope_index >= 0
            n_scope[scoped] = n_scope_sum[scoped].astype(np.int64)
    finally:
        dist.close()
    result = association_from_counts(
        totals, names=names, concepts=labels.token_concepts["concept"].tolist(), n_tokens=labels.n_tokens,
        n_scope=n_scope, scoped=masks is not None, thresholds=thresholds, top_per_threshold=top_per_threshold,
        params={"split_seed": split_seed, "n_permutations": 0, "seed": seed, "stratified": False},
        null=lambda observed: null_pvalues(observed, np.zeros((0, len(observed)))),
    )
    result.params.update({"store": str(store.path), "model": store.model, "layer": layer,
                          "features": "sae" if sae is not None else "neurons", "streamed": True,
                          "world_size": dist.world_size})
    return result


def _scope_counts(masks: np.ndarray, scope_index: np.ndarray) -> np.ndarray:
    """Tokens of this shard in each concept's scope (0 for unscoped concepts)."""
    out = np.zeros(len(scope_index), dtype=np.float64)
    scoped = scope_index >= 0
    out[scoped] = masks.sum(0)[scope_index[scoped]]
    return out


def _add(totals: dict[str, list[dict[str, np.ndarray]]] | None,
         shard: dict[str, list[dict[str, np.ndarray]]]) -> dict[str, list[dict[str, np.ndarray]]]:
    """Sum of two sets of split counts, in float64 (exact for integer counts); dtypes restored by :func:`_reduce_counts`."""
    if totals is None:
        return {name: [{k: np.asarray(v, dtype=np.float64) for k, v in c.items()} for c in per] for name, per in shard.items()}
    for name, per in shard.items():
        for total, c in zip(totals[name], per):
            for k, v in c.items():
                total[k] = total[k] + v if k in total else np.asarray(v, dtype=np.float64)
    return totals


_KEYS = ("tp", "n_active", "n_labelled", "hit_instances", "n_instances", "n_active_scoped")
_DTYPES = {"tp": np.float32, "n_active": np.float32, "n_labelled": np.float32, "hit_instances": np.float64,
           "n_instances": np.int64, "n_active_scoped": np.float32}
"""The dtypes of :func:`~workbench.associate.split_counts` on one process, restored after summing so that every
derived float is computed exactly as on the in-memory path (counts below 2**24 are exact in float32)."""


def _reduce_counts(totals: dict[str, list[dict[str, np.ndarray]]] | None, dist: Dist, n_thresholds: int, n_features: int,
                   labels: ConceptLabels) -> dict[str, list[dict[str, np.ndarray]]]:
    """Sum the counts of every rank (a rank without shards contributes zeros of the right shapes)."""
    n_con = labels.tokens.shape[1]
    shapes = {"tp": (n_features, n_con), "n_active": (n_features,), "n_labelled": (n_con,),
              "hit_instances": (n_features, n_con), "n_instances": (n_con,), "n_active_scoped": (n_features, n_con)}
    scoped = labels.scope_matrix("token")[0] is not None
    keys = [k for k in _KEYS if k != "n_active_scoped" or scoped]
    out: dict[str, list[dict[str, np.ndarray]]] = {}
    for name in ("val", "test"):
        out[name] = []
        for t in range(n_thresholds):
            got = {} if totals is None else totals[name][t]
            counts = {}
            for k in keys:
                v = got.get(k)
                v = np.zeros(shapes[k], dtype=np.float64) if v is None else np.asarray(v, dtype=np.float64)
                counts[k] = _all_reduce(v, dist, "sum").astype(_DTYPES[k])
            out[name].append(counts)
    return out
