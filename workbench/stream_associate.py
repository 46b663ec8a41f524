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

Memory: one shard's codes and its labels, plus the counts (``thresholds x features x concepts`` per split). The labels
are a whole-store :class:`~workbench.concepts.ConceptLabels` or, for stores whose labels should not be one matrix,
:class:`~workbench.label_shards.LabelShards` read one shard (or token range) at a time; the results are the same.

The permutation null (labels shifted circularly along the tokens, :func:`~workbench.associate.associate`) is a third
pass over the shards that serves every permutation at once: for each shift the tokens are cut into chunks that begin
at the starts of the shifted sequences, next to the shard boundaries, so no span of a shifted concept is cut and each
chunk's counts add up exactly; a chunk needs at most the shards it overlaps, and the shards are read in order and
dropped once no chunk needs them. Under ``torchrun`` the permutations are divided among the ranks (each reads every
shard in this pass) and their maxima all-reduced.

The stratified test (``strata``, :mod:`workbench.stratified`) is one more pass once each pair's threshold is chosen:
its sums (active tokens per feature and stratum, active-and-labelled tokens per feature, concept and stratum) are
integer counts that add up over shards (:class:`~workbench.stratified.MantelHaenszelSums`); the ranks' sums are
gathered and added. Its layout (tokens per stratum, labelled tokens per concept and stratum) is counted from the
shards' labels too (:class:`~workbench.stratified.MantelHaenszelLayout`), so nothing per token is kept but the
strata codes.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
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
from workbench.label_shards import LabelShards, TokenBlock, token_block, token_scope_index
from workbench.stratified import DENSE_FRACTION, MantelHaenszelLayout, MantelHaenszelSums, columns_from_test

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import scipy.sparse as sp

    from workbench.concepts import ConceptLabels
    from workbench.store import ActivationStore

__all__ = ["associate_streaming", "feature_maxima", "verdicts_streaming", "ShardFeatures", "on_device", "NULL_MEMORY"]

NULL_MEMORY = 1 << 30
"""Default bytes of permutation counts held at once (``thresholds x features x concepts`` float64 arrays per
permutation); permutations beyond it take another read of the shards."""


def _shard_values(store: ActivationStore, sae: Any, shard: int, layer: int, batch_size: int,
                  cache: Path | None = None) -> sp.csr_matrix | np.ndarray:
    """One shard's feature values before normalisation. SAE codes are kept in ``cache`` (a folder; one ``.npz`` per
    shard) the first time, so the later passes read them instead of encoding the shard again; neurons are read from
    the store itself."""
    if sae is None:
        return shard_neurons(store, shard, layer=layer)
    if cache is None:
        return shard_codes(store, sae, shard, layer=layer, batch_size=batch_size)
    import scipy.sparse as sp

    path = cache / f"shard-{shard:05d}.npz"
    if path.is_file():
        return sp.load_npz(path).tocsr()
    values = shard_codes(store, sae, shard, layer=layer, batch_size=batch_size)
    tmp = cache / f".shard-{shard:05d}.tmp-{os.getpid()}.npz"  # ranks may encode the same shard at once
    sp.save_npz(tmp, values, compressed=False)
    os.replace(tmp, path)
    return values


def _column_max(values: sp.csr_matrix | np.ndarray, n: int) -> np.ndarray:
    if values.shape[0] == 0:
        return np.zeros(n, dtype=np.float32)
    if isinstance(values, np.ndarray):
        return values.max(0).astype(np.float32)
    return np.asarray(values.max(axis=0).todense(), dtype=np.float32).ravel()


