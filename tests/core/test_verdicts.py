"""Per-concept verdicts: paired bootstrap over test sequences of the associations' test F1."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from workbench.associate import FeatureMatrix, associate, sequence_split
from workbench.concepts import labels_from_spans, scope_labels
from workbench.errors import InputError, WorkbenchError
from workbench.verdicts import concept_verdicts
from core_helpers import alternating_ids  # noqa: E402  (tests/core, on the path under pytest)

N_SEQ, LENGTH = 80, 30




def _matrix(dense: np.ndarray, prefix: str) -> FeatureMatrix:
    dense = dense.astype(np.float32)
    return FeatureMatrix(sp.csr_matrix(dense), np.ones(dense.shape[1], dtype=np.float32),
                         [f"{prefix}{i:04d}" for i in range(dense.shape[1])])


@lru_cache(maxsize=None)
def case():  # type: ignore[no-untyped-def]
    """``motif`` (residues 5-8), ``shm=mutated`` (3-4, scoped to residues 1-10), ``aa=W`` (residue 20) in every
    sequence; ``late`` (residue 25) only in validation sequences. SAE: f0 marks the motif (with a few stray
    activations), f1 the mutated residues (and 15-16, outside the scope), f2 fires at random. Neurons: u0 fires on
    the motif and on 40% of the other tokens at full strength, u1 on residues 1-4, u2 at random."""
    rng = np.random.default_rng(0)
    ids = alternating_ids(N_SEQ)
    is_val = sequence_split(ids)
    obs = pd.DataFrame({"sequence_id": np.repeat(ids, LENGTH), "position": np.tile(np.arange(1, LENGTH + 1), N_SEQ)})
    val_ids = [s for s, v in zip(ids, is_val) if v]
    spans = pd.DataFrame({
        "sequence_id": ids * 3 + val_ids, "start": [5] * N_SEQ + [3] * N_SEQ + [20] * N_SEQ + [25] * len(val_ids),
        "end": [8] * N_SEQ + [4] * N_SEQ + [20] * N_SEQ + [25] * len(val_ids),
        "concept": ["motif"] * N_SEQ + ["shm=mutated"] * N_SEQ + ["aa=W"] * N_SEQ + ["late"] * len(val_ids),
    })
    labels = labels_from_spans(obs, spans)
    scope = obs["position"].to_numpy() <= 10
    labels = scope_labels(labels, tokens=scope, name="germline", token_concepts=["shm=mutated"])
    pos = obs["position"].to_numpy()
    n = len(obs)
    motif = (pos >= 5) & (pos <= 8)
    sae = np.zeros((n, 3))
    sae[:, 0] = np.where(motif, rng.uniform(0.5, 1, n), np.where(rng.random(n) < 0.02, 1.0, 0.0))
    sae[np.isin(pos, [3, 4, 15, 16]), 1] = 1.0
    sae[:, 2] = np.where(rng.random(n) < 0.1, rng.uniform(0.1, 1, n), 0.0)
    neurons = np.zeros((n, 3))
    neurons[:, 0] = np.where(motif | (rng.random(n) < 0.4), 1.0, 0.0)
    neurons[pos <= 4, 1] = 1.0
    neurons[:, 2] = rng.uniform(0, 1, n)
    return _matrix(sae, "f"), _matrix(neurons, "u"), labels, ids, np.repeat(np.arange(N_SEQ), LENGTH)


@lru_cache(maxsize=None)
def results(split_seed: int = 0):  # type: ignore[no-untyped-def]
    sae, neurons, labels, ids, token_seq = case()
    out = {}
    for name, feats in (("sae", sae), ("neurons", neurons), ("random", sae)):
        out[name] = (feats, associate(feats, labels, ids, token_seq, split_seed=split_seed, n_permutations=0))
    return out


def verdicts(**options):  # type: ignore[no-untyped-def]
    _, _, labels, ids, token_seq = case()
    return concept_verdicts(options.pop("res", results()), labels, ids, token_seq, **options).set_index("concept")


def test_point_estimates_are_the_associations_test_f1() -> None:
    v = verdicts(n_boot=50)
    for name, (_, assoc) in results().items():
        best = assoc.best.set_index("concept")
        np.testing.assert_allclose(v[f"f1_{name}"], best["test_f1"].loc[v.index], rtol=0, atol=1e-9)
        assert (v[f"feature_{name}"] == best["best_feature"].loc[v.index]).all()
    assert v.loc["motif", "feature_sae"] == "f0000" and v.loc["motif", "feature_neurons"] == "u0000"
    assert list(v.columns[:5]) == ["n_test_sequences", "f1_sae", "feature_sae", "f1_neurons", "feature_neurons"]


def test_sae_beats_neurons_and_ties_with_an_identical_control() -> None:
    v = verdicts(n_boot=300)
    m = v.loc["motif"]
    assert m["f1_sae"] > 0.8 and m["f1_neurons"] < 0.6
    assert m["diff_neurons"] == pytest.approx(m["f1_sae"] - m["f1_neurons"])
    assert m["diff_neurons_low"] > 0 and m["diff_neurons_low"] <= m["diff_neurons"] <= m["diff_neurons_high"]
    assert m["beats_neurons"] and m["p_neurons"] == pytest.approx(1 / 301)
    assert m["diff_random"] == 0 and m["diff_random_low"] == 0 and m["diff_random_high"] == 0
    assert not m["beats_random"] and m["p_random"] == 1.0
    assert m["verdict"] == "beats neurons; random as good"
    assert m["n_test_sequences"] == N_SEQ // 2


def test_scoped_concept_counts_precision_inside_its_scope() -> None:
    """f1 fires on the mutated residues and on 15-16, outside the scope: scoped precision 1, so F1 1; u1 also fires
    on residues 1-2 inside the scope: precision 1/2, F1 2/3."""
    v = verdicts(n_boot=100)
    s = v.loc["shm=mutated"]
    assert s["feature_sae"] == "f0001" and s["f1_sae"] == pytest.approx(1.0)
    assert s["feature_neurons"] == "u0001" and s["f1_neurons"] == pytest.approx(2 / 3)
    # Every test sequence gives the same counts, so every resample gives the same difference.
    assert s["diff_neurons_low"] == pytest.approx(1 / 3) and s["diff_neurons_high"] == pytest.approx(1 / 3)
    assert s["beats_neurons"] and s["verdict"] == "beats neurons; random as good"


def test_uncaptured_and_untested_concepts_get_their_verdicts() -> None:
    v = verdicts(n_boot=100)
    assert v.loc["aa=W", "f1_sae"] <= 0.5 and v.loc["aa=W", "verdict"] == "not captured"
    assert not v.loc["aa=W", ["beats_neurons", "beats_random"]].any()
    late = v.loc["late"]
    assert late["verdict"] == "no test sequences" and late["n_test_sequences"] == 0
    assert late["f1_sae"] == 0 and np.isnan(late["diff_neurons_low"]) and np.isnan(late["p_neurons"])
    assert not late["beats_neurons"]


def test_another_reference_names_the_better_representations() -> None:
    v = verdicts(n_boot=200, reference="neurons")
    assert "diff_sae" in v.columns and "diff_neurons" not in v.columns
    assert v.loc["motif", "diff_sae_high"] < 0 and not v.loc["motif", "beats_sae"]
    assert v.loc["motif", "verdict"] == "not captured"  # neurons' F1 is below 0.5
    w = verdicts(n_boot=200, reference="neurons", captured_f1=0.2)
    assert w.loc["motif", "verdict"] == "sae and random better"


def test_intervals_match_a_per_resample_recount() -> None:
    """Recount the motif's F1 token by token for every resample, with the same draws, and compare the intervals."""
    sae, neurons, labels, ids, token_seq = case()
    n_boot, seed = 40, 3
    v = verdicts(n_boot=n_boot, seed=seed, ci=0.9)
    test_seqs = np.flatnonzero(~sequence_split(ids))
    draws = np.random.default_rng(seed).integers(0, len(test_seqs), size=(n_boot, len(test_seqs)))
    j = labels.token_concepts["concept"].tolist().index("motif")
    lab = labels.tokens[:, j].toarray().ravel()
    inst = labels.instances[:, j].toarray().ravel()

    def f1(feats: FeatureMatrix, assoc, picks: np.ndarray) -> float:  # type: ignore[no-untyped-def]
        row = assoc.best.set_index("concept").loc["motif"]
        col = feats.values[:, feats.names.index(row["best_feature"])].toarray().ravel() > row["threshold"]
        tp = n_active = hit = n_inst = 0
        for s in test_seqs[picks]:
            t = token_seq == s
            tp += int((col & lab & t).sum())
            n_active += int((col & t).sum())
            n_inst += len(np.unique(inst[t & lab]))
            hit += len(np.unique(inst[t & lab & col]))
        p, r = (tp / n_active if n_active else 0.0), (hit / n_inst if n_inst else 0.0)
        return 2 * p * r / (p + r) if p + r else 0.0

    res = results()
    diffs = np.array([f1(*res["sae"], d) - f1(*res["neurons"], d) for d in draws])
    low, high = np.quantile(diffs, [0.05, 0.95])
    assert v.loc["motif", "diff_neurons_low"] == pytest.approx(low, abs=1e-6)
    assert v.loc["motif", "diff_neurons_high"] == pytest.approx(high, abs=1e-6)
    assert v.loc["motif", "diff_neurons"] == pytest.approx(f1(*res["sae"], np.arange(len(test_seqs)))
                                                           - f1(*res["neurons"], np.arange(len(test_seqs))), abs=1e-6)


