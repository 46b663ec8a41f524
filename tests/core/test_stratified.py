"""Stratified association (Cochran-Mantel-Haenszel over strata), the strata share of features and the calibrated
permutation null."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from workbench.associate import FeatureMatrix, associate, null_pvalues
from workbench.concepts import ConceptLabels, labels_from_token_values
from workbench.errors import InputError
from workbench.stratified import mantel_haenszel, strata_share, token_strata


def _tables(active: np.ndarray, label: np.ndarray, strata: np.ndarray) -> np.ndarray:
    out = []
    for k in np.unique(strata):
        m = strata == k
        a, lab = active[m], label[m]
        out.append([[(a & lab).sum(), (a & ~lab).sum()], [(~a & lab).sum(), (~a & ~lab).sum()]])
    return np.asarray(out, dtype=float).transpose(1, 2, 0)


def test_mantel_haenszel_matches_statsmodels_with_scopes() -> None:
    """Odds ratio and CMH statistic of every pair equal statsmodels' StratifiedTable, scoped concepts included."""
    from statsmodels.stats.contingency_tables import StratifiedTable

    rng = np.random.default_rng(0)
    n = 2500
    strata = rng.integers(0, 9, n)
    values = rng.random((n, 4)) * (rng.random((n, 4)) < 0.4)
    scope = rng.random(n) < 0.6
    labels = rng.random((n, 3)) < (0.1 + 0.05 * (strata[:, None] % 3))
    labels[:, 2] &= scope  # a scoped concept is labelled only inside its scope
    chosen = rng.integers(0, 3, (4, 3))
    thresholds = (0.0, 0.3, 0.6)
    res = mantel_haenszel(sp.csr_matrix(values), sp.csr_matrix(labels), strata, thresholds, chosen,
                          scopes=scope[:, None], scope_index=np.array([-1, -1, 0]))
    for f in range(4):
        for c in range(3):
            rows = scope if c == 2 else np.ones(n, dtype=bool)
            active = values[:, f] > thresholds[chosen[f, c]]
            table = StratifiedTable(_tables(active[rows], labels[rows, c], strata[rows]))
            assert res["odds_ratio"][f, c] == pytest.approx(table.oddsratio_pooled, rel=1e-9)
            assert res["z"][f, c] ** 2 == pytest.approx(table.test_null_odds(correction=False).statistic, rel=1e-9)
            assert res["observed"][f, c] == (active & labels[:, c] & rows).sum()
    assert res["testable"].all()
    # Limiting the work to some pairs (one feature per threshold here) gives the same figures on those pairs.
    wanted = np.zeros((4, 3), dtype=bool)
    wanted[[0, 3], [1, 2]] = True
    part = mantel_haenszel(sp.csr_matrix(values), sp.csr_matrix(labels), strata, thresholds, chosen,
                           scopes=scope[:, None], scope_index=np.array([-1, -1, 0]), wanted=wanted)
    for key in ("odds_ratio", "z", "observed", "expected"):
        np.testing.assert_allclose(part[key][wanted], res[key][wanted], rtol=1e-12)


def _positional_case() -> tuple[FeatureMatrix, ConceptLabels, list[str], np.ndarray, pd.DataFrame]:
    """200 sequences of 30 residues; ``mark`` sits on a quarter of the residues at positions 10-14 and 1% elsewhere.
    f00000 fires at positions 10-14 (position only), f00001 on the marked residues (beyond position), f00002 on
    position 20 (constant within the strata), f00003 at random."""
    rng = np.random.default_rng(3)
    n_seq, length = 200, 30
    ids = [f"s{i}" for i in range(n_seq)]
    pos = np.tile(np.arange(1, length + 1), n_seq)
    obs = pd.DataFrame({"sequence_id": np.repeat(ids, length), "position": pos,
                        "residue": rng.choice(list("ACD"), n_seq * length)})
    hot = (pos >= 10) & (pos <= 14)
    mark = np.where(hot, rng.random(len(pos)) < 0.25, rng.random(len(pos)) < 0.01)
    values = pd.DataFrame({"mark": np.where(mark, "yes", None), "slot": pos.astype(str)})
    labels = labels_from_token_values(obs, values)
    feats = np.c_[hot * rng.uniform(0.5, 1, len(pos)), mark * rng.uniform(0.5, 1, len(pos)), pos == 20,
                  rng.random(len(pos)) * (rng.random(len(pos)) < 0.3)].astype(np.float32)
    fm = FeatureMatrix(sp.csr_matrix(feats), np.ones(4), [f"f{i:05d}" for i in range(4)])
    return fm, labels, ids, np.repeat(np.arange(n_seq), length), obs