def feature_maxima(store: ActivationStore, *, layer: int, sae: Any | None = None, batch_size: int = 8192,
                   dist: Dist | None = None, cache: Path | None = None) -> np.ndarray:
    """Per-feature maximum activation over the store (SAE codes, or the neurons' positive part when ``sae`` is None);
    this rank's shards, all-reduced with max across ranks. ``cache``: a folder that keeps the codes for later passes."""
    dist = dist or Dist()
    if cache is not None and sae is not None:  # codes of exactly this store, layer and SAE (see _claim_cache)
        _claim_cache(cache, store, sae, layer, batch_size)
    n = sae.cfg.width if sae is not None else store.d_model
    maxima = np.zeros(n, dtype=np.float32)
    for i in range(dist.rank, len(store.shards), dist.world_size):
        maxima = np.maximum(maxima, _column_max(_shard_values(store, sae, i, layer, batch_size, cache), n))
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
    labels: ConceptLabels | LabelShards,
    *,
    layer: int,
    sae: Any | None = None,
    thresholds: Sequence[float] = THRESHOLDS,
    split_seed: int = 0,
    n_permutations: int = 0,
    seed: int = 0,
    top_per_threshold: int = 5,
    batch_size: int = 8192,
    null_memory: int = NULL_MEMORY,
    code_cache: bool | str | os.PathLike[str] = True,
    strata: np.ndarray | None = None,
    maxima: np.ndarray | None = None,
    device: str | None = None,
) -> Association:
    """:func:`~workbench.associate.associate_store` computed shard by shard (module docstring): the same tables, with
    memory bounded by a few shards plus the counts. Run under ``torchrun`` to split the shards (and the permutations)
    across processes; every rank returns the same :class:`~workbench.associate.Association`. ``null_memory`` bounds
    the permutation counts held at once (bytes): more permutations per read of the shards when it is larger.
    ``code_cache``: the SAE codes of each shard are written once (``True``: a temporary folder removed at the end; a
    path: that folder, kept; ``False``: none, every pass encodes again) and read back by the later passes; on disk they
    take about ``8 x L0`` bytes per token. ``strata`` (one code per token) adds the stratified test, as in
    :func:`~workbench.associate.associate`. ``maxima``: the per-feature maxima when already known
    (:func:`feature_maxima`), which saves their pass. ``device``: where the SAE encodes the shards (``"cuda"``: this
    rank's GPU under torchrun); the counting stays on the host."""
    if strata is not None and len(strata) != labels.n_tokens:
        raise WorkbenchError(f"strata cover {len(strata)} tokens, the labels {labels.n_tokens}")
    if labels.n_tokens != store.n_tokens:
        raise WorkbenchError(f"labels cover {labels.n_tokens} tokens but {store.path} holds {store.n_tokens}")
    if sae is not None:
        _check_sae(store, sae, layer)
        sae = on_device(sae, device)
    names = _names(sae.cfg.width) if sae is not None else [f"u{i:04d}" for i in range(store.d_model)]
    dist = Dist.setup("cpu", keep=True)
    scratch = tempfile.TemporaryDirectory(prefix="workbench-codes-") if code_cache is True and sae is not None else None
    cache = Path(scratch.name) if scratch is not None else (
        Path(code_cache) if code_cache not in (True, False) and sae is not None else None)  # neurons need no encoding
    if cache is not None:
        _claim_cache(cache, store, sae, layer, batch_size)
    try:
        if maxima is None:
            maxima = feature_maxima(store, layer=layer, sae=sae, batch_size=batch_size, dist=dist, cache=cache)
        is_val_seq = sequence_split(store.sequences["sequence_id"].astype(str).tolist(), seed=split_seed)
        token_seq = store.token_sequence()
        scope_names, scope_index = token_scope_index(labels)
        scoped = bool(scope_names)
        starts = np.concatenate([[0], np.cumsum([s.n_tokens for s in store.shards])])
        totals: dict[str, list[dict[str, np.ndarray]]] | None = None
        n_scope_sum = np.zeros(len(scope_index), dtype=np.float64)
        nnz = np.zeros(1)
        for i in range(dist.rank, len(store.shards), dist.world_size):
            a, b = int(starts[i]), int(starts[i + 1])
            values = _normalised(_shard_values(store, sae, i, layer, batch_size, cache), maxima)
            nnz += values.nnz
            is_val = is_val_seq[token_seq[a:b]]
            block = token_block(labels, a, b)
            masks = None if block.scopes is None else block.scopes.astype(np.float32)
            shard = {}
            for name, rows in (("val", np.flatnonzero(is_val)), ("test", np.flatnonzero(~is_val))):
                shard[name] = split_counts(values[rows], block.tokens[rows], block.instances[rows],
                                           None if masks is None else masks[rows], thresholds, scope_index)
            totals = _add(totals, shard)
            if masks is not None:
                n_scope_sum += _scope_counts(masks, scope_index)
        totals = _reduce_counts(totals, dist, len(thresholds), len(names), labels)
        n_scope = np.full(len(scope_index), labels.n_tokens, dtype=np.int64)
        if scoped:
            n_scope_sum = _all_reduce(n_scope_sum, dist, "sum")
            inside = scope_index >= 0
            n_scope[inside] = n_scope_sum[inside].astype(np.int64)
        is_val_tokens = is_val_seq[token_seq]

        def null(observed: np.ndarray) -> dict[str, np.ndarray]:
            if n_permutations <= 0:
                return null_pvalues(observed, np.zeros((0, len(observed))))
            maxima_null = _null_maxima(store, sae, layer, maxima, batch_size, labels, scoped, scope_index, is_val_tokens,
                                       thresholds, n_permutations, seed, dist, null_memory, cache)
            return null_pvalues(observed, maxima_null)

        dense = float(_all_reduce(nnz, dist, "sum")[0]) > DENSE_FRACTION * max(labels.n_tokens * len(names), 1)

        def stratified(best_t: np.ndarray, keep: np.ndarray, q: np.ndarray) -> pd.DataFrame:
            sums = _stratified_sums(labels, strata, starts, thresholds, best_t, scope_index=scope_index, wanted=keep,
                                    dense=dense, dist=dist)
            for i in range(dist.rank, len(store.shards), dist.world_size):
                a, b = int(starts[i]), int(starts[i + 1])
                block = token_block(labels, a, b)
                sums.add(_normalised(_shard_values(store, sae, i, layer, batch_size, cache), maxima), a,
                         labels=block.tokens, strata=strata[a:b], scopes=block.scopes)
            if dist.world_size > 1:
                states = dist.gather(sums.state())
                sums.sums = {}
                for state in states:
                    sums.merge(state)  # type: ignore[arg-type]
            return columns_from_test(sums.result(), keep, q)

        result = association_from_counts(
            totals, names=names, concepts=labels.token_concepts["concept"].tolist(), n_tokens=labels.n_tokens,
            n_scope=n_scope, scoped=scoped, thresholds=thresholds, top_per_threshold=top_per_threshold,
            params={"split_seed": split_seed, "n_permutations": n_permutations, "seed": seed,
                    "stratified": strata is not None},
            null=null, strata=None if strata is None else stratified,
        )
    finally:
        dist.close()
        if scratch is not None:
            scratch.cleanup()
    result.params.update({"store": str(store.path), "model": store.model, "layer": layer,
                          "features": "sae" if sae is not None else "neurons", "streamed": True,
                          "world_size": dist.world_size})
    return result


