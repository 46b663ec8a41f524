"""Each feature's catalog examples chosen from a stream of blocks of sequences, in memory bounded by the features.

:func:`workbench._catalog_build.select_examples` needs the whole ``sequences x features`` matrix of per-sequence
maxima. :class:`StreamingExamples` sees it one block of rows at a time (one store shard, say) and keeps per feature

* the ``n_top`` largest ``(value, sequence)`` pairs, ties going to the smaller sequence index: exactly
  ``select_examples``' top examples, whatever the blocks;
* a uniform sample without replacement of ``reservoir`` of the pairs where the feature fires (value > 0), by
  weighted keys with equal weights (A-Res): every pair gets a pseudo-random 64-bit key and the ``reservoir`` pairs
  with the largest keys are kept. The key is a bijective hash (SplitMix64) of ``(seed, sequence, feature)``, so it
  depends on neither the block boundaries nor the order of the blocks nor the process that read them: the state
  after any split of the rows into blocks, read in any order by any number of instances and merged, is identical;
* the number of sequences where the feature fires.

:meth:`StreamingExamples.result` builds ``select_examples``' output: the tops, then per quantile bin ``n_per_bin``
seeded picks among the reservoir pairs that are not tops, with bin edges the quantiles of the reservoir's values.
A feature that fires in at most ``reservoir`` sequences has all of them in its reservoir, and then the whole output
equals ``select_examples``' (same edges, same random draws); beyond that the edges are estimates from a uniform sample
of ``reservoir`` values (a quantile ``p`` estimated to about ``sqrt(p (1 - p) / reservoir)`` in rank).

Memory: ``O(n_features * (n_top + reservoir))`` kept pairs plus a buffer of candidates at most as large (and at least
``2**18``, plus one block), compacted (one sort) when it outgrows the kept pairs; between compactions a block's
entries are filtered against the last compaction's per-feature thresholds, which admits too many but never loses one.
Everything is vectorised over features; only :meth:`~StreamingExamples.result` loops, once per (feature, bin) with
candidates, to draw the picks from the one generator as ``select_examples`` does. The state is plain numpy arrays
(:meth:`~StreamingExamples.state`, also what pickling ships), fit for ``torch.distributed.all_gather_object``.

Entries with a value <= 0 (explicit zeros) are not firing and are ignored, unlike ``select_examples`` which takes
every stored entry; the pooled maxima of a ReLU-type SAE have no such entries.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench.errors import WorkbenchError

if TYPE_CHECKING:  # pragma: no cover
    import scipy.sparse as sp

__all__ = ["StreamingExamples"]

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB
_MIN_PENDING = 1 << 18
"""Candidates buffered before a compaction even when few pairs are kept (so small blocks do not each sort)."""


def _mix_int(z: int) -> int:
    """SplitMix64's finaliser on a python int (a bijection of 64-bit words)."""
    z &= _MASK
    z = ((z ^ (z >> 30)) * _M1) & _MASK
    z = ((z ^ (z >> 27)) * _M2) & _MASK
    return z ^ (z >> 31)


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 arrays (numpy array arithmetic wraps modulo 2**64)."""
    z = z ^ (z >> np.uint64(30))
    z *= np.uint64(_M1)
    z ^= z >> np.uint64(27)
    z *= np.uint64(_M2)
    z ^= z >> np.uint64(31)
    return z


def _check_quantiles(quantiles: Sequence[float]) -> np.ndarray:
    q = np.asarray(quantiles, dtype=np.float64)
    if q.ndim != 1 or len(q) < 2 or q[0] != 0 or q[-1] != 1 or np.any(np.diff(q) <= 0):
        raise WorkbenchError(f"example quantiles must rise from 0 to 1, not {list(quantiles)}")
    return q


def _count(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise WorkbenchError(f"{name} must be an integer >= {low}, not {value!r}")
    return int(value)


def _bits(n: int) -> int:
    return max(int(n - 1).bit_length(), 1) if n > 1 else 1


def _order(group: np.ndarray, n_groups: int, primary: np.ndarray, tiebreak: np.ndarray) -> np.ndarray:
    """The permutation sorting by ``(group, primary, tiebreak)`` ascending (``group`` in ``[0, n_groups)``, ``primary``
    uint64), deterministic.

    A value sort is much faster than an index sort in numpy, so the group, the leading bits of ``primary`` and the
    entry's index are packed into one uint64 and sorted; entries whose group and leading bits tie are then put in
    order by the full ``primary`` and ``tiebreak`` (few: at least 14 leading bits are compared).
    """
    n = len(group)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    gb, ib = _bits(n_groups), _bits(n)
    kb = 64 - gb - ib
    if kb < 14:  # pragma: no cover - beyond a billion entries or a million features
        return np.lexsort((tiebreak, primary, group))
    top = int(primary.max()).bit_length()
    lead = (primary << np.uint64(64 - top)) >> np.uint64(64 - kb) if top else np.zeros(n, dtype=np.uint64)
    packed = (group.astype(np.uint64) << np.uint64(64 - gb)) | (lead << np.uint64(ib))
    packed |= np.arange(n, dtype=np.uint64)
    packed.sort()
    perm = (packed & np.uint64((1 << ib) - 1)).astype(np.int64)
    high = packed >> np.uint64(ib)
    eq = high[1:] == high[:-1]
    if np.any(eq):
        at = np.flatnonzero(np.r_[eq, False] | np.r_[False, eq])
        sub = perm[at]
        perm[at] = sub[np.lexsort((tiebreak[sub], primary[sub], high[at]))]
    return perm


def _descending(val: np.ndarray) -> np.ndarray:
    """uint64 words that sort ascending as the positive floats ``val`` sort descending."""
    if val.dtype == np.float32:
        return (~val.view(np.uint32)).astype(np.uint64) << np.uint64(32)
    return ~val.astype(np.float64).view(np.uint64)


def _group_rank(feat: np.ndarray) -> np.ndarray:
    """Position of each entry within its run of equal ``feat`` (``feat`` sorted)."""
    n = len(feat)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    start = np.flatnonzero(np.r_[True, feat[1:] != feat[:-1]])
    return np.arange(n, dtype=np.int64) - np.repeat(start, np.diff(np.r_[start, n]))


class _Kept:
    """Per-feature kept pairs as flat arrays sorted by feature then the keep order, plus a buffer of candidates."""

    fields: tuple[str, ...]

    def __init__(self, fields: dict[str, np.dtype], capacity: int, n_features: int) -> None:
        self.fields = tuple(fields)
        self.dtypes = dict(fields)
        self.capacity = capacity
        self.n_features = n_features
        self.kept = {k: np.zeros(0, dtype=dt) for k, dt in fields.items()}
        self.pending: list[dict[str, np.ndarray]] = []
        self.n_pending = 0
        self.full = np.zeros(n_features, dtype=bool)
        """Features holding ``capacity`` pairs at the last compaction; their last pair is the threshold."""
        self.last = np.zeros(n_features, dtype=np.int64)
        """Index into ``kept`` of each full feature's last pair."""

    def push(self, arrays: dict[str, np.ndarray]) -> None:
        n = len(arrays["feat"])
        if n:
            self.pending.append({k: np.asarray(arrays[k], dtype=self.dtypes[k]) for k in self.fields})
            self.n_pending += n

    def due(self) -> bool:
        return self.n_pending > max(len(self.kept["feat"]), _MIN_PENDING)

    def compact(self, order_of: Any, what: str) -> None:
        if not self.pending:
            return
        parts = [self.kept, *self.pending]
        allv = {k: np.concatenate([p[k] for p in parts]) for k in self.fields}
        order = order_of(allv)
        allv = {k: v[order] for k, v in allv.items()}
        feat, seq = allv["feat"], allv["seq"]
        same = (feat[1:] == feat[:-1]) & (seq[1:] == seq[:-1])
        if np.any(same):
            i = int(np.flatnonzero(same)[0])
            raise WorkbenchError(f"sequence {int(seq[i])} was added twice for feature {int(feat[i])} ({what}): blocks"
                                 " overlap, or one instance was merged twice")
        keep = _group_rank(feat) < self.capacity
        self.kept = {k: v[keep] for k, v in allv.items()}
        self.pending, self.n_pending = [], 0
        feat = self.kept["feat"]
        counts = np.bincount(feat, minlength=self.n_features)
        self.full = counts >= self.capacity
        self.last = np.cumsum(counts) - 1

    def rows(self) -> np.ndarray:
        """``indptr`` of the kept pairs by feature."""
        return np.searchsorted(self.kept["feat"], np.arange(self.n_features + 1))


