"""Association reproduces InterPLM's definitions on a case checked by hand, plus statistics and guards."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from workbench.associate import THRESHOLDS, FeatureMatrix, associate, count_pairs, sequence_split
from workbench.concepts import labels_from_spans
from workbench.errors import InputError, WorkbenchError


def _ids_one_per_split() -> tuple[str, str]:
    cands = [f"s{i}" for i in range(50)]
    split = sequence_split(cands)
    return cands[int(np.flatnonzero(split)[0])], cands[int(np.flatnonzero(~split)[0])]


def hand_case():  # type: ignore[no-untyped-def]
    """Two copies of one 10-residue sequence, one in each split, so validation and test give the same numbers."""
    val_id, test_id = _ids_one_per_split()
    ids = [val_id, test_id]
    obs = pd.DataFrame({"sequence_id": np.repeat(ids, 10), "position": np.tile(np.arange(1, 11), 2)})
    # concept X: two instances, residues 3-5 and 8-9; concept Y: residue 1.
    spans = pd.DataFrame({"sequence_id": [i for i in ids for _ in range(3)], "start": [3, 8, 1] * 2, "end": [5, 9, 1] * 2,
                          "concept": ["X", "X", "Y"] * 2})
    labels = labels_from_spans(obs, spans)
    raw = np.zeros((20, 2), dtype=np.float32)
    f0 = [0, 0, 1, 2, 4, 0, 0, 0, 1, 0]  # max 4 -> 0, 0, .25, .5, 1, 0, 0, 0, .25, 0
    f1 = [3, 3, 0, 0, 0, 0, 0, 0, 0, 0]  # fires on residues 1-2 only
    raw[:, 0] = f0 * 2
    raw[:, 1] = f1 * 2
    maxes = raw.max(0)
    feats = FeatureMatrix(sp.csr_matrix(raw / maxes), maxes, ["f00000", "f00001"])
    return feats, labels, ids, np.repeat([0, 1], 10)


def test_interplm_definitions_by_hand() -> None:
    feats, labels, ids, token_seq = hand_case()
    res = associate(feats, labels, ids, token_seq, n_permutations=0)
    pairs = res.pairs.set_index(["feature", "concept"])
    x = pairs.loc[("f00000", "X")]
    # Threshold 0: active on residues 3, 4, 5, 9 -> precision 4/4, residue recall 4/5, both spans hit -> F1 1.
    assert x["threshold"] == 0.0 and x["test_f1"] == pytest.approx(1.0)
    assert x["test_precision"] == pytest.approx(1.0) and x["test_recall"] == pytest.approx(0.8)
    assert x["test_domain_recall"] == pytest.approx(1.0) and x["tp"] == 8 and x["n_active"] == 8 and x["n_labelled"] == 10
    # f1 fires on residues 1-2: Y (residue 1) precision 1/2, recall 1 -> F1 2/3; never on X.
    y = pairs.loc[("f00001", "Y")]
    assert y["test_f1"] == pytest.approx(2 / 3) and y["test_precision"] == pytest.approx(0.5)
    assert ("f00001", "X") not in pairs.index
    best = res.best.set_index("concept")
    assert best.loc["X", "best_feature"] == "f00000" and best.loc["Y", "best_feature"] == "f00001"
    assert res.concepts_captured == 2


def test_threshold_half_gives_domain_recall_one_half() -> None:
    """At threshold 0.5 only residue 5 (normalised 1.0) is active: precision 1, domain recall 1/2, F1 2/3."""
    feats, labels, ids, token_seq = hand_case()
    res = associate(feats, labels, ids, token_seq, thresholds=[0.5], n_permutations=0)
    x = res.pairs.set_index(["feature", "concept"]).loc[("f00000", "X")]
    assert x["test_f1"] == pytest.approx(2 / 3) and x["test_domain_recall"] == pytest.approx(0.5)
    assert x["test_recall"] == pytest.approx(1 / 5)


def test_counts_match_a_dense_reference() -> None:
    rng = np.random.default_rng(0)
    active = rng.random((200, 7)) > 0.7
    labels = rng.random((200, 4)) > 0.8
    c = count_pairs(sp.csr_matrix(active), sp.csr_matrix(labels))
    np.testing.assert_array_equal(c["tp"], active.T.astype(int) @ labels.astype(int))
    np.testing.assert_array_equal(c["n_active"], active.sum(0))


def test_enrichment_q_values_and_permutation_null() -> None:
    """A planted feature is significant and beats its permutation null; a random one is not."""
    rng = np.random.default_rng(1)
    n_seq, length = 60, 40
    ids = [f"p{i}" for i in range(n_seq)]
    obs = pd.DataFrame({"sequence_id": np.repeat(ids, length), "position": np.tile(np.arange(1, length + 1), n_seq)})
    starts = rng.integers(1, length - 5, n_seq)
    spans = pd.DataFrame({"sequence_id": ids, "start": starts, "end": starts + 4, "concept": "motif"})
    labels = labels_from_spans(obs, spans)
    truth = labels.tokens.toarray()[:, 0]
    planted = truth * rng.uniform(0.5, 1.0, len(truth))
    noise = rng.random(len(truth)) * (rng.random(len(truth)) > 0.9)
    feats = FeatureMatrix(sp.csr_matrix(np.c_[planted, noise].astype(np.float32)), np.ones(2), ["f00000", "f00001"])
    res = associate(feats, labels, ids, np.repeat(np.arange(n_seq), length), n_permutations=19)
    pairs = res.pairs.set_index("feature")
    assert pairs.loc["f00000", "q_value"] < 1e-10 and pairs.loc["f00001", "q_value"] > 0.01
    best = res.best.loc[0]
    assert best["best_feature"] == "f00000" and best["null_p_empirical"] == pytest.approx(1 / 20)
    # Every permutation lies far below the planted F1: the fitted tail gives a p-value that can pass a correction.
    assert best["null_p"] < 1e-3 and best["null_q"] < 1e-3 and best["null_z"] > 5


def test_guards() -> None:
    feats, labels, ids, token_seq = hand_case()
    with pytest.raises(WorkbenchError, match="different stores"):
        associate(feats, labels, ids, token_seq[:-1], n_permutations=0)
    obs = pd.DataFrame({"sequence_id": ["a"] * 3, "position": [1, 2, 3]})
    with pytest.raises(InputError, match="outside sequence 'a'"):
        labels_from_spans(obs, pd.DataFrame({"sequence_id": ["a"], "start": [2], "end": [4], "concept": ["c"]}))
    with pytest.raises(InputError, match="'zz'"):
        labels_from_spans(obs, pd.DataFrame({"sequence_id": ["zz"], "start": [1], "end": [1], "concept": ["c"]}))
    assert THRESHOLDS == (0.0, 0.15, 0.5, 0.6, 0.8)


def test_associate_store_sae_vs_neurons_on_a_real_store(tiny_esm2, oas_fasta, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """End to end on a store: amino-acid identity concepts from the store's own residues; a wrong SAE is refused."""
    import workbench
    from workbench.associate import associate_store
    from workbench.sae import TrainConfig, train_sae

    store = workbench.extract(str(tiny_esm2), oas_fasta, layers=[1, 2], out=tmp_path / "s", shard_tokens=800, progress=False)
    obs = store.obs(["sequence_id", "position", "residue"])
    spans = pd.DataFrame({"sequence_id": obs["sequence_id"], "start": obs["position"], "end": obs["position"],
                          "concept": "aa=" + obs["residue"]})
    labels = labels_from_spans(obs, spans).select(min_tokens=20)
    train = TrainConfig(n_tokens=256 * 60, batch_size=256, lr=3e-3, warmup_steps=5, checkpoint_every=0, loss_recovered_sequences=0)
    sae = train_sae(store, out=tmp_path / "sae", layer=1, width=64, k=8, train=train, progress=False).sae
    res_sae = associate_store(store, labels, layer=1, sae=sae, n_permutations=0)
    res_neu = associate_store(store, labels, layer=1, n_permutations=0)
    assert set(res_sae.best["concept"]) == set(labels.token_concepts["concept"])
    assert res_sae.pairs["feature"].str.startswith("f").all() and res_neu.pairs["feature"].str.startswith("u").all()
    # Layer 1 of a (random-weight) ESM-2 still encodes residue identity: some concept is captured by some feature.
    assert max(res_sae.best["test_f1"].max(), res_neu.best["test_f1"].max()) > 0.5
    with pytest.raises(WorkbenchError, match="layer 1"):
        associate_store(store, labels, layer=2, sae=sae)