def on_device(sae: Any, device: str | None) -> Any:
    """``sae`` itself when ``device`` is None or where its weights are; else a copy moved there (``"cuda"``: this
    rank's GPU under torchrun), so the caller's SAE stays where it was."""
    if device is None:
        return sae
    import copy

    import torch

    from workbench._dist import local_device

    target = torch.device(local_device(device))
    current = next(sae.parameters(), torch.empty(0)).device
    if current == target or (target.type == current.type and target.index is None):
        return sae
    return copy.deepcopy(sae).to(target)


class ShardFeatures:
    """One representation's normalised feature values shard by shard: SAE codes (``sae``) or the neurons' positive
    part (``sae`` None) of ``store`` at ``layer``, divided by the whole store's per-feature maxima (``maxima``, or
    computed by :func:`feature_maxima`); SAE codes are kept in ``cache`` (a folder) after the first encoding.
    ``device``: where the SAE encodes (``"cuda"`` on a GPU; the codes come back to the host)."""

    def __init__(self, store: ActivationStore, layer: int, sae: Any | None = None, *, maxima: np.ndarray | None = None,
                 cache: Path | None = None, batch_size: int = 8192, dist: Dist | None = None,
                 device: str | None = None) -> None:
        if sae is not None:
            _check_sae(store, sae, layer)
            sae = on_device(sae, device)
        self.store, self.layer, self.sae, self.batch_size = store, layer, sae, batch_size
        self.cache = cache if sae is not None else None
        if self.cache is not None:
            _claim_cache(self.cache, store, sae, layer, batch_size)
        self.maxima = maxima if maxima is not None else feature_maxima(store, layer=layer, sae=sae, batch_size=batch_size,
                                                                       dist=dist, cache=self.cache)
        self.names = _names(sae.cfg.width) if sae is not None else [f"u{i:04d}" for i in range(store.d_model)]
        self.starts = np.concatenate([[0], np.cumsum([s.n_tokens for s in store.shards])]).astype(np.int64)

    def shard(self, i: int) -> sp.csr_matrix:
        """Shard ``i``'s ``tokens x features`` values, each feature divided by its maximum."""
        return _normalised(_shard_values(self.store, self.sae, i, self.layer, self.batch_size, self.cache), self.maxima)