def test_seeds_make_resamples_reproducible() -> None:
    a, b = verdicts(n_boot=200, seed=5), verdicts(n_boot=200, seed=5)
    pd.testing.assert_frame_equal(a, b)
    c = verdicts(n_boot=200, seed=6)
    assert not np.allclose(a.loc["motif", ["diff_neurons_low", "diff_neurons_high"]].to_numpy(dtype=float),
                           c.loc["motif", ["diff_neurons_low", "diff_neurons_high"]].to_numpy(dtype=float))


def test_mismatches_are_refused() -> None:
    res = dict(results())
    with pytest.raises(InputError, match="reference 'sae2'"):
        verdicts(n_boot=10, reference="sae2")
    res["neurons"] = results(split_seed=1)["neurons"]
    with pytest.raises(WorkbenchError, match="split_seed 1, not 0"):
        verdicts(n_boot=10, res=res)
    with pytest.raises(WorkbenchError, match="split_seed 0, not 1"):
        verdicts(n_boot=10, split_seed=1)
    swapped = dict(results())
    swapped["neurons"] = (results()["sae"][0], results()["neurons"][1])  # association of other features
    with pytest.raises(WorkbenchError, match="names feature 'u000"):
        verdicts(n_boot=10, res=swapped)
    renamed = _matrix(results()["sae"][0].values.toarray()[:, ::-1], "u")  # same names, other activations
    swapped["neurons"] = (renamed, results()["neurons"][1])
    with pytest.raises(WorkbenchError, match="recomputes as"):
        verdicts(n_boot=10, res=swapped)
    with pytest.raises(InputError, match="n_boot"):
        verdicts(n_boot=0)
