"""Streamed example selection (workbench._stream_examples) against the in-memory select_examples."""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

import workbench._stream_examples as se
from workbench._catalog_build import select_examples
from workbench._stream_examples import StreamingExamples
from workbench.errors import WorkbenchError

Q = (0.0, 0.25, 0.5, 0.75, 1.0)
FIELDS = ("feature", "kind", "rank", "sequence", "max_activation")


def _matrix(n_seq: int = 3000, n_feat: int = 50, density: float = 0.05, seed: int = 0) -> sp.csr_matrix:
    """Seeded random maxima in (0, 1]; half the features rounded to 2 decimals (many ties), one never fires."""
    m = sp.random(n_seq, n_feat, density=density, format="csr", random_state=seed, dtype=np.float32)
    coarse = (m.indices % 2 == 0)
    m.data = np.where(coarse, np.round(m.data, 2) + np.float32(0.01), m.data + np.float32(1e-3)).astype(np.float32)
    m = m.tolil()
    m[:, 3] = 0
    m = m.tocsr()
    m.eliminate_zeros()
    return m


def _stream(m: sp.csr_matrix, cuts: list[int], reverse: bool = False, **kw: Any) -> StreamingExamples:
    s = StreamingExamples(m.shape[1], **kw)
    bounds = [0, *cuts, m.shape[0]]
    blocks = list(zip(bounds[:-1], bounds[1:]))
    for a, b in (blocks[::-1] if reverse else blocks):
        s.add(m[a:b], a)
    return s


def _merged(m: sp.csr_matrix, cuts: list[int], **kw: Any) -> StreamingExamples:
    """Blocks dealt round-robin to three instances, each reading its blocks last to first, merged in reverse."""
    parts = [StreamingExamples(m.shape[1], **kw) for _ in range(3)]
    bounds = [0, *cuts, m.shape[0]]
    blocks = list(zip(bounds[:-1], bounds[1:]))
    for i, (a, b) in reversed(list(enumerate(blocks))):
        parts[i % 3].add(m[a:b], a)
    parts[2].merge(parts[1])
    parts[2].merge(parts[0])
    return parts[2]