def test_stratified_association_separates_position_from_the_concept() -> None:
    fm, labels, ids, token_seq, obs = _positional_case()
    strata = token_strata(labels, obs, groups=("slot",), columns=("residue",), sequence_groups=())
    assert strata.description == "slot x residue" and len(strata.names) == 90
    res = associate(fm, labels, ids, token_seq, n_permutations=0, strata=strata.codes)
    pairs = res.pairs.set_index(["concept", "feature"])
    mark = pairs.loc["mark=yes"]
    # Position alone: plainly enriched (q tiny), explained once stratified by position x residue.
    assert mark.loc["f00000", "q_value"] < 1e-10
    assert mark.loc["f00000", "stratified"] == "explained" and bool(mark.loc["f00000", "explained_by_position"])
    assert mark.loc["f00000", "p_cmh"] > 0.05  # constant inside its strata: nothing beyond position (p 1, OR NaN)
    # The concept itself: survives with a large conditional odds ratio.
    assert mark.loc["f00001", "stratified"] == "survives" and mark.loc["f00001", "or_mh"] > 50
    assert mark.loc["f00001", "q_cmh"] < 1e-10
    # A concept that is a function of the strata cannot be tested: said, not a zero.
    assert pairs.loc[("slot=20", "f00002"), "stratified"] == "not testable"
    assert np.isnan(pairs.loc[("slot=20", "f00002"), "p_cmh"])
    best = res.best.set_index("concept")
    assert best.loc["mark=yes", "beyond_feature"] == "f00001" and bool(best.loc["mark=yes", "captured_beyond"])
    assert best.loc["slot=20", "stratified"] == "not testable" and best.loc["slot=20", "beyond_feature"] == ""
    assert not best.loc["slot=20", "captured_beyond"]


def test_strata_share_and_bad_strata() -> None:
    fm, labels, ids, token_seq, obs = _positional_case()
    strata = token_strata(labels, obs, groups=("slot",), columns=(), sequence_groups=())
    share = strata_share(fm.values, strata.codes)
    assert share[0] > 0.6 and share[2] == pytest.approx(1.0)  # position detectors
    assert share[3] < 0.05  # random firing: the strata explain nothing
    empty = FeatureMatrix(sp.csr_matrix((len(obs), 1), dtype=np.float32), np.zeros(1), ["f00000"])
    assert np.isnan(strata_share(empty.values, strata.codes)[0])
    with pytest.raises(InputError, match="strata cover"):
        strata_share(fm.values, strata.codes[:-1])
    with pytest.raises(InputError, match="cover different tokens"):
        mantel_haenszel(fm.values, labels.tokens, strata.codes[:-1], (0.0,), np.zeros((4, labels.tokens.shape[1]), int))
    # Parts the labels lack are left out and named; no part at all is one stratum, never a crash.
    none = token_strata(labels, obs.drop(columns="residue"), groups=("absent",), columns=("residue",),
                        sequence_groups=("chain_type",))
    assert none.description.startswith("none") and (none.codes == 0).all()


def test_null_pvalues_tail_and_calibration() -> None:
    rng = np.random.default_rng(0)
    maxima = rng.gumbel(0.2, 0.02, size=(20, 400))
    # Observed values drawn from the null itself: p-values close to uniform (calibrated), none tiny.
    observed = rng.gumbel(0.2, 0.02, size=400)
    p = null_pvalues(observed, maxima)["null_p"]
    assert 0.01 <= (p < 0.05).mean() <= 0.12 and p.min() > 1e-4
    # Far beyond every permutation: the tail goes below the 1/(n+1) floor; within the null: empirical.
    out = null_pvalues(np.array([0.6, 0.2]), maxima[:, :2])
    assert out["null_p"][0] < 1e-6 and out["null_p_empirical"][0] == pytest.approx(1 / 21)
    assert out["null_p"][1] == out["null_p_empirical"][1]
    flat = null_pvalues(np.array([0.5]), np.zeros((20, 1)))  # a null without spread keeps the empirical value
    assert flat["null_p"][0] == pytest.approx(1 / 21) and np.isinf(flat["null_z"][0])
    assert np.isnan(null_pvalues(np.array([0.5]), np.zeros((0, 1)))["null_p"][0])


def test_bad_strata_inputs_say_not_testable_or_refuse() -> None:
    """Empty strata, an empty scope, a concept constant within every stratum: explicit results, never a crash."""
    rng = np.random.default_rng(5)
    n = 300
    values = sp.csr_matrix(rng.random((n, 3)) * (rng.random((n, 3)) < 0.5))
    strata = np.repeat([0, 5, 9], 100)  # codes with gaps: strata 1-4 and 6-8 are empty
    labels = np.zeros((n, 3), dtype=bool)
    labels[:100, 0] = True  # constant within every stratum (all of stratum 0, none elsewhere)
    labels[rng.random(n) < 0.2, 1] = True
    chosen = np.zeros((3, 3), dtype=int)
    empty_scope = np.zeros((n, 1), dtype=bool)  # concept 2 is scoped to no token at all
    res = mantel_haenszel(values, sp.csr_matrix(labels), strata, (0.0,), chosen, scopes=empty_scope,
                          scope_index=np.array([-1, -1, 0]))
    assert res["testable"].tolist() == [False, True, False]
    assert np.isnan(res["p_value"][:, [0, 2]]).all() and np.isfinite(res["p_value"][:, 1]).all()
    one = np.zeros(n, dtype=np.int64)  # a single stratum is the plain (unstratified) Mantel-Haenszel test
    flat = mantel_haenszel(values, sp.csr_matrix(labels), one, (0.0,), chosen)
    assert flat["testable"][:2].all()
    with pytest.raises(InputError, match="chosen thresholds"):
        mantel_haenszel(values, sp.csr_matrix(labels), strata, (0.0,), chosen[:2])