def verdicts_streaming(store: ActivationStore, labels: ConceptLabels | LabelShards, representations: dict[str, tuple[ShardFeatures, Association]],
                       *, reference: str = "sae", n_boot: int = 1000, ci: float = 0.95, seed: int = 0,
                       split_seed: int = 0) -> pd.DataFrame:
    """:func:`~workbench.verdicts.concept_verdicts` shard by shard: the per-test-sequence counts of each concept's
    chosen feature (:func:`~workbench.verdicts.block_counts`) add up over shards (a sequence lies in one shard), and
    the bootstrap runs on their sums; under ``torchrun`` every rank counts its shards and the sums are all-reduced.
    ``representations`` maps a name to its :class:`ShardFeatures` (on a store with the same tokens) and its
    streamed association. The table equals the in-memory one."""
    from workbench.verdicts import _test_tokens, add_counts, block_counts, verdicts_from_counts

    concepts = labels.token_concepts["concept"].astype(str).tolist()
    for name, (features, assoc) in representations.items():
        if assoc.params.get("split_seed") != split_seed:
            raise WorkbenchError(f"association {name!r} used split_seed {assoc.params.get('split_seed')}, not {split_seed}")
        if features.store.n_tokens != labels.n_tokens:
            raise WorkbenchError(f"features {name!r} cover {features.store.n_tokens} tokens, labels {labels.n_tokens}")
    tok_test, n_test = _test_tokens(store.sequences["sequence_id"].astype(str).tolist(), store.token_sequence(), split_seed)
    scope_index = token_scope_index(labels)[1]
    starts = np.concatenate([[0], np.cumsum([s.n_tokens for s in store.shards])])
    dist = Dist.setup("cpu", keep=True)
    try:
        total = None
        for i in range(dist.rank, len(store.shards), dist.world_size):
            a, b = int(starts[i]), int(starts[i + 1])
            reps = {name: (f.shard(i), f.names, assoc.best) for name, (f, assoc) in representations.items()}
            block = token_block(labels, a, b)
            total = add_counts(total, block_counts(reps, block.tokens, block.instances, block.scopes, scope_index,
                                                   tok_test[a:b], n_test))
        if total is None:  # a rank without shards
            def zeros() -> np.ndarray:
                return np.zeros((len(concepts), n_test), dtype=np.float32)

            total = {"n_labelled": zeros(), "n_instances": zeros(),
                     **{name: {k: zeros() for k in ("tp", "n_active", "hit")} for name in representations}}
        for key, value in total.items():
            if isinstance(value, dict):
                for k in value:
                    value[k] = _all_reduce(value[k], dist, "sum").astype(np.float32)
            else:
                total[key] = _all_reduce(value, dist, "sum").astype(np.float32)
    finally:
        dist.close()
    return verdicts_from_counts(total, {name: assoc for name, (_, assoc) in representations.items()}, concepts,
                                reference=reference, n_boot=n_boot, ci=ci, seed=seed)


