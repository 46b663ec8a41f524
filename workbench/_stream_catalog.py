"""The catalog's parts (:class:`workbench.catalog.CatalogParts`) computed shard by shard, never holding the store's
``tokens x features`` matrix.

One pass over the shards pools each sequence's maximum and mean activation of every feature (a sequence lies in one
shard, so the pooled rows of the shards stack into the store's), counts each feature's active tokens, the sequences
it fires in and its activation mass on each profile group's values (:class:`~workbench.describe.FeatureStats`, sums
over shards), and feeds the pooled maxima to :class:`~workbench._stream_examples.StreamingExamples` (top examples
exactly as in memory; quantile-bin examples from a uniform reservoir). A second pass copies the chosen examples'
per-token activations. Under ``torchrun`` each rank reads its shards and the ranks' parts are gathered.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench._catalog_build import Layout, pool_sequences, quantize
from workbench._dist import Dist
from workbench.errors import StoreError
from workbench.label_shards import LabelShards, token_block

if TYPE_CHECKING:  # pragma: no cover
    from workbench.catalog import CatalogParts
    from workbench.concepts import ConceptLabels
    from workbench.store import ActivationStore
    from workbench.stream_associate import ShardFeatures

__all__ = ["catalog_parts_streaming", "layout_by_shard", "sequence_mass"]


def layout_by_shard(store: ActivationStore) -> Layout:
    """:func:`~workbench._catalog_build.token_layout` read one shard's residues at a time."""
    import pandas as pd

    seqs = store.sequences
    ids = seqs["sequence_id"].astype(str).tolist()
    lengths = seqs["n_tokens"].to_numpy(dtype=np.int64)
    starts = np.r_[0, np.cumsum(lengths)[:-1]].astype(np.int64) if len(ids) else np.zeros(0, dtype=np.int64)
    token_sequence = np.repeat(np.arange(len(ids), dtype=np.int64), lengths)
    if int(lengths.sum()) != store.n_tokens:
        raise StoreError(f"{store.path}: the sequences hold {int(lengths.sum())} tokens, the manifest says {store.n_tokens}")
    if "residue" not in store.obs_columns:
        return Layout(ids, token_sequence, starts, lengths, [""] * len(ids), "")
    residues = [store.shard_obs(i, ["residue"])["residue"].astype(str).to_numpy() for i in range(len(store.shards))]
    separator = "" if all(len(r) == 1 for part in residues for r in pd.unique(part)) else " "
    sequences: list[str] = []
    for i, part in enumerate(residues):
        info = store.shards[i]
        local = seqs.iloc[info.first_sequence: info.first_sequence + info.n_sequences]
        for offset, n in zip(local["offset"].tolist(), local["n_tokens"].tolist()):
            sequences.append(separator.join(part[offset: offset + n]))
    return Layout(ids, token_sequence, starts, lengths, sequences, separator)


def _shard_rows(store: ActivationStore) -> np.ndarray:
    return np.concatenate([[0], np.cumsum([s.n_tokens for s in store.shards])]).astype(np.int64)