def test_dense_and_sparse_counts_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    """Neurons take the dense path, SAE features the sparse one: both give the same counts, spans included."""
    rng = np.random.default_rng(0)
    n, f = 300, 7
    obs = pd.DataFrame({"sequence_id": np.repeat([f"s{i}" for i in range(10)], 30), "position": np.tile(np.arange(1, 31), 10)})
    spans = pd.DataFrame({"sequence_id": [f"s{i}" for i in range(10) for _ in range(3)],
                          "start": [2, 10, 20] * 10, "end": [5, 10, 28] * 10, "concept": ["A", "B", "A"] * 10})
    labels = labels_from_spans(obs, spans)
    dense = rng.random((n, f)) > 0.5
    a = count_pairs(dense, labels.tokens, labels.instances)
    import workbench.associate as assoc

    monkeypatch.setattr(assoc, "DENSE_FRACTION", 1.0)  # force the sparse path
    b = count_pairs(sp.csr_matrix(dense), labels.tokens, labels.instances)
    ref_hits = np.zeros((f, 2))
    inst = labels.instances.toarray()
    for j in range(2):
        for i in np.unique(inst[:, j][inst[:, j] > 0]):
            ref_hits[:, j] += dense[inst[:, j] == i].any(0)
    for key in ("tp", "n_active", "n_labelled", "hit_instances", "n_instances"):
        np.testing.assert_allclose(a[key], b[key])
    np.testing.assert_allclose(a["hit_instances"], ref_hits)


def test_threshold_curves_of_the_best_features_by_hand() -> None:
    """f00000 on X: threshold 0 -> P 1, domain recall 1, F1 1; 0.5 -> P 1, domain recall 1/2, F1 2/3; 0.8 as 0.5."""
    feats, labels, ids, token_seq = hand_case()
    curves = associate(feats, labels, ids, token_seq, n_permutations=0).thresholds
    x = curves[(curves["concept"] == "X") & (curves["feature"] == "f00000")].set_index("threshold")
    assert list(x.index) == list(THRESHOLDS)
    assert x.loc[0.0, "f1"] == pytest.approx(1.0) and x.loc[0.0, "recall"] == pytest.approx(0.8)
    assert x.loc[0.5, "precision"] == pytest.approx(1.0) and x.loc[0.5, "domain_recall"] == pytest.approx(0.5)
    assert x.loc[0.5, "f1"] == pytest.approx(2 / 3) and x.loc[0.8, "f1"] == pytest.approx(2 / 3)
    assert set(curves[curves["concept"] == "Y"]["feature"]) == {"f00001"}  # f00000 never touches Y