class StreamingExamples:
    """Top and quantile-bin examples of each feature from blocks of per-sequence maxima (see the module doc).

    ``add(block, first_sequence)`` takes a ``sequences x features`` CSR block whose rows are the global sequences
    ``first_sequence, first_sequence + 1, ...``; ``merge(other)`` folds in another instance's blocks; ``result()``
    gives :func:`~workbench._catalog_build.select_examples`' dict and ``n_sequences`` how many sequences each feature
    fires in. Blocks must not overlap. Values are kept as ``dtype`` (``float32``, the pooled maxima's type).
    """

    def __init__(self, n_features: int, *, n_top: int, n_per_bin: int, quantiles: Sequence[float], seed: int,
                 reservoir: int = 256, dtype: Any = np.float32) -> None:
        self.quantiles = _check_quantiles(quantiles)
        self.n_features = _count("n_features", n_features, 0)
        self.n_top = _count("n_top", n_top, 0)
        self.n_per_bin = _count("n_per_bin", n_per_bin, 0)
        self.reservoir = _count("reservoir", reservoir, 1)
        self.seed = _count("seed", seed, 0)
        if self.seed > _MASK:
            raise WorkbenchError(f"seed must be below 2**64, not {seed}")
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise WorkbenchError(f"dtype must be float32 or float64, not {self.dtype}")
        self._seed_word = np.uint64(_mix_int(self.seed ^ 0x5EED5EED5EED5EED))
        self.n_sequences = np.zeros(self.n_features, dtype=np.int64)
        """Per feature, the sequences where it fires (value > 0) over all blocks added or merged."""
        self._top = _Kept({"feat": np.dtype(np.int32), "seq": np.dtype(np.int64), "val": self.dtype},
                          self.n_top, self.n_features)
        self._res = _Kept({"feat": np.dtype(np.int32), "seq": np.dtype(np.int64), "val": self.dtype,
                           "key": np.dtype(np.uint64)}, self.reservoir, self.n_features)

    # ------------------------------------------------------------------------------------------------ keys and order

    def keys(self, sequence: np.ndarray, feature: np.ndarray) -> np.ndarray:
        """The reservoir key of each ``(sequence, feature)`` pair: SplitMix64's output number ``sequence * n_features
        + feature + 1`` from the seed's state; distinct pairs get distinct keys (a bijection), so no ties."""
        i = np.asarray(sequence, dtype=np.uint64) * np.uint64(max(self.n_features, 1))
        i += np.asarray(feature, dtype=np.uint64) + np.uint64(1)
        i *= np.uint64(_GOLDEN)
        i += self._seed_word
        return _mix(i)

    def _top_order(self, a: dict[str, np.ndarray]) -> np.ndarray:
        return _order(a["feat"], self.n_features, _descending(a["val"]), a["seq"])

    def _res_order(self, a: dict[str, np.ndarray]) -> np.ndarray:
        return _order(a["feat"], self.n_features, ~a["key"], a["seq"])

    def _compact(self) -> None:
        self._top.compact(self._top_order, "tops")
        self._res.compact(self._res_order, "reservoir")

    # ------------------------------------------------------------------------------------------------------ streaming

    def add(self, pooled_max_block: sp.csr_matrix | np.ndarray, first_sequence: int) -> None:
        """Fold in a block of rows: global sequences ``first_sequence ..``, columns the features."""
        import scipy.sparse as sp

        block = pooled_max_block if sp.issparse(pooled_max_block) else sp.csr_matrix(np.asarray(pooled_max_block))
        if block.ndim != 2 or block.shape[1] != self.n_features:
            raise WorkbenchError(f"block has shape {block.shape}, expected (sequences, {self.n_features})")
        first = _count("first_sequence", first_sequence, 0)
        coo = block.tocoo()
        data = coo.data
        fire = data > 0
        feat = coo.col[fire].astype(np.int32)
        seq = coo.row[fire].astype(np.int64) + first
        val = data[fire].astype(self.dtype)
        if len(feat) == 0:
            return
        self.n_sequences += np.bincount(feat, minlength=self.n_features)
        if self.n_top:
            t = self._top
            last = t.last[feat]
            has = t.full[feat]
            idx = np.where(has, last, 0)
            tv = t.kept["val"][idx] if len(t.kept["val"]) else np.zeros(len(feat), dtype=self.dtype)
            ts = t.kept["seq"][idx] if len(t.kept["seq"]) else np.zeros(len(feat), dtype=np.int64)
            cand = ~has | (val > tv) | ((val == tv) & (seq < ts))
            t.push({"feat": feat[cand], "seq": seq[cand], "val": val[cand]})
            if t.due():
                t.compact(self._top_order, "tops")
        r = self._res
        key = self.keys(seq, feat)
        has = r.full[feat]
        rk = r.kept["key"][np.where(has, r.last[feat], 0)] if len(r.kept["key"]) else np.zeros(len(feat), np.uint64)
        cand = ~has | (key > rk)
        r.push({"feat": feat[cand], "seq": seq[cand], "val": val[cand], "key": key[cand]})
        if r.due():
            r.compact(self._res_order, "reservoir")

    def _params(self) -> tuple[Any, ...]:
        return (self.n_features, self.n_top, self.n_per_bin, self.reservoir, self.seed, self.dtype.str,
                tuple(self.quantiles.tolist()))

    def merge(self, other: StreamingExamples) -> None:
        """Fold in ``other``'s blocks (left unchanged): the same state as one instance that saw all of them."""
        if not isinstance(other, StreamingExamples):
            raise WorkbenchError(f"can only merge a StreamingExamples, not {type(other).__name__}")
        if other._params() != self._params():
            raise WorkbenchError(f"cannot merge StreamingExamples with settings {other._params()} into"
                                 f" {self._params()}")
        if other is self:
            raise WorkbenchError("cannot merge a StreamingExamples into itself")
        for mine, theirs in ((self._top, other._top), (self._res, other._res)):
            mine.push(theirs.kept)
            for part in theirs.pending:
                mine.push(part)
        self._compact()
        self.n_sequences += other.n_sequences

    # ---------------------------------------------------------------------------------------------------------- state

    def state(self) -> dict[str, np.ndarray]:
        """The whole state as plain numpy arrays (compacted first, so equal streams give equal states).

        Kept pairs come as ``indptr`` by feature plus ``seq`` and ``val``, in keep order (tops: value descending, then
        sequence; reservoir: key descending); the reservoir keys are recomputed from the pairs when it is loaded.
        """
        self._compact()
        out = {
            "n_features": np.asarray(self.n_features, dtype=np.int64),
            "n_top": np.asarray(self.n_top, dtype=np.int64),
            "n_per_bin": np.asarray(self.n_per_bin, dtype=np.int64),
            "reservoir": np.asarray(self.reservoir, dtype=np.int64),
            "seed": np.asarray(self.seed, dtype=np.uint64),
            "dtype": np.asarray(self.dtype.str),
            "quantiles": self.quantiles.copy(),
            "n_sequences": self.n_sequences.copy(),
        }
        for name, kept in (("top", self._top), ("res", self._res)):
            out[f"{name}_indptr"] = kept.rows().astype(np.int64)
            out[f"{name}_seq"] = kept.kept["seq"].copy()
            out[f"{name}_val"] = kept.kept["val"].copy()
        return out

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> StreamingExamples:
        """An instance from :meth:`state`'s arrays."""
        self = cls.__new__(cls)
        self.__setstate__(state)
        return self

    def __getstate__(self) -> dict[str, np.ndarray]:
        return self.state()

    def __setstate__(self, state: dict[str, np.ndarray]) -> None:
        StreamingExamples.__init__(
            self, int(state["n_features"]), n_top=int(state["n_top"]), n_per_bin=int(state["n_per_bin"]),
            quantiles=np.asarray(state["quantiles"]).tolist(), seed=int(state["seed"]),
            reservoir=int(state["reservoir"]), dtype=str(state["dtype"]))
        n_seq = np.asarray(state["n_sequences"], dtype=np.int64)
        if n_seq.shape != (self.n_features,):
            raise WorkbenchError(f"state has n_sequences of shape {n_seq.shape}, expected ({self.n_features},)")
        self.n_sequences = n_seq.copy()
        for name, kept in (("top", self._top), ("res", self._res)):
            indptr = np.asarray(state[f"{name}_indptr"], dtype=np.int64)
            seq = np.asarray(state[f"{name}_seq"], dtype=np.int64)
            if indptr.shape != (self.n_features + 1,) or indptr[-1] != len(seq):
                raise WorkbenchError(f"state's {name}_indptr does not match {self.n_features} features and {len(seq)}"
                                     " pairs")
            part = {"feat": np.repeat(np.arange(self.n_features, dtype=np.int32), np.diff(indptr)), "seq": seq,
                    "val": np.asarray(state[f"{name}_val"])}
            if name == "res":
                part["key"] = self.keys(part["seq"], part["feat"])
            kept.push(part)
        self._compact()

    # --------------------------------------------------------------------------------------------------------- result

    def result(self) -> dict[str, np.ndarray]:
        """``select_examples``' dict (``feature, kind, rank, sequence, max_activation``, sorted by feature, kind, rank).

        Per feature: its tops as kind 0, then for each quantile bin ``b`` (kind ``b + 1``; edges ``np.quantile`` of
        the reservoir's values, ``[lo, hi)``, the last bin ``[lo, hi]``) up to ``n_per_bin`` reservoir pairs that are
        not tops, drawn with ``np.random.default_rng(seed)`` in ``select_examples``' order of draws; each bin's rows
        by value descending, then sequence.
        """
        self._compact()
        nf, q, nb = self.n_features, self.quantiles, len(self.quantiles) - 1
        top = self._top.kept
        t_feat = top["feat"].astype(np.int64)
        feat_parts, kind_parts = [t_feat], [np.zeros(len(t_feat), dtype=np.int64)]
        seq_parts, val_parts = [top["seq"]], [top["val"]]
        res = self._res.kept
        eligible = self.n_sequences > np.bincount(top["feat"], minlength=nf)
        if self.n_per_bin > 0 and len(res["feat"]) and np.any(eligible):
            # feature, then sequence: select_examples' sorted CSC column
            o = _order(res["feat"], nf, res["seq"].astype(np.uint64), res["seq"])
            rf, rs, rv = res["feat"][o].astype(np.int64), res["seq"][o], res["val"][o]
            rptr = np.searchsorted(rf, np.arange(nf + 1))
            counts = np.diff(rptr)
            edges = np.zeros((nf, nb + 1))
            for c in np.unique(counts[counts > 0]).tolist():  # equal-length reservoirs: one np.quantile call
                fs = np.flatnonzero(counts == c)
                edges[fs] = np.quantile(rv[rptr[fs][:, None] + np.arange(c)], q, axis=1).T
            v64 = rv.astype(np.float64)
            kind = np.ones(len(rf), dtype=np.int64)  # bin b + 1: count of inner edges <= v (edges rise)
            for k in range(1, nb):
                kind += v64 >= edges[rf, k]
            # pairs that are tops: match (feature, sequence) in the tops sorted the same way
            ot = np.lexsort((top["seq"], t_feat))
            tf, ts = t_feat[ot], top["seq"][ot]
            width = int(max(rs.max(initial=0), ts.max(initial=0))) + 1
            rid, tid = rf * width + rs, tf * width + ts
            at = np.minimum(np.searchsorted(tid, rid), max(len(tid) - 1, 0))
            is_top = (tid[at] == rid) if len(tid) else np.zeros(len(rid), dtype=bool)
            cand = np.flatnonzero(eligible[rf] & ~is_top)
            gk = rf[cand] * (nb + 1) + kind[cand]  # by (feature, bin), then sequence order
            o = _order(gk, nf * (nb + 1), rs[cand].astype(np.uint64), rs[cand])
            cand, gk = cand[o], gk[o]
            bounds = np.flatnonzero(np.r_[True, gk[1:] != gk[:-1], True]) if len(cand) else np.zeros(1, np.int64)
            rng = np.random.default_rng(self.seed)
            picks = [rng.choice(cand[a:b], size=min(self.n_per_bin, b - a), replace=False)
                     for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist())]
            pick = np.concatenate(picks) if picks else np.zeros(0, dtype=np.int64)
            feat_parts.append(rf[pick])
            kind_parts.append(kind[pick])
            seq_parts.append(rs[pick])
            val_parts.append(rv[pick])
        feat, kind = np.concatenate(feat_parts), np.concatenate(kind_parts)
        seq, val = np.concatenate(seq_parts).astype(np.int64), np.concatenate(val_parts)
        order = np.lexsort((seq, -val, kind, feat))
        feat, kind, seq, val = feat[order], kind[order], seq[order], val[order]
        return {"feature": feat.astype(np.int64), "kind": kind.astype(np.int16),
                "rank": _group_rank(feat * (nb + 1) + kind).astype(np.int32), "sequence": seq,
                "max_activation": val.astype(np.float32)}

    def __repr__(self) -> str:
        return (f"StreamingExamples(n_features={self.n_features}, n_top={self.n_top}, n_per_bin={self.n_per_bin},"
                f" reservoir={self.reservoir}, sequences_fired={int(self.n_sequences.sum())})")
