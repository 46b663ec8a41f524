"""Linear probes: planted signals are found, grouped CV and in-fold selection do not leak, targets and pooling."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import workbench.probes as probes
from workbench.concepts import labels_from_spans
from workbench.errors import InputError
from workbench.probes import (
    SCORE_COLUMNS, WEIGHT_COLUMNS, pool, probe_sequences, probe_tokens, sequence_targets, token_targets,
)


def _row(res: probes.ProbeResult, target: str, rep: str, k: int) -> pd.Series:
    s = res.scores
    hit = s[(s["target"] == target) & (s["representation"] == rep) & (s["k"] == k)]
    assert len(hit) == 1, (target, rep, k)
    return hit.iloc[0]


def _tokens(n_seq: int = 60, length: int = 25, seed: int = 0) -> tuple[np.random.Generator, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng, np.repeat(np.arange(n_seq), length)


# --------------------------------------------------------------------------------------------------- signal


def test_one_dimension_target_is_found_by_k1_and_noise_stays_at_chance() -> None:
    rng, seq = _tokens()
    n = len(seq)
    y = rng.integers(0, 2, n)
    signal = rng.normal(size=(n, 40)).astype(np.float32)
    signal[:, 7] = y + 0.25 * rng.normal(size=n)
    noise = rng.normal(size=(n, 40)).astype(np.float32)
    targets = pd.DataFrame({"region": pd.Categorical(np.where(y == 1, "CDR3", "FR3"))})
    res = probe_tokens({"signal": signal, "noise": noise}, targets, seq, cv=5)
    assert list(res.scores.columns) == SCORE_COLUMNS and list(res.weights.columns) == WEIGHT_COLUMNS
    assert len(res.scores) == 2 * 3 and res.notes.empty
    for k in (0, 1, 8):
        assert _row(res, "region", "signal", k)["score"] > 0.9
        assert abs(_row(res, "region", "noise", k)["score"] - 0.5) < 0.08
    row = _row(res, "region", "signal", 1)
    assert row["metric"] == "balanced_accuracy" and row["baseline"] == 0.5 and row["n_classes"] == 2
    assert row["extra_metric"] == "macro_f1" and row["extra"] > 0.9 and row["converged"]
    assert row["n_samples"] == n and row["n_groups"] == 60
    # The dense probe's largest weight sits on dimension 7, positive for CDR3 and negative for FR3.
    w = res.weights[(res.weights["representation"] == "signal")]
    top = w.loc[w.groupby("class")["weight"].apply(lambda s: s.abs().idxmax())].set_index("class")
    assert (top["dim"] == 7).all() and top.loc["CDR3", "weight"] > 0 > top.loc["FR3", "weight"]
    assert w.groupby("class").size().eq(10).all()


def test_one_feature_per_class_beats_rotated_neurons_at_k1() -> None:
    """Codes with one dimension per class vs the same information rotated across units."""
    rng, seq = _tokens(80, 20, seed=1)
    n = len(seq)
    y = rng.integers(0, 6, n)
    codes = np.abs(rng.normal(size=(n, 64))) * (rng.random((n, 64)) < 0.03)
    codes[np.arange(n), y] += 1.0 + 0.2 * rng.random(n)
    rotation = np.linalg.qr(rng.normal(size=(64, 64)))[0]
    neurons = codes @ rotation
    targets = pd.DataFrame({"species": np.array(["human", "mouse", "rat", "camel", "llama", "dog"])[y]})
    res = probe_tokens({"sae": sp.csr_matrix(codes), "neurons": neurons}, targets, seq, sparse_k=(1,))
    sae_k1 = _row(res, "species", "sae", 1)["score"]
    assert sae_k1 > 0.9 and _row(res, "species", "sae", 1)["baseline"] == pytest.approx(1 / 6)
    assert _row(res, "species", "neurons", 0)["score"] > 0.9  # all units together read it as well
    assert _row(res, "species", "neurons", 1)["score"] < sae_k1 - 0.1


def test_grouped_cv_does_not_leak_sequence_identity() -> None:
    """A per-sequence label readable only through a per-sequence fingerprint: chance with grouped folds, but
    near-perfect if tokens of one sequence could sit in train and test (the check can fail)."""
    rng, seq = _tokens(200, 8, seed=2)
    label = rng.integers(0, 2, 200)
    fingerprint = rng.normal(size=(200, 250))  # more dimensions than sequences: any labelling is separable
    X = fingerprint[seq] + 0.05 * rng.normal(size=(len(seq), 250))
    targets = pd.DataFrame({"chain": np.where(label[seq] == 1, "H", "L")})
    grouped = probe_tokens({"x": X}, targets, seq, sparse_k=())
    assert abs(_row(grouped, "chain", "x", 0)["score"] - 0.5) < 0.1
    leaky = probe_tokens({"x": X}, targets, np.arange(len(seq)), sparse_k=())
    assert _row(leaky, "chain", "x", 0)["score"] > 0.9


def test_regression_r2_on_linear_target_and_noise() -> None:
    rng = np.random.default_rng(3)
    X = rng.normal(size=(150, 30))
    beta = rng.normal(size=30)
    targets = pd.DataFrame({"assay": X @ beta + 0.1 * rng.normal(size=150), "single": 2 * X[:, 4] + 0.05 * rng.normal(size=150)})
    res = probe_sequences({"x": X, "noise": rng.normal(size=(150, 30))}, targets, sparse_k=(1,))
    dense = _row(res, "assay", "x", 0)
    assert dense["task"] == "regression" and dense["metric"] == "r2" and dense["baseline"] == 0.0
    assert dense["score"] > 0.95 and dense["extra"] > 0.95 and dense["extra_metric"] == "spearman"
    assert _row(res, "single", "x", 1)["score"] > 0.95
    assert _row(res, "assay", "noise", 0)["score"] < 0.1 and _row(res, "single", "noise", 1)["score"] < 0.1
    w = res.weights[(res.weights["target"] == "single") & (res.weights["representation"] == "x")]
    assert w["class"].isna().all() and w.iloc[0]["dim"] == 4


def test_sparse_selection_happens_inside_each_training_fold(monkeypatch: pytest.MonkeyPatch) -> None:
    """Many noise dimensions, a random label: choosing the best dimension on all rows before CV would look
    predictive; choosing it inside each training fold stays at chance, and the ranking never sees all rows."""
    rng = np.random.default_rng(4)
    n, d = 60, 4000
    X = rng.normal(size=(n, d))
    y = rng.integers(0, 2, n)
    targets = pd.DataFrame({"isotype": np.where(y == 1, "IgG", "IgA")})
    seen: list[int] = []
    rank = probes._rank_dims

    def spy(Z, yy, n_classes, task):  # type: ignore[no-untyped-def]
        seen.append(Z.shape[0])
        return rank(Z, yy, n_classes, task)

    monkeypatch.setattr(probes, "_rank_dims", spy)
    res = probe_sequences({"x": X}, targets, sparse_k=(8,))
    assert seen and max(seen) < n
    honest = _row(res, "isotype", "x", 8)["score"]
    # The leaky alternative, computed by hand: pick the 8 dimensions on all rows first, then cross-validate.
    best = probes._top(rank(X, y, 2, "classification")[1], 8)
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold

    leaky = np.mean([balanced_accuracy_score(y[te], LogisticRegression(class_weight="balanced").fit(X[tr][:, best], y[tr])
                                             .predict(X[te][:, best]))
                     for tr, te in StratifiedKFold(5, shuffle=True, random_state=0).split(X, y)])
    assert leaky > 0.8 and honest < 0.6


def test_batched_ovr_solver_matches_scikit_learn() -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(5)
    A = rng.normal(size=(3, 400, 3))
    t = np.stack([A[j] @ rng.normal(size=3) + rng.normal(size=400) > 0.8 for j in range(3)])
    W, b, ok = probes._ovr_logistic(A, t, 0.5, 100)
    assert ok
    for j in range(3):
        ref = LogisticRegression(C=0.5, class_weight="balanced", tol=1e-10, max_iter=10000).fit(A[j], t[j])
        np.testing.assert_allclose(W[j], ref.coef_[0], atol=1e-4)
        assert b[j] == pytest.approx(ref.intercept_[0], abs=1e-4)


def test_rare_classes_dropped_subsampling_and_skipped_targets() -> None:
    rng, seq = _tokens(50, 10, seed=6)
    n = len(seq)
    X = rng.normal(size=(n, 8))
    region = np.where(rng.random(n) < 0.5, "A", "B").astype(object)
    region[(seq < 3) & (np.arange(n) % 10 == 0)] = "rare"  # in 3 sequences only: dropped with cv=5
    one = np.where(seq < 2, "x", "y")  # "x" in 2 sequences -> dropped -> a single class left -> note, no crash
    targets = pd.DataFrame({"region": region, "one": one, "empty": pd.Series([np.nan] * n, dtype=object),
                            "flat": np.ones(n)})
    res = probe_tokens({"x": X}, targets, seq, max_samples=300, sparse_k=(1,))
    row = _row(res, "region", "x", 0)
    assert row["dropped_classes"] == "rare (3 groups)" and row["n_classes"] == 2 and row["n_samples"] <= 300
    notes = res.notes.set_index("target")["note"]
    assert set(notes.index) == {"one", "empty", "flat"} and "x (2 groups)" in notes["one"]
    assert notes["empty"] == "no labelled rows" and notes["flat"] == "constant target"
    # Deterministic under the seed.
    again = probe_tokens({"x": X}, targets, seq, max_samples=300, sparse_k=(1,))
    pd.testing.assert_frame_equal(res.scores.drop(columns="seconds"), again.scores.drop(columns="seconds"))


# --------------------------------------------------------------------------------------------------- targets, pooling


def test_token_and_sequence_targets_from_spans() -> None:
    obs = pd.DataFrame({"sequence_id": ["a"] * 5 + ["b"] * 4, "position": [1, 2, 3, 4, 5, 1, 2, 3, 4]})
    spans = pd.DataFrame({
        "sequence_id": ["a", "a", "b", "a", "b"], "start": [1, 3, 2, 5, 1], "end": [3, 4, 4, 5, 1],
        "concept": ["region=FR1", "region=CDR1", "region=FR1", "aa=C", "aa=W"],
    })
    values = pd.DataFrame({"sequence_id": ["a", "b"], "species": ["human", None], "isotype": ["IgG", "IgA"]})
    labels = labels_from_spans(obs, spans, sequence_values=values)
    t = token_targets(labels, ["region", "aa"])
    region = t["region"].astype(object).where(t["region"].notna(), None).tolist()
    assert region == ["FR1", "FR1", None, "CDR1", None, None, "FR1", "FR1", "FR1"]  # token a3: FR1 and CDR1
    assert t["aa"].astype(object).where(t["aa"].notna(), None).tolist() == [None] * 4 + ["C", "W"] + [None] * 3
    assert isinstance(t["region"].dtype, pd.CategoricalDtype)
    s = sequence_targets(labels, ["species", "isotype"])
    assert s["species"].astype(object).where(s["species"].notna(), None).tolist() == ["human", None]
    assert s["isotype"].tolist() == ["IgG", "IgA"]
    with pytest.raises(InputError, match="groups present: aa, region"):
        token_targets(labels, ["chain"])


def test_pool_mean_and_max_against_numpy() -> None:
    rng = np.random.default_rng(7)
    n, d, n_seq = 60, 5, 7
    seq = rng.integers(0, n_seq - 1, n)  # the last sequence has no tokens
    X = rng.normal(size=(n, d)) * (rng.random((n, d)) < 0.4)
    mean_ref = np.array([X[seq == s].mean(0) if (seq == s).any() else np.zeros(d) for s in range(n_seq)])
    max_ref = np.array([X[seq == s].max(0) if (seq == s).any() else np.zeros(d) for s in range(n_seq)])
    order = np.argsort(seq, kind="stable")  # store order (sorted) and shuffled rows give the same pools
    for M, s in ((X, seq), (sp.csr_matrix(X), seq), (X[order], seq[order]), (sp.csr_matrix(X[order]), seq[order])):
        np.testing.assert_allclose(pool(M, s, n_seq), mean_ref, atol=1e-12)
        np.testing.assert_allclose(pool(M, s, n_seq, how="max"), max_ref, atol=1e-12)
    # A sparse column that is negative on every stored token of a sequence still has max 0 from implicit zeros.
    neg = sp.csr_matrix(np.array([[-1.0], [0.0], [-2.0]]))
    np.testing.assert_allclose(pool(neg, np.array([0, 0, 1]), 2, how="max"), [[0.0], [-2.0]])
    with pytest.raises(InputError, match="unknown pooling"):
        pool(X, seq, n_seq, how="median")
    with pytest.raises(InputError, match="0..6"):
        pool(X, seq + 10, n_seq)


# --------------------------------------------------------------------------------------------------- guards


def test_input_errors() -> None:
    rng, seq = _tokens(10, 10)
    X = rng.normal(size=(100, 4))
    targets = pd.DataFrame({"t": np.where(seq % 2 == 0, "a", "b")})
    with pytest.raises(InputError, match="different row counts"):
        probe_tokens({"a": X, "b": X[:-1]}, targets, seq)
    with pytest.raises(InputError, match="targets have 99 rows"):
        probe_tokens({"a": X}, targets.iloc[:-1], seq)
    with pytest.raises(InputError, match="groups has 99 entries"):
        probe_tokens({"a": X}, targets, seq[:-1])
    bad = X.copy()
    bad[3, 1] = np.nan
    with pytest.raises(InputError, match="'a' has NaN"):
        probe_tokens({"a": bad}, targets, seq)
    with pytest.raises(InputError, match="'s' has NaN"):
        probe_tokens({"s": sp.csr_matrix(np.where(np.isnan(bad), np.inf, bad))}, targets, seq)
    with pytest.raises(InputError, match="at least one representation"):
        probe_tokens({}, targets, seq)
    with pytest.raises(InputError, match="cv must be"):
        probe_sequences({"a": X}, targets, cv=1)
    with pytest.raises(InputError, match="sparse_k"):
        probe_sequences({"a": X}, targets, sparse_k=(0,))


def test_module_stays_domain_free() -> None:
    code = "import sys, workbench.probes; assert not [m for m in sys.modules if m.split('.')[0] in ('domains', 'sklearn', 'torch')]"
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------------------------------- real store


def test_amino_acid_identity_is_decodable_on_a_real_store(tiny_esm2, oas_fasta, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import workbench
    from domains.sequence.annotations import motif_labels
    from workbench.associate import neuron_matrix

    store = workbench.extract(str(tiny_esm2), str(oas_fasta), layers=[1], out=tmp_path / "s", progress=False)
    labels = motif_labels(store)
    targets = token_targets(labels, ["aa"])
    obs = store.obs(["sequence_id"])
    raw = np.concatenate([np.asarray(b, dtype=np.float32) for b in store.iter_batches(1, 4096, shuffle=False, as_torch=False)])
    assert raw.shape[0] == len(targets) == len(obs)
    neurons = neuron_matrix(store, layer=1).values
    res = probe_tokens({"raw": raw, "neurons": neurons}, targets, obs["sequence_id"].to_numpy(), max_samples=3000,
                       sparse_k=(1,))
    dense = _row(res, "aa", "raw", 0)
    assert dense["n_classes"] >= 15 and dense["n_samples"] <= 3000 and dense["n_groups"] == 40
    assert dense["score"] > 0.5 > 5 * dense["baseline"]
    assert _row(res, "aa", "neurons", 0)["score"] > 3 * dense["baseline"]
    # Pooled per sequence, the same activations feed a sequence-level probe (here: a length-like regression).
    pooled = pool(raw, pd.factorize(obs["sequence_id"])[0], store.n_sequences)
    seqs = store.sequences
    seq_res = probe_sequences({"raw": pooled}, pd.DataFrame({"n_tokens": seqs["n_tokens"].astype(float)}), sparse_k=())
    assert np.isfinite(_row(seq_res, "n_tokens", "raw", 0)["score"])