def catalog_parts_streaming(store: ActivationStore, features: ShardFeatures, labels: ConceptLabels | LabelShards, *,
                            profile_groups: Sequence[str] = ("region", "imgt"), n_top: int = 10, n_per_bin: int = 2,
                            example_quantiles: Sequence[float] | None = None, seed: int = 0,
                            keep: np.ndarray | None = None, dist: Dist | None = None) -> CatalogParts:
    """The :class:`~workbench.catalog.CatalogParts` of ``features`` on ``store`` (module docstring).

    ``keep`` (store sequence indices) limits the catalog's sequences (its rows) to those plus every example
    sequence, and its pooled activations (``X``, the means) to those: an example-only row is empty (the example
    carries its own per-token activations), so the catalog grows with the features and the sample, not the store.
    None keeps and pools every sequence. Statistics (active tokens, sequences fired in, profiles, examples) cover
    the whole store either way."""
    import scipy.sparse as sp

    from workbench._stream_examples import StreamingExamples
    from workbench.catalog import EXAMPLE_QUANTILES, CatalogParts
    from workbench.describe import FeatureStats

    dist = dist or Dist()
    quantiles = EXAMPLE_QUANTILES if example_quantiles is None else example_quantiles
    layout = layout_by_shard(store)
    n_feat = len(features.names)
    rows = _shard_rows(store)
    stats = FeatureStats(labels, n_feat, profile_groups=profile_groups, n_sequences=len(layout.sequence_ids))
    examples = StreamingExamples(n_feat, n_top=n_top, n_per_bin=n_per_bin, quantiles=quantiles, seed=seed)
    for i in range(dist.rank, len(store.shards), dist.world_size):
        values = features.shard(i)
        x_max, local_seq = _pooled(store, values, layout, rows, i)[0::2]
        block = token_block(labels, int(rows[i]), int(rows[i + 1])) if isinstance(labels, LabelShards) else None
        stats.add(values, int(rows[i]), local_seq, block=block)
        examples.add(x_max, store.shards[i].first_sequence)
    if dist.world_size > 1:
        for r, state in enumerate(dist.gather((_stats_state(stats), examples.state()))):
            if r == dist.rank:
                continue
            other_stats, other_examples = state  # type: ignore[misc]
            _merge_stats(stats, other_stats)
            examples.merge(StreamingExamples.from_state(other_examples))
    picked = examples.result()
    n_seq = len(layout.sequence_ids)
    chosen = np.arange(n_seq) if keep is None else np.union1d(np.asarray(keep, dtype=np.int64), picked["sequence"])
    # Second pass: the chosen sequences' pooled rows (empty for a sequence held only as an example: its activations
    # travel with the example) and the examples' per-token activations.
    wanted = np.zeros(n_seq, dtype=bool)
    wanted[chosen] = True
    pooled = np.zeros(n_seq, dtype=bool)
    pooled[np.arange(n_seq) if keep is None else np.asarray(keep, dtype=np.int64)] = True
    blocks: dict[int, tuple[Any, Any]] = {}
    offsets, lengths, flat = _example_slots(picked, layout)
    for i in range(dist.rank, len(store.shards), dist.world_size):
        info = store.shards[i]
        values = features.shard(i)
        x_max, x_mean, _ = _pooled(store, values, layout, rows, i)
        span = slice(info.first_sequence, info.first_sequence + info.n_sequences)
        blank = sp.diags((pooled[span] | ~wanted[span]).astype(np.float32))  # zero the example-only rows
        x_max, x_mean = sp.csr_matrix(blank @ x_max), sp.csr_matrix(blank @ x_mean)
        x_max.eliminate_zeros()
        x_mean.eliminate_zeros()
        blocks[i] = (x_max[wanted[span]], x_mean[wanted[span]])
        _pack_shard(flat, offsets, picked, values, layout, int(rows[i]), info.first_sequence, info.n_sequences)
    if dist.world_size > 1:
        for r, (other_blocks, other_flat) in enumerate(dist.gather((blocks, flat))):  # type: ignore[misc]
            if r != dist.rank:
                blocks.update(other_blocks)
                np.maximum(flat, other_flat, out=flat)
    empty = sp.csr_matrix((0, n_feat), dtype=np.float32)
    x_max = sp.vstack([blocks[i][0] for i in range(len(store.shards))] or [empty], format="csr")
    x_mean = sp.vstack([blocks[i][1] for i in range(len(store.shards))] or [empty], format="csr")
    if keep is not None:  # the catalog's own sequences: a layout of those, examples pointing at their rows
        picked = {**picked, "sequence": np.searchsorted(chosen, picked["sequence"])}
        layout = Layout([layout.sequence_ids[i] for i in chosen], np.zeros(0, dtype=np.int64), layout.starts[chosen],
                        layout.lengths[chosen], [layout.sequences[i] for i in chosen], layout.separator)
    return CatalogParts(layout, x_max, x_mean, stats, np.asarray(features.maxima, dtype=np.float32),
                        list(features.names), picked, offsets, lengths, flat, None if keep is None else chosen,
                        None if keep is None else pooled[chosen])


def _pooled(store: ActivationStore, values: Any, layout: Layout, rows: np.ndarray, i: int) -> tuple[Any, Any, np.ndarray]:
    """Shard ``i``'s per-sequence max and mean of every feature, and its tokens' sequences (shard-local)."""
    info = store.shards[i]
    first, n_seq = info.first_sequence, info.n_sequences
    local_seq = layout.token_sequence[rows[i]: rows[i + 1]] - first
    x_max, x_mean = pool_sequences(values, local_seq, layout.lengths[first: first + n_seq])
    return x_max, x_mean, local_seq


