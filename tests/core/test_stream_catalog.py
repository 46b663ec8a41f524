"""The catalog's parts and the sample computed shard by shard equal the in-memory ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from workbench._stream_catalog import catalog_parts_streaming, layout_by_shard, sequence_mass
from workbench._subset import labels_of_tokens, sample_sequences, subset_store
from workbench._catalog_build import token_layout
from workbench.associate import feature_matrix
from workbench.catalog import catalog_parts
from workbench.stream_associate import ShardFeatures


def test_streamed_catalog_parts_equal_the_in_memory_ones(stream_case) -> None:  # type: ignore[no-untyped-def]
    store, labels, sae, _ = stream_case
    groups = ("nterm", "mid", "aa")
    memory = catalog_parts(store, feature_matrix(store, sae, layer=1), labels, profile_groups=groups, n_top=3,
                           n_per_bin=2, seed=5)
    streamed = catalog_parts_streaming(store, ShardFeatures(store, 1, sae), labels, profile_groups=groups, n_top=3,
                                       n_per_bin=2, seed=5)
    for a, b in ((memory.x_max, streamed.x_max), (memory.x_mean, streamed.x_mean)):
        assert (a != b).nnz == 0 and a.shape == b.shape
    assert np.array_equal(memory.stats.nnz, streamed.stats.nnz) and memory.stats.nnz.sum() > 0
    assert np.array_equal(memory.stats.fires_in, streamed.stats.fires_in)
    for g in groups:  # float64 sums in another order: equal to rounding
        m, s = memory.stats.profile(g), streamed.stats.profile(g)
        if m is None:
            assert s is None
            continue
        assert m[0] == s[0]
        np.testing.assert_allclose(m[1], s[1], rtol=1e-12, atol=1e-15)
        np.testing.assert_array_equal(m[2], s[2])
    # Every feature fires in fewer sequences than the reservoir holds: the examples are the in-memory ones.
    for key in memory.picked:
        np.testing.assert_array_equal(memory.picked[key], streamed.picked[key])
    np.testing.assert_array_equal(memory.flat, streamed.flat)
    np.testing.assert_array_equal(memory.offsets, streamed.offsets)
    assert memory.flat.any() and len(memory.picked["feature"]) > 20
    layout = token_layout(store)
    by_shard = layout_by_shard(store)
    assert by_shard.sequences == layout.sequences and np.array_equal(by_shard.token_sequence, layout.token_sequence)


def test_a_catalog_of_some_sequences_keeps_whole_store_examples(stream_case) -> None:  # type: ignore[no-untyped-def]
    store, labels, sae, _ = stream_case
    memory = catalog_parts(store, feature_matrix(store, sae, layer=1), labels, profile_groups=("nterm",), n_top=1,
                           n_per_bin=0, seed=1)
    keep = np.array([0, 5, 7])
    part = catalog_parts_streaming(store, ShardFeatures(store, 1, sae), labels, profile_groups=("nterm",), n_top=1,
                                   n_per_bin=0, seed=1, keep=keep)
    rows = part.rows
    assert np.array_equal(rows, np.union1d(keep, memory.picked["sequence"])) and len(rows) < store.n_sequences
    assert set(memory.picked["sequence"]) <= set(rows)  # every example sequence is held
    pooled = part.pooled  # pooled activations for the kept sequences; the example-only rows are empty
    assert np.array_equal(rows[pooled], keep) and not pooled.all()
    assert (part.x_max[pooled] != memory.x_max[keep]).nnz == 0 and (part.x_mean[pooled] != memory.x_mean[keep]).nnz == 0
    assert part.x_max[~pooled].nnz == 0 and part.x_mean[~pooled].nnz == 0
    assert part.layout.sequence_ids == [memory.layout.sequence_ids[i] for i in rows]
    np.testing.assert_array_equal(rows[part.picked["sequence"]], memory.picked["sequence"])
    np.testing.assert_array_equal(part.flat, memory.flat)
    np.testing.assert_array_equal(part.stats.fires_in, memory.stats.fires_in)


def test_sequence_mass_is_the_per_sequence_sum(stream_case) -> None:  # type: ignore[no-untyped-def]
    store, _, sae, _ = stream_case
    fm = feature_matrix(store, sae, layer=1)
    wanted = [0, 3, 7]
    got = sequence_mass(store, ShardFeatures(store, 1, sae), wanted)
    ts = store.token_sequence()
    csc = fm.values.tocsc()
    for k, j in enumerate(wanted):
        rows = csc.indices[csc.indptr[j]: csc.indptr[j + 1]]
        want = np.bincount(ts[rows], weights=csc.data[csc.indptr[j]: csc.indptr[j + 1]], minlength=store.n_sequences)
        np.testing.assert_allclose(got[k], want, rtol=1e-12)


def test_a_sample_store_holds_its_sequences_and_their_labels(stream_case, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store, labels, _, _ = stream_case
    index = sample_sequences(store, max_tokens=store.n_tokens // 3, seed=2)
    assert 0 < len(index) < store.n_sequences and np.all(np.diff(index) > 0)
    lengths = store.sequences["n_tokens"].to_numpy()
    assert lengths[index].sum() <= store.n_tokens // 3
    assert np.array_equal(sample_sequences(store, max_tokens=store.n_tokens // 3, seed=2), index)  # seeded
    assert len(sample_sequences(store, max_tokens=store.n_tokens, seed=2)) == store.n_sequences
    sub = subset_store(store, index, tmp_path / "sub", layers=[1])
    ids = store.sequences["sequence_id"].astype(str).to_numpy()
    assert sub.sequences["sequence_id"].astype(str).tolist() == ids[index].tolist()
    assert sub.manifest["subset_of"]["n_sequences"] == store.n_sequences and sub.n_tokens == lengths[index].sum()
    for i in range(len(sub.shards)):
        sub.verify_shard(i)
    for k, s in enumerate(index[:5]):
        np.testing.assert_array_equal(sub.get_sequence(ids[s], 1), store.get_sequence(ids[s], 1))
    starts = np.r_[0, np.cumsum(lengths)[:-1]]
    tokens = np.concatenate([np.arange(starts[s], starts[s] + lengths[s]) for s in index])
    part = labels_of_tokens(labels, tokens, index, np.repeat(np.arange(len(index)), lengths[index]))
    assert part.n_tokens == sub.n_tokens and (part.tokens != labels.tokens[tokens]).nnz == 0
    assert part.token_concepts["n_tokens"].sum() == part.tokens.sum()
    assert (part.token_concepts["n_sequences"] <= len(index)).all()
    scoped = labels.scopes["first60"]
    assert np.array_equal(part.scopes["first60"], scoped[tokens])
    with pytest.raises(Exception, match="at least one sequence"):
        sample_sequences(store, max_tokens=0)