def _same_state(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert np.array_equal(a[k], b[k]), k


@pytest.fixture(params=["default", "tiny"])
def min_pending(request, monkeypatch):  # type: ignore[no-untyped-def]
    """With a tiny buffer the kept pairs are compacted during the stream, so the per-feature thresholds filter."""
    if request.param == "tiny":
        monkeypatch.setattr(se, "_MIN_PENDING", 64)
    return request.param


SPLITS = {
    "one": lambda n: [],
    "uneven": lambda n: [1, 7, 400, 401, 1900, n - 3],
    "many": lambda n: list(range(97, n, 97)),
}


@pytest.mark.parametrize("split", list(SPLITS))
@pytest.mark.parametrize("how", ["stream", "reversed", "merged"])
@pytest.mark.parametrize("levels", [0, 3])
def test_tops_equal_select_examples_for_any_split(split: str, how: str, levels: int, min_pending: str) -> None:
    m = _matrix(density=0.1)  # ~300 firings per feature, beyond the reservoir of 64
    if levels:  # values on a few levels only: ties at the n_top-th value, broken by the smaller sequence
        m.data = (np.ceil(m.data * levels) / levels).astype(np.float32)
    kw = dict(n_top=7, n_per_bin=2, quantiles=Q, seed=3, reservoir=64)
    ref = select_examples(m, n_top=7, n_per_bin=2, quantiles=Q, seed=3)
    cuts = SPLITS[split](m.shape[0])
    if how == "merged":
        s = _merged(m, cuts, **kw)
    else:
        s = _stream(m, cuts, reverse=how == "reversed", **kw)
    out = s.result()
    for name in FIELDS:
        assert out[name].dtype == ref[name].dtype
    r0, o0 = ref["kind"] == 0, out["kind"] == 0
    for name in FIELDS:
        assert np.array_equal(out[name][o0], ref[name][r0]), name
    assert np.array_equal(s.n_sequences, np.diff(m.tocsc().indptr))
    assert s.n_sequences[3] == 0 and not np.any(out["feature"] == 3)


@pytest.mark.parametrize("split", list(SPLITS))
def test_small_features_equal_select_examples_exactly(split: str, min_pending: str) -> None:
    """Every feature fires in fewer than `reservoir` sequences: the reservoir holds them all, so bin edges, bins and
    the seeded draws are select_examples' own."""
    m = _matrix(density=0.05)  # ~150 firings per feature
    counts = np.diff(m.tocsc().indptr)
    assert counts.max() < 256
    cuts = SPLITS[split](m.shape[0])
    for n_top, n_per_bin, q, seed in [(5, 2, Q, 0), (10, 3, (0, 0.5, 0.9, 1), 7), (1, 1, (0, 1), 11)]:
        ref = select_examples(m, n_top=n_top, n_per_bin=n_per_bin, quantiles=q, seed=seed)
        for how in (_stream, _merged):
            out = how(m, cuts, n_top=n_top, n_per_bin=n_per_bin, quantiles=q, seed=seed).result()
            for name in FIELDS:
                assert np.array_equal(out[name], ref[name]), (name, how.__name__)
    # and, independently: every bin example lies in its bin of the full data and is not a top
    out = _stream(m, cuts, n_top=5, n_per_bin=2, quantiles=Q, seed=0).result()
    csc = m.tocsc()
    for j in np.unique(out["feature"]):
        v = csc.data[csc.indptr[j]:csc.indptr[j + 1]]
        rows = csc.indices[csc.indptr[j]:csc.indptr[j + 1]]
        edges = np.quantile(v, Q)
        mine = out["feature"] == j
        tops = out["sequence"][mine & (out["kind"] == 0)]
        for b in range(len(Q) - 1):
            sel = mine & (out["kind"] == b + 1)
            x = out["max_activation"][sel]
            assert np.all(x >= edges[b]) and np.all(x <= edges[b + 1] if b == len(Q) - 2 else x < edges[b + 1])
            assert not np.any(np.isin(out["sequence"][sel], tops))
            assert np.array_equal(x, m[out["sequence"][sel], j].toarray().ravel())  # true (sequence, value) pairs
            assert np.all(np.isin(out["sequence"][sel], rows))


def _rank_level(v: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where ``x`` falls among the feature's values ``v``: the fraction strictly below and at or below it."""
    s = np.sort(v)
    return np.searchsorted(s, x, side="left") / len(s), np.searchsorted(s, x, side="right") / len(s)


def test_large_features_bins_within_tolerance() -> None:
    """Features fire in ~4200 sequences, 16x the reservoir of 256: the edges are quantiles of a uniform sample of 256
    values. By the DKW inequality the sample CDF is within eps of the feature's CDF at every value with probability
    >= 1 - 2 exp(-2 * 256 * eps**2); eps = 0.15 gives 2e-5 per feature, 1e-3 over the 50 features (sampling without
    replacement only concentrates it more). So a bin example of bin [q_b, q_b+1) lies, in the feature's full data,
    between the q_b - 0.15 and q_b+1 + 0.15 quantiles."""
    m = _matrix(n_seq=6000, density=0.7, seed=5)
    q = (0.0, 0.25, 0.5, 0.9, 1.0)
    s = _stream(m, list(range(575, 6000, 575)), n_top=10, n_per_bin=3, quantiles=q, seed=1)
    out = s.result()
    csc = m.tocsc()
    tol, errors = 0.15, []
    st = s.state()
    for j in np.unique(out["feature"]):
        v = csc.data[csc.indptr[j]:csc.indptr[j + 1]]
        assert len(v) > 16 * 256
        mine = out["feature"] == j
        res_v = st["res_val"][st["res_indptr"][j]:st["res_indptr"][j + 1]]
        assert len(res_v) == 256
        lo_e, hi_e = _rank_level(v, np.quantile(res_v, q))
        errors.append(np.abs((lo_e + hi_e) / 2 - np.asarray(q))[1:-1])
        for b in range(len(q) - 1):
            x = out["max_activation"][mine & (out["kind"] == b + 1)]
            assert len(x) == 3
            lo, hi = _rank_level(v, x)
            assert np.all(hi >= q[b] - tol) and np.all(lo <= q[b + 1] + tol), (j, b, lo, hi)
    # the edges' rank error averages sqrt(p(1-p)/256) * sqrt(2/pi) ~ 0.017 (at most 0.025 at the median)
    assert np.mean(errors) < 0.035


def test_reservoir_is_a_uniform_sample() -> None:
    """Values rise with the sequence index, so a biased reservoir (the first 256 seen, or the largest) is far from
    uniform in the sequences' positions; the pooled positions of 50 features x 256 sampled sequences among each
    feature's ~4200 are uniform (chi-square on 16 bins, 15 df, 1e-4 critical value 44.3) with mean 0.5 +- 5 sd."""
    n_seq, n_feat = 6000, 50
    pattern = sp.random(n_seq, n_feat, density=0.7, format="csr", random_state=9, dtype=np.float32)
    rows = np.repeat(np.arange(n_seq), np.diff(pattern.indptr))
    m = sp.csr_matrix(((rows + 1).astype(np.float32) / n_seq, pattern.indices, pattern.indptr), shape=pattern.shape)
    s = _stream(m, list(range(575, n_seq, 575)), n_top=5, n_per_bin=2, quantiles=Q, seed=4)
    st = s.state()
    csc = m.tocsc()

    def positions(sampled: list[np.ndarray]) -> np.ndarray:
        u = []
        for j in range(n_feat):
            fired = csc.indices[csc.indptr[j]:csc.indptr[j + 1]]  # sorted
            idx = np.searchsorted(fired, sampled[j])
            assert np.array_equal(fired[idx], sampled[j])  # every sampled sequence fires
            u.append((idx + 0.5) / len(fired))
        return np.concatenate(u)

    def chi2(u: np.ndarray) -> float:
        counts = np.bincount(np.minimum((u * 16).astype(int), 15), minlength=16)
        expected = len(u) / 16
        return float(((counts - expected) ** 2 / expected).sum())

    ptr = st["res_indptr"]
    sampled = [st["res_seq"][ptr[j]:ptr[j + 1]] for j in range(n_feat)]
    assert all(len(x) == 256 and len(np.unique(x)) == 256 for x in sampled)
    # the values kept are the pairs' own
    for j in range(n_feat):
        assert np.array_equal(st["res_val"][ptr[j]:ptr[j + 1]], (sampled[j] + 1).astype(np.float32) / n_seq)
    u = positions(sampled)
    sd = np.sqrt(1 / 12 / len(u))
    assert chi2(u) < 44.3
    assert abs(u.mean() - 0.5) < 5 * sd
    # the test has the power to see the biased reservoirs
    first = [csc.indices[csc.indptr[j]:csc.indptr[j + 1]][:256] for j in range(n_feat)]
    largest = [csc.indices[csc.indptr[j]:csc.indptr[j + 1]][-256:] for j in range(n_feat)]
    for biased in (first, largest):
        ub = positions(biased)
        assert chi2(ub) > 1000 and abs(ub.mean() - 0.5) > 50 * sd


@pytest.mark.parametrize("density", [0.05, 0.3])
def test_merge_of_parts_equals_one_instance(density: float, min_pending: str) -> None:
    m = _matrix(density=density, seed=2)
    kw = dict(n_top=6, n_per_bin=2, quantiles=Q, seed=5, reservoir=32)
    one = _stream(m, [], **kw)
    ref = one.state()
    ref_result = one.result()
    halves = [StreamingExamples(m.shape[1], **kw) for _ in range(2)]
    halves[0].add(m[:1500], 0)
    halves[1].add(m[1500:2200], 1500)
    halves[1].add(m[2200:], 2200)
    halves[1].merge(halves[0])
    _same_state(halves[1].state(), ref)
    # other boundaries, other order, other instances: the same state
    _same_state(_stream(m, SPLITS["uneven"](3000), **kw).state(), ref)
    _same_state(_merged(m, SPLITS["many"](3000), **kw).state(), ref)
    # the state ships through pickle (what all_gather_object does) and back
    again = pickle.loads(pickle.dumps(halves[1]))
    _same_state(again.state(), ref)
    _same_state(StreamingExamples.from_state(ref).state(), ref)
    for name in FIELDS:
        assert np.array_equal(again.result()[name], ref_result[name])
    # a restored instance keeps streaming: the first half pickled mid-stream, merged with the rest
    a = StreamingExamples(m.shape[1], **kw)
    a.add(m[:1000], 0)
    a = pickle.loads(pickle.dumps(a))
    a.add(m[1000:], 1000)
    _same_state(a.state(), ref)
    assert all(isinstance(v, np.ndarray) for v in ref.values())


def test_edge_cases() -> None:
    m = _matrix(density=0.05)
    counts = np.diff(m.tocsc().indptr)
    # n_top beyond every feature's firing count: all firings are tops, no bins, as select_examples
    s = _stream(m, [1000], n_top=400, n_per_bin=2, quantiles=Q, seed=0)
    out, ref = s.result(), select_examples(m, n_top=400, n_per_bin=2, quantiles=Q, seed=0)
    assert np.all(out["kind"] == 0) and len(out["feature"]) == counts.sum()
    for name in FIELDS:
        assert np.array_equal(out[name], ref[name])
    # n_per_bin = 0: tops only
    out = _stream(m, [1000], n_top=3, n_per_bin=0, quantiles=Q, seed=0).result()
    assert np.all(out["kind"] == 0) and np.array_equal(np.bincount(out["feature"], minlength=50), np.minimum(counts, 3))
    # n_top = 0: bins only, as select_examples
    out, ref = (_stream(m, [1000], n_top=0, n_per_bin=2, quantiles=Q, seed=0).result(),
                select_examples(m, n_top=0, n_per_bin=2, quantiles=Q, seed=0))
    assert np.all(out["kind"] > 0)
    for name in FIELDS:
        assert np.array_equal(out[name], ref[name])
    # nothing fires: no rows, typed empty arrays; explicit zeros are not firing
    zeros = sp.csr_matrix((np.zeros(3, np.float32), ([0, 1, 2], [0, 1, 2])), shape=(5, 4))
    s = StreamingExamples(4, n_top=3, n_per_bin=2, quantiles=Q, seed=0)
    s.add(zeros, 0)
    s.add(sp.csr_matrix((0, 4), dtype=np.float32), 5)
    out = s.result()
    assert all(len(out[k]) == 0 for k in FIELDS) and out["kind"].dtype == np.int16
    assert np.array_equal(s.n_sequences, np.zeros(4))
    # a single firing; a dense block
    s.add(np.array([[0, 0, 0.5, 0]], dtype=np.float32), 9)
    out = s.result()
    assert out["feature"].tolist() == [2] and out["sequence"].tolist() == [9] and out["kind"].tolist() == [0]


def test_bad_settings_raise() -> None:
    for q in ([0, 0.5], [0.1, 1], [0, 0.5, 0.5, 1], [1], [0, 0.7, 0.3, 1], []):
        with pytest.raises(WorkbenchError) as want:
            select_examples(_matrix(n_seq=10, density=0.5), n_top=1, n_per_bin=1, quantiles=q, seed=0)
        with pytest.raises(WorkbenchError) as got:
            StreamingExamples(5, n_top=1, n_per_bin=1, quantiles=q, seed=0)
        assert type(got.value) is type(want.value) and str(got.value) == str(want.value)
    for kw in (dict(n_top=-1), dict(n_per_bin=-2), dict(reservoir=0), dict(seed=-1), dict(n_top=1.5)):
        with pytest.raises(WorkbenchError):
            StreamingExamples(5, **{**dict(n_top=1, n_per_bin=1, quantiles=Q, seed=0), **kw})
    s = StreamingExamples(5, n_top=2, n_per_bin=1, quantiles=Q, seed=0)
    with pytest.raises(WorkbenchError, match="shape"):
        s.add(sp.random(4, 6, density=0.5, format="csr", random_state=0), 0)
    block = sp.random(4, 5, density=0.5, format="csr", random_state=0, dtype=np.float32)
    s.add(block, 0)
    with pytest.raises(WorkbenchError, match="added twice"):  # overlapping blocks
        s.add(block, 0)
        s.state()
    other = StreamingExamples(5, n_top=3, n_per_bin=1, quantiles=Q, seed=0)
    with pytest.raises(WorkbenchError, match="settings"):
        other.merge(StreamingExamples(5, n_top=2, n_per_bin=1, quantiles=Q, seed=0))
    with pytest.raises(WorkbenchError, match="itself"):
        other.merge(other)


@pytest.mark.parametrize("n_groups", [3, 1 << 36])
def test_packed_order_equals_lexsort(n_groups: int) -> None:
    """The packed value sort behind compaction orders like np.lexsort, including when the packed word keeps only a
    few leading bits of the primary key (many ties, put right by the full key and the tiebreak)."""
    rng = np.random.default_rng(0)
    n = 5000
    group = rng.integers(0, min(n_groups, 40), n)
    if n_groups > 40:
        group = group * (n_groups // 40)
    primary = rng.integers(0, 1 << 62, n, dtype=np.int64).astype(np.uint64) | np.uint64(1 << 63)
    primary[: n // 2] = primary[: n // 2] >> np.uint64(40) << np.uint64(40)  # differ only in low bits...
    primary[n // 2 : n // 2 + 50] += np.uint64(1)                              # ...or in the last one
    primary[-100:] = primary[0]                                                # and exact ties
    tiebreak = rng.permutation(n).astype(np.int64)
    perm = se._order(group, n_groups, primary, tiebreak)
    assert np.array_equal(perm, np.lexsort((tiebreak, primary, group)))
    small = primary >> np.uint64(50)  # a primary with leading zero bits is spread over the packed word
    assert np.array_equal(se._order(group, n_groups, small, tiebreak), np.lexsort((tiebreak, small, group)))