def _stats_state(stats: Any) -> dict[str, Any]:
    return {"nnz": stats.nnz, "fires_in": stats.fires_in, "mass": stats.mass,
            "profiles": {g: (p.mass, p.total, p.scoped, p.lab_sum, p.n_rows) for g, p in stats.profiles.items()}}


def _merge_stats(stats: Any, other: dict[str, Any]) -> None:
    stats.nnz += other["nnz"]
    stats.mass += other["mass"]
    if stats.fires_in is not None:
        stats.fires_in += other["fires_in"]
    for g, (mass, total, scoped, lab_sum, n_rows) in other["profiles"].items():
        p = stats.profiles[g]
        p.mass, p.total, p.scoped = p.mass + mass, p.total + total, p.scoped + scoped
        p.lab_sum, p.n_rows = p.lab_sum + lab_sum, p.n_rows + n_rows


def _example_slots(picked: dict[str, np.ndarray], layout: Layout) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Offsets and lengths of every example's tokens in the packed array, and the array (zeros)."""
    lengths = layout.lengths[picked["sequence"]]
    offsets = np.r_[0, np.cumsum(lengths)[:-1]].astype(np.int64) if len(lengths) else np.zeros(0, dtype=np.int64)
    return offsets, lengths.astype(np.int32), np.zeros(int(lengths.sum()), dtype=np.uint8)


def _pack_shard(flat: np.ndarray, offsets: np.ndarray, picked: dict[str, np.ndarray], values: Any, layout: Layout,
                first_row: int, first_sequence: int, n_sequences: int) -> None:
    """:func:`~workbench._catalog_build.pack_activations` for the examples whose sequence lies in one shard."""
    feat, seq = picked["feature"], picked["sequence"]
    mine = np.flatnonzero((seq >= first_sequence) & (seq < first_sequence + n_sequences))
    if len(mine) == 0:
        return
    csc = values.tocsc()
    csc.sort_indices()
    order = mine[np.argsort(feat[mine], kind="stable")]
    slot = np.full(len(layout.lengths), -1, dtype=np.int64)
    bounds = np.flatnonzero(np.r_[True, feat[order][1:] != feat[order][:-1], True])
    for a, b in zip(bounds[:-1], bounds[1:]):
        hits = order[a:b]
        j = int(feat[hits[0]])
        slot[seq[hits]] = hits
        s, e = csc.indptr[j], csc.indptr[j + 1]
        token = csc.indices[s:e] + first_row
        ts = layout.token_sequence[token]
        k = slot[ts]
        hit = k >= 0
        flat[offsets[k[hit]] + token[hit] - layout.starts[ts[hit]]] = quantize(csc.data[s:e][hit])
        slot[seq[hits]] = -1


def sequence_mass(store: ActivationStore, features: ShardFeatures, wanted: Sequence[int], *,
                  dist: Dist | None = None) -> np.ndarray:
    """``(len(wanted), n_sequences)``: each wanted feature's summed activation in every sequence, shard by shard."""
    dist = dist or Dist()
    rows = _shard_rows(store)
    out = np.zeros((len(wanted), store.n_sequences))
    if not len(wanted):
        return out
    cols = np.asarray(wanted, dtype=np.int64)
    for i in range(dist.rank, len(store.shards), dist.world_size):
        info = store.shards[i]
        sub = features.shard(i)[:, cols].tocsc()
        lengths = store.sequences["n_tokens"].to_numpy()[info.first_sequence: info.first_sequence + info.n_sequences]
        local_seq = np.repeat(np.arange(info.n_sequences), lengths)
        if len(local_seq) != rows[i + 1] - rows[i]:
            raise StoreError(f"{store.shard_dir(i)}: its sequences hold {len(local_seq)} tokens, the shard {rows[i + 1] - rows[i]}")
        for k in range(len(cols)):
            s, e = sub.indptr[k], sub.indptr[k + 1]
            out[k, info.first_sequence: info.first_sequence + info.n_sequences] += np.bincount(
                local_seq[sub.indices[s:e]], weights=sub.data[s:e], minlength=info.n_sequences)
    if dist.world_size > 1:
        import torch

        t = torch.from_numpy(out)
        dist.all_reduce_(t, op="sum")
        out = t.numpy()
    return out
