"""The stratified test's layout built shard by shard (:meth:`MantelHaenszelSums.from_blocks`,
:class:`MantelHaenszelLayout`): the same layout and, bit for bit, the same results as the whole-store constructor and
:func:`mantel_haenszel`, in any block order and merged across ranks."""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

from workbench.errors import InputError
from workbench.stratified import MantelHaenszelLayout, MantelHaenszelSums, mantel_haenszel

THRESHOLDS = (0.0, 0.25, 0.5, 0.75)
SIZES = (700, 1300, 250)  # three shards of uneven sizes
LAYOUT = ("n_k", "combined", "cell_lab", "cell_concept", "cell_stratum", "testable")


def _case(seed: int = 0) -> dict[str, Any]:
    """~40 strata with codes that skip values, some absent from some blocks; 30 concepts, a third scoped to one of
    two scopes (labelled inside their scope only), one a function of the stratum (not testable); sparse (about 3% of
    entries) and dense (about half) features in [0, 1)."""
    rng = np.random.default_rng(seed)
    n, n_con, n_feat = sum(SIZES), 30, 24
    codes = np.arange(0, 80, 2)  # 40 strata, numbered with gaps
    bounds = np.cumsum((0,) + SIZES)
    pools = (codes[:30], codes[10:], codes[::3])  # block 0 lacks the last 10 strata, block 1 the first 10, ...
    strata = np.concatenate([rng.choice(pool, size) for pool, size in zip(pools, SIZES)])
    scopes = rng.random((n, 2)) < np.array([0.55, 0.3])
    scope_index = np.where(np.arange(n_con) % 3 == 2, np.arange(n_con) % 2, -1)
    labels = rng.random((n, n_con)) < rng.uniform(0.02, 0.2, n_con)
    for c in np.flatnonzero(scope_index >= 0):
        labels[:, c] &= scopes[:, scope_index[c]]
    labels[:, 0] = strata < 20  # constant inside every stratum: not testable
    sparse = rng.random((n, n_feat)) * (rng.random((n, n_feat)) < 0.03)
    dense = rng.random((n, n_feat)) * (rng.random((n, n_feat)) < 0.5)
    chosen = rng.integers(0, len(THRESHOLDS), (n_feat, n_con))
    wanted = rng.random((n_feat, n_con)) < 0.7
    return {"strata": strata, "scopes": scopes, "scope_index": scope_index, "labels": labels, "bounds": bounds,
            "values": {False: sp.csr_matrix(sparse), True: dense}, "chosen": chosen, "wanted": wanted}


def _block(case: dict[str, Any], i: int) -> tuple[Any, np.ndarray, np.ndarray]:
    """Shard ``i``'s ``(labels, strata, scopes)``; the labels in the forms a store may give (boolean or float)."""
    a, b = case["bounds"][i], case["bounds"][i + 1]
    lab = case["labels"][a:b]
    labels = sp.csr_matrix(lab, dtype=np.float32) if i == 1 else sp.csr_matrix(lab)
    return labels, case["strata"][a:b], case["scopes"][a:b]


def _values(case: dict[str, Any], dense: bool, i: int) -> Any:
    a, b = case["bounds"][i], case["bounds"][i + 1]
    return case["values"][dense][a:b]


def _whole(case: dict[str, Any], dense: bool) -> MantelHaenszelSums:
    return MantelHaenszelSums(sp.csr_matrix(case["labels"]), case["strata"], THRESHOLDS, case["chosen"],
                              scopes=case["scopes"], scope_index=case["scope_index"], wanted=case["wanted"],
                              dense=dense)


def _from_layout(case: dict[str, Any], layout: MantelHaenszelLayout, dense: bool) -> MantelHaenszelSums:
    return MantelHaenszelSums.from_layout(layout, THRESHOLDS, case["chosen"], scope_index=case["scope_index"],
                                          wanted=case["wanted"], dense=dense)


def _feed(sums: MantelHaenszelSums, case: dict[str, Any], dense: bool, order: Any, *,
          start: bool = False) -> MantelHaenszelSums:
    """Add the blocks ``order`` with their labels (and their first rows, not used, with ``start``)."""
    for i in order:
        labels, strata, scopes = _block(case, i)
        first = int(case["bounds"][i]) if start else None
        sums.add(_values(case, dense, i), first, labels=labels, strata=strata, scopes=scopes)
    return sums


def _same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert set(got) == set(want)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)  # NaN equal to NaN, bit for bit otherwise