def _null_maxima(store: ActivationStore, sae: Any, layer: int, maxima: np.ndarray, batch_size: int,
                 labels: ConceptLabels | LabelShards,
                 scoped: bool, scope_index: np.ndarray, is_val: np.ndarray, thresholds: Sequence[float],
                 n_permutations: int, seed: int, dist: Dist, memory: int, cache: Path | None = None) -> np.ndarray:
    """Per permutation and concept, the best validation F1 over features and thresholds with the labels shifted by
    the permutation's shift: :func:`workbench.associate._permutation_null`'s maxima, computed over span-closed chunks
    (module docstring). This rank computes permutations ``rank, rank + N, ...``, as many at a time as their counts fit
    in ``memory`` bytes (one read of the shards per group); the others' rows are all-reduced in."""
    n = labels.n_tokens
    rng = np.random.default_rng(seed)
    shifts = [int(rng.integers(1, n)) for _ in range(n_permutations)]  # the in-memory path's draws, in its order
    mine = list(range(dist.rank, n_permutations, dist.world_size))
    n_con = len(labels.token_concepts)
    out = np.zeros((n_permutations, n_con))
    seqs = store.sequences
    shard_starts = np.concatenate([[0], np.cumsum([s.n_tokens for s in store.shards])])
    seq_starts = np.sort(shard_starts[seqs["shard"].to_numpy()] + seqs["offset"].to_numpy())
    n_features = len(maxima)
    per_permutation = len(thresholds) * n_features * n_con * (3 if scoped else 2) * 8  # tp, hits, scoped
    group = max(1, int(memory // max(per_permutation, 1)))
    for start in range(0, len(mine), group):  # one read of the shards per group of permutations
        _null_group(mine[start : start + group], shifts, store, sae, layer, maxima, batch_size, labels, scoped,
                    scope_index, is_val, thresholds, shard_starts, seq_starts, out, cache)
    return _all_reduce(out, dist, "sum")


def _null_group(mine: list[int], shifts: list[int], store: ActivationStore, sae: Any, layer: int, maxima: np.ndarray,
                batch_size: int, labels: ConceptLabels | LabelShards, scoped: bool, scope_index: np.ndarray,
                is_val: np.ndarray, thresholds: Sequence[float], shard_starts: np.ndarray, seq_starts: np.ndarray,
                out: np.ndarray, cache: Path | None = None) -> None:
    """The maxima of permutations ``mine`` (rows of ``out``) from one read of the shards."""
    from workbench.associate import _f1

    n, n_con = labels.n_tokens, len(labels.token_concepts)
    if mine:
        tasks = []  # (perm, activation rows as one or two linear ranges)
        for i in mine:
            for lo, hi in _chunks(shard_starts, seq_starts, shifts[i], n):
                tasks.append((i, lo, hi))
        counts: dict[int, list[dict[str, np.ndarray]]] = {}
        window = _ShardWindow(store, sae, layer, maxima, batch_size, shard_starts, cache)
        head_end = max((hi - n for _, lo, hi in tasks if hi > n), default=0)
        head = window.rows(0, head_end) if head_end else None  # the wrapped chunks' rows past the end, read once
        ordered = sorted(tasks, key=lambda t: (t[2], t[1], t[0]))  # by end: shards are read once, in order
        still_needed = np.minimum.accumulate(np.array([t[1] for t in ordered] + [n])[::-1])[::-1]
        for j, (i, lo, hi) in enumerate(ordered):
            rows = np.arange(lo, hi) % n
            values = window.rows(lo, min(hi, n))
            if hi > n:
                import scipy.sparse as sp

                values = sp.vstack([values, head[: hi - n]], format="csr")
            window.release_before(int(still_needed[j + 1]))
            val = np.flatnonzero(is_val[rows])
            block = _wrapped_block(labels, (lo - shifts[i]) % n, hi - lo, n)  # where the shifted labels come from
            masks = None if block.scopes is None else block.scopes[val].astype(np.float32)
            part = split_counts(values[val], block.tokens[val], block.instances[val], masks, thresholds, scope_index)
            counts[i] = _add({"val": counts[i]} if i in counts else None, {"val": part})["val"]
        for i in mine:
            best = np.zeros(n_con)
            for c in counts.get(i, []):
                c = {k: np.asarray(v, dtype=_DTYPES[k]) for k, v in c.items()}
                n_act = c["n_active_scoped"] if scoped else c["n_active"]
                f1 = _f1(c["tp"], n_act, c["n_labelled"], c["hit_instances"], c["n_instances"])[3]
                best = np.maximum(best, f1.max(0) if f1.size else 0.0)
            out[i] = best


def _stratified_sums(labels: ConceptLabels | LabelShards, strata: np.ndarray, starts: np.ndarray,
                     thresholds: Sequence[float], chosen: np.ndarray, *, scope_index: np.ndarray, wanted: np.ndarray,
                     dense: bool, dist: Dist) -> MantelHaenszelSums:
    """The stratified test's sums, their layout counted from this rank's shards' labels and merged across ranks
    (nothing per token is kept: each shard's rows are built again when its values are added)."""
    layout = MantelHaenszelLayout()
    for i in range(dist.rank, len(starts) - 1, dist.world_size):
        a, b = int(starts[i]), int(starts[i + 1])
        block = token_block(labels, a, b)
        layout.add_block(block.tokens, strata[a:b], block.scopes)
    if dist.world_size > 1:
        layouts = dist.gather(layout)
        layout = MantelHaenszelLayout()
        for other in layouts:
            layout.merge(other)  # type: ignore[arg-type]
    return MantelHaenszelSums.from_layout(layout, thresholds, chosen, scope_index=scope_index, wanted=wanted, dense=dense)


def _wrapped_block(labels: ConceptLabels | LabelShards, start: int, length: int, n: int) -> TokenBlock:
    """The token labels of rows ``start, start + 1, ...`` (``length`` of them, continuing at row 0 past ``n``)."""
    import scipy.sparse as sp

    if start + length <= n:
        return token_block(labels, start, start + length)
    head, tail = token_block(labels, start, n), token_block(labels, 0, start + length - n)
    return TokenBlock(sp.vstack([head.tokens, tail.tokens], format="csr"),
                      sp.vstack([head.instances, tail.instances], format="csr"),
                      None if head.scopes is None else np.concatenate([head.scopes, tail.scopes]))


def _chunks(shard_starts: np.ndarray, seq_starts: np.ndarray, shift: int, n: int) -> list[tuple[int, int]]:
    """Activation rows of the span-closed chunks for one shift: ``[lo, hi)`` with ``hi`` up to ``2 n`` (a chunk past
    the end continues at row 0). Boundaries are the starts of shifted sequences ``(start + shift) % n`` nearest at or
    after each shard start, so every shifted sequence (and span) lies in one chunk."""
    shifted = np.sort((seq_starts + shift) % n)
    bounds = set()
    for a in shard_starts[:-1]:
        j = np.searchsorted(shifted, a)
        bounds.add(int(shifted[j]) if j < len(shifted) else int(shifted[0]))
    b = sorted(bounds)
    return [(b[k], b[k + 1] if k + 1 < len(b) else b[0] + n) for k in range(len(b))]


class _ShardWindow:
    """Normalised feature values of consecutive shards, read in order and dropped once no chunk needs them."""

    def __init__(self, store: ActivationStore, sae: Any, layer: int, maxima: np.ndarray, batch_size: int,
                 shard_starts: np.ndarray, cache: Path | None = None) -> None:
        self.store, self.sae, self.layer, self.maxima, self.batch_size = store, sae, layer, maxima, batch_size
        self.cache = cache
        self.starts = shard_starts
        self.loaded: dict[int, Any] = {}

    def _shard(self, k: int) -> Any:
        if k not in self.loaded:
            self.loaded[k] = _normalised(_shard_values(self.store, self.sae, k, self.layer, self.batch_size, self.cache),
                                         self.maxima)
        return self.loaded[k]

    def rows(self, lo: int, hi: int) -> Any:
        """Rows ``[lo, hi)`` of the store (within ``0..n``) as one CSR matrix."""
        import scipy.sparse as sp

        first = int(np.searchsorted(self.starts, lo, side="right")) - 1
        parts = []
        k = first
        while k < len(self.starts) - 1 and self.starts[k] < hi:
            a, b = int(self.starts[k]), int(self.starts[k + 1])
            parts.append(self._shard(k)[max(lo, a) - a : min(hi, b) - a])
            k += 1
        return sp.vstack(parts, format="csr") if len(parts) != 1 else sp.csr_matrix(parts[0])

    def release_before(self, row: int) -> None:
        """Drop the shards that end at or before ``row``."""
        for k in [k for k in self.loaded if self.starts[k + 1] <= row]:
            del self.loaded[k]


def _claim_cache(cache: Path, store: ActivationStore, sae: Any, layer: int, batch_size: int) -> None:
    """Make ``cache`` hold codes of exactly this store, layer and SAE: a folder left by another one is emptied first
    (its key, a hash of the store's manifest, the layer, the batch size and the SAE's weights, is kept beside)."""
    import hashlib
    import json

    h = hashlib.sha256(f"{store.manifest_sha256()}:{layer}:{batch_size}".encode())
    for name, tensor in sorted(sae.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    key = h.hexdigest()
    cache.mkdir(parents=True, exist_ok=True)
    marker = cache / "cache.json"
    try:
        same = json.loads(marker.read_text()).get("key") == key
    except (OSError, ValueError):
        same = False
    if not same:
        for old in cache.glob("*shard-*.npz"):
            old.unlink(missing_ok=True)
        marker.write_text(json.dumps({"key": key, "store": str(store.path), "layer": layer}))


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
                   labels: ConceptLabels | LabelShards) -> dict[str, list[dict[str, np.ndarray]]]:
    """Sum the counts of every rank (a rank without shards contributes zeros of the right shapes)."""
    n_con = len(labels.token_concepts)
    shapes = {"tp": (n_features, n_con), "n_active": (n_features,), "n_labelled": (n_con,),
              "hit_instances": (n_features, n_con), "n_instances": (n_con,), "n_active_scoped": (n_features, n_con)}
    scoped = bool(token_scope_index(labels)[0])
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