@pytest.mark.parametrize("dense", [False, True])
def test_blocks_give_the_whole_store_results_bit_for_bit(dense: bool) -> None:
    case = _case()
    whole = _whole(case, dense)
    whole.add(case["values"][dense], 0)
    want = whole.result()
    # The reference is the one-shot test (which picks the dense products from the features' density, as here).
    _same(mantel_haenszel(case["values"][dense], sp.csr_matrix(case["labels"]), case["strata"], THRESHOLDS,
                          case["chosen"], scopes=case["scopes"], scope_index=case["scope_index"],
                          wanted=case["wanted"]), want)
    # The example exercises every branch of the result: untestable concepts, NaN odds ratios, finite p-values.
    assert not want["testable"][0] and want["testable"][1:].all()
    assert np.isfinite(want["p_value"]).any() and np.isnan(want["odds_ratio"][case["wanted"]]).any()
    assert (want["observed"][:, 1:][case["wanted"][:, 1:]] > 0).any()

    blocks = MantelHaenszelSums.from_blocks((_block(case, i) for i in range(3)), THRESHOLDS, case["chosen"],
                                            scope_index=case["scope_index"], wanted=case["wanted"], dense=dense)
    assert blocks.onehot is None and blocks.member is None  # nothing per token of the whole store
    for key in LAYOUT:  # the same layout, in the same order
        np.testing.assert_array_equal(getattr(blocks, key), getattr(whole, key), err_msg=key)
    for key in ("v_mat", "e_mat"):
        assert (getattr(blocks, key) != getattr(whole, key)).nnz == 0
    _same(_feed(blocks, case, dense, range(3)).result(), want)

    # Layout counted and sums fed in other block orders (and fed in yet another order than counted).
    shuffled = MantelHaenszelSums.from_blocks([_block(case, i) for i in (2, 0, 1)], THRESHOLDS, case["chosen"],
                                              scope_index=case["scope_index"], wanted=case["wanted"], dense=dense)
    _same(_feed(shuffled, case, dense, (1, 2, 0), start=True).result(), want)

    # Two ranks: each counts its shards, the layouts travel pickled and merge into the same layout on every rank;
    # each rank adds its shards' sums, and the gathered states merge into the whole store's test.
    shards = {0: (2, 0), 1: (1,)}
    layouts = []
    for rank in (0, 1):
        layout = MantelHaenszelLayout()
        for i in shards[rank]:
            layout.add_block(*_block(case, i))
        layouts.append(pickle.loads(pickle.dumps(layout)))
    states, results = [], []
    for rank in (0, 1):
        merged = MantelHaenszelLayout()
        for layout in layouts[::-1] if rank else layouts:
            merged.merge(layout)
        assert merged.n_tokens == sum(SIZES)
        sums = _feed(_from_layout(case, merged, dense), case, dense, shards[rank])
        states.append(pickle.loads(pickle.dumps(sums.state())))
        results.append(sums)
    for rank, sums in enumerate(results):
        sums.sums = {}
        for state in states if rank == 0 else states[::-1]:
            sums.merge(state)
        _same(sums.result(), want)


def test_constructor_and_block_sums_refuse_the_other_way_of_adding() -> None:
    case = _case(1)
    labels, strata, scopes = _block(case, 0)
    values = _values(case, False, 0)
    blocks = MantelHaenszelSums.from_blocks([_block(case, i) for i in range(3)], THRESHOLDS, case["chosen"],
                                            scope_index=case["scope_index"], wanted=case["wanted"])
    with pytest.raises(InputError, match="built from blocks.*labels="):
        blocks.add(values, 0)  # a whole-store call: a start, no labels
    with pytest.raises(InputError, match="built from blocks"):
        blocks.add(values, labels=labels)  # the strata are missing
    with pytest.raises(InputError, match="scoped concepts: give the block's scopes"):
        blocks.add(values, labels=labels, strata=strata)
    with pytest.raises(InputError, match="labels have shape"):
        blocks.add(values, labels=labels[:, :5], strata=strata, scopes=scopes)
    with pytest.raises(InputError, match="cover different tokens"):
        blocks.add(values, labels=labels, strata=strata[:-1], scopes=scopes)
    assert blocks.state() == {}  # nothing counted by the refused calls
    whole = _whole(case, False)
    with pytest.raises(InputError, match="whole store's labels.*add\\(values, start\\)"):
        whole.add(values, labels=labels, strata=strata, scopes=scopes)
    with pytest.raises(InputError, match="whole store's labels"):
        whole.add(values)


def test_layout_refuses_blocks_it_did_not_count_and_mixed_blocks() -> None:
    case = _case(2)
    partial = MantelHaenszelLayout()
    partial.add_block(*_block(case, 0))  # block 1 holds strata that block 0 lacks
    sums = _from_layout(case, partial, False)
    labels, strata, scopes = _block(case, 1)
    with pytest.raises(InputError, match="the layout did not count"):
        sums.add(_values(case, False, 1), labels=labels, strata=strata, scopes=scopes)
    with pytest.raises(InputError, match="give scopes with every block or with none"):
        partial.add_block(labels, strata, None)
    with pytest.raises(InputError, match="concepts"):
        partial.add_block(labels[:, :4], strata, scopes)
    with pytest.raises(InputError, match="stratum codes"):
        partial.add_block(labels, strata - 100, scopes)
    with pytest.raises(InputError, match="chosen thresholds have shape"):
        MantelHaenszelSums.from_layout(partial, THRESHOLDS, case["chosen"][:, :5])
    # A scoped concept labelled outside its scope, in a stratum where the scope has no token, cannot be laid out.
    outside = np.zeros((4, 1), dtype=bool)
    outside[0, 0] = True
    with pytest.raises(InputError, match="inside its scope"):
        MantelHaenszelSums.from_blocks([(sp.csr_matrix(outside), np.array([0, 1, 1, 2]), ~outside)], THRESHOLDS,
                                       np.zeros((2, 1), dtype=int), scope_index=np.array([0]))
    # An empty layout (no block at all) merges as nothing.
    again = MantelHaenszelLayout()
    again.merge(MantelHaenszelLayout())
    again.merge(partial)
    for key in ("scope_keys", "scope_counts", "cell_keys", "cell_counts"):
        np.testing.assert_array_equal(getattr(again, key), getattr(partial, key))
