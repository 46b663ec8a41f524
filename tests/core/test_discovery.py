"""Discovery: candidate missing annotations, unexplained features, rediscovery of withheld labels, causal edits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from workbench.associate import Association, FeatureMatrix
from workbench.concepts import labels_from_spans
from workbench.discovery import missing_annotations, rediscovery, unexplained_features
from workbench.discovery._rediscovery import _window_base_rate
from workbench.errors import InputError, WorkbenchError

PAIR_COLUMNS = ["feature", "concept", "threshold", "val_f1", "test_f1", "test_precision", "test_recall",
                "test_domain_recall", "tp", "n_active", "n_labelled", "p_value", "q_value"]


def _association(rows: list[dict]) -> Association:  # type: ignore[type-arg]
    base = {"test_recall": 1.0, "test_domain_recall": 1.0, "tp": 1, "n_active": 1, "n_labelled": 1, "p_value": 0.0}
    return Association(pd.DataFrame([{**base, **r} for r in rows], columns=PAIR_COLUMNS), pd.DataFrame())


def _pair(feature: str, concept: str, *, threshold: float, f1: float, precision: float, q: float) -> dict[str, object]:
    return {"feature": feature, "concept": concept, "threshold": threshold, "val_f1": f1, "test_f1": f1,
            "test_precision": precision, "q_value": q}


def _matrix(dense: np.ndarray) -> FeatureMatrix:
    return FeatureMatrix(sp.csr_matrix(dense.astype(np.float32)), np.ones(dense.shape[1], dtype=np.float32),
                         [f"f{i:05d}" for i in range(dense.shape[1])])


def _obs(ids: list[str], length: int, residues: str | None = None) -> pd.DataFrame:
    obs = pd.DataFrame({"sequence_id": np.repeat(ids, length), "position": np.tile(np.arange(1, length + 1), len(ids))})
    if residues is not None:
        obs["residue"] = list(residues * len(ids))
    return obs


# ------------------------------------------------------------------------------------------- missing annotations


def missing_case():  # type: ignore[no-untyped-def]
    """Sequences A and B (10 residues); concept X at 3-5 in both. f0 marks X and also fires, unlabelled, on B 7-8
    (0.9, 0.6), A 6 (0.4, next to the label) and A 10 (0.1, below its threshold 0.15); f1 (weak pair) fires on A 1;
    f2 (good pair, lower validation F1) fires on B 1."""
    obs = _obs(["A", "B"], 10, "ACDEFGHIKL")
    labels = labels_from_spans(obs, pd.DataFrame({"sequence_id": ["A", "B"], "start": [3, 3], "end": [5, 5], "concept": "X"}))
    dense = np.zeros((20, 3))
    dense[[2, 3, 4, 12, 13, 14], 0] = 1.0
    dense[[16, 17, 5, 9], 0] = [0.9, 0.6, 0.4, 0.1]
    dense[0, 1] = 1.0
    dense[10, 2] = 1.0
    assoc = _association([
        _pair("f00000", "X", threshold=0.15, f1=0.8, precision=0.75, q=1e-3),
        _pair("f00001", "X", threshold=0.0, f1=0.3, precision=0.2, q=1e-3),
        _pair("f00002", "X", threshold=0.0, f1=0.6, precision=0.5, q=1e-3),
    ])
    return _matrix(dense), labels, assoc, obs


def test_missing_annotations_by_hand() -> None:
    feats, labels, assoc, obs = missing_case()
    table = missing_annotations(feats, labels, assoc, obs)
    assert table["rank"].tolist() == [1, 2, 3]
    first = table.iloc[0]
    assert (first["concept"], first["feature"], first["sequence_id"], first["start"], first["end"]) == ("X", "f00000", "B", 7, 8)
    assert first["n_tokens"] == 2 and first["residues"] == "HI" and not first["adjacent"]
    assert first["score"] == pytest.approx(0.9 * 0.75) and first["max_activation"] == pytest.approx(0.9)
    assert first["feature_precision"] == 0.75 and first["feature_test_f1"] == 0.8 and first["q_value"] == 1e-3
    second, third = table.iloc[1], table.iloc[2]
    assert (second["feature"], second["sequence_id"], second["start"], second["score"]) == ("f00002", "B", 1, pytest.approx(0.5))
    assert (third["sequence_id"], third["start"], third["end"], bool(third["adjacent"])) == ("A", 6, 6, True)
    assert third["score"] == pytest.approx(0.4 * 0.75)
    # Labelled tokens (3-5) never appear; the weak pair's token (A 1) and the sub-threshold one (A 10) neither.
    assert not ((table["start"] <= 5) & (table["end"] >= 3)).any()
    assert not ((table["sequence_id"] == "A") & table["start"].isin([1, 10])).any()


def test_missing_annotations_options() -> None:
    feats, labels, assoc, obs = missing_case()
    only_best = missing_annotations(feats, labels, assoc, obs, features_per_concept=1)
    assert set(only_best["feature"]) == {"f00000"} and len(only_best) == 2
    assert len(missing_annotations(feats, labels, assoc, obs, top=1)) == 1
    assert missing_annotations(feats, labels, assoc, obs, max_q=1e-4).empty
    # A span covered by two features keeps one row, with the better-scoring feature.
    dense = feats.values.toarray()
    dense[[16, 17, 18], 2] = 1.0  # f2 on B 7-9: span 7-9, best token score 0.5 (f2) < 0.675 (f0 at B 7)
    table = missing_annotations(_matrix(dense), labels, assoc, obs)
    row = table[(table["sequence_id"] == "B") & (table["start"] == 7)]
    assert len(row) == 1 and row.iloc[0]["end"] == 9 and row.iloc[0]["feature"] == "f00000"
    with pytest.raises(WorkbenchError, match="another SAE"):
        missing_annotations(FeatureMatrix(feats.values, feats.max_activation, ["a", "b", "c"]), labels, assoc, obs)
    with pytest.raises(WorkbenchError, match="different stores"):
        missing_annotations(feats, labels, assoc, obs.iloc[:-1])


def test_labels_given_per_whole_sequence_give_one_row_per_sequence() -> None:
    """An image's label broadcast to its positions: a candidate is the image, not a stretch of it."""
    from workbench._annotate_tables import _summary
    from workbench.discovery._spans import whole_sequence_concepts

    obs = _obs(["A", "B", "C"], 6)
    labels = labels_from_spans(obs, pd.DataFrame({
        "sequence_id": ["A", "B", "C", "A"], "start": [1, 1, 1, 2], "end": [6, 6, 6, 3],
        "concept": ["label=yes", "label=no", "label=no", "part=x"]}))
    names = labels.token_concepts["concept"].tolist()
    seq = np.repeat(np.arange(3), 6)
    whole = dict(zip(names, whole_sequence_concepts(labels, seq)))
    assert whole == {"label=no": True, "label=yes": True, "part=x": False}  # label=no: B and C wholly, A not at all
    dense = np.zeros((18, 1))
    dense[0:6, 0] = 1.0  # f0 marks label=yes on A
    dense[[7, 10, 11], 0] = [0.5, 0.9, 0.3]  # and fires on B at positions 2, 5 and 6 (not neighbours)
    assoc = _association([_pair("f00000", "label=yes", threshold=0.1, f1=0.9, precision=0.8, q=1e-3)])
    table = missing_annotations(_matrix(dense), labels, assoc, obs)
    assert len(table) == 1
    row = table.iloc[0]
    assert (row["sequence_id"], row["start"], row["end"], row["n_tokens"]) == ("B", 2, 6, 3)
    assert bool(row["whole_sequence"]) and not bool(row["adjacent"]) and row["kind"] == "conflict"
    assert row["score"] == pytest.approx(0.9 * 0.8)
    text = _summary({"missing_annotations": table})["top_missing_annotations"][0]
    assert text.startswith("label=yes for B (whole; 3 tokens fire) (conflict; f00000")
    # a concept on stretches keeps its spans: part=x fires apart on A 5 and 6 -> one span 5-6
    dense2 = np.zeros((18, 1))
    dense2[[1, 2], 0] = 1.0
    dense2[[4, 5], 0] = 0.7
    assoc2 = _association([_pair("f00000", "part=x", threshold=0.1, f1=0.9, precision=0.8, q=1e-3)])
    spans = missing_annotations(_matrix(dense2), labels, assoc2, obs)
    assert spans[["start", "end"]].values.tolist() == [[5, 6]] and not spans["whole_sequence"].any()


def test_summary_of_unexplained_features_skips_empty_parts() -> None:
    from workbench._annotate_tables import _summary

    table = pd.DataFrame({"feature": ["f1", "f2"], "top_residues": ["", "C 40%"], "profile": ["frame_row=top 90%", ""],
                          "strata_share": [0.05, 0.5]})
    lines = _summary({"unexplained_features": table})["top_unexplained_features"]
    assert lines == ["f1: frame_row=top 90%; strata explain 5% of its variance",
                     "f2: C 40%; strata explain 50% of its variance"]


def test_numbering_artefacts_rank_last_and_stratified_pairs_first() -> None:
    """Sequence A (16 residues) is numbered at 3-5 and 7-14 (IMGT-like group ``num``; 1-2, 6 and 15-16 are not);
    concept X sits at 4-5. f0 fires unlabelled at 1 (before the numbering), 6 (a gap), 8 (inside), 14 (the last
    numbered residue) and 16 (after it); f1 at 11 (inside). Only 8 and 11 are candidates, the rest artefacts."""
    obs = _obs(["A"], 16)
    spans = [{"sequence_id": "A", "start": p, "end": p, "concept": f"num={p}"} for p in (3, 4, 5, *range(7, 15))]
    spans.append({"sequence_id": "A", "start": 4, "end": 5, "concept": "X"})
    labels = labels_from_spans(obs, pd.DataFrame(spans))
    dense = np.zeros((16, 2))
    dense[[3, 4, 0, 5, 7, 13, 15], 0] = [1.0, 1.0, 0.9, 0.8, 0.3, 0.7, 0.6]
    dense[[3, 4, 10], 1] = [1.0, 1.0, 0.2]
    assoc = _association([_pair("f00000", "X", threshold=0.0, f1=0.8, precision=0.75, q=1e-3),
                          _pair("f00001", "X", threshold=0.0, f1=0.7, precision=0.75, q=1e-3)])
    plain = missing_annotations(_matrix(dense), labels, assoc, obs)
    assert set(plain["kind"]) <= {"silent", "boundary"}  # without the numbering group, nothing is set aside
    table = missing_annotations(_matrix(dense), labels, assoc, obs, position_group="num")
    kinds = dict(zip(table["start"], table["kind"]))
    assert kinds == {8: "silent", 11: "silent", 1: "numbering artefact", 6: "numbering artefact",
                     14: "numbering artefact", 16: "numbering artefact"}
    assert table["start"].tolist()[:2] == [8, 11]  # ranked first although the artefacts score higher
    # A stratified association puts pairs that survive the strata first within a kind, whatever their score.
    pairs = assoc.pairs.assign(stratified=["explained", "survives"], or_mh=[1.0, 9.0], q_cmh=[0.5, 1e-4])
    ranked = missing_annotations(_matrix(dense), labels, Association(pairs, pd.DataFrame()), obs, position_group="num")
    top = ranked.iloc[0]
    assert (top["start"], top["feature"], top["stratified"], top["or_mh"]) == (11, "f00001", "survives", 9.0)
    assert ranked.iloc[1]["start"] == 8 and ranked.iloc[1]["stratified"] == "explained"


# ------------------------------------------------------------------------------------------ unexplained features


def test_unexplained_features_by_hand() -> None:
    n_seq, length = 10, 20
    ids = [f"s{i}" for i in range(n_seq)]
    residues = "ACDEFGHIKLMNPQRSTVWY"
    obs = _obs(ids, length, residues)
    spans = [pd.DataFrame({"sequence_id": ids, "start": p, "end": p, "concept": f"imgt={p}"}) for p in range(1, length + 1)]
    spans.append(pd.DataFrame({"sequence_id": ids, "start": 2, "end": 2, "concept": "motif=Cys"}))
    spans.append(pd.DataFrame({"sequence_id": ids, "start": 10, "end": 12, "concept": "X"}))
    labels = labels_from_spans(obs, pd.concat(spans, ignore_index=True))
    dense = np.zeros((n_seq * length, 5))
    starts = np.arange(n_seq) * length
    dense[starts + 9, 0] = dense[starts + 10, 0] = 1.0  # f0: matches X (pair below) -> explained
    dense[starts + 1, 1] = 1.0                            # f1: the cysteine at position 2 of every sequence
    dense[starts[0] + np.arange(length), 2] = 1.0         # f2: every token of s0 only -> one sequence
    dense[starts + 14, 3] = 0.5                           # f3: position 15 everywhere, weaker; weak pair with X
    dense[starts[:3] + 4, 4] = 1.0                        # f4: three sequences only
    assoc = _association([
        _pair("f00000", "X", threshold=0.0, f1=0.9, precision=1.0, q=1e-4),
        _pair("f00003", "X", threshold=0.0, f1=0.1, precision=0.1, q=0.5),
    ])
    table = unexplained_features(_matrix(dense), assoc, labels, obs)
    assert table["feature"].tolist() == ["f00001", "f00003"] and table["rank"].tolist() == [1, 2]
    f1, f3 = table.iloc[0], table.iloc[1]
    assert f1["n_sequences"] == 10 and f1["density"] == pytest.approx(0.05) and f1["mass"] == pytest.approx(10)
    assert f1["consistency"] == pytest.approx(0.9) and f1["score"] == pytest.approx(9.0)
    assert f1["top_residues"] == "C 100%" and f1["profile"] == "imgt=2 100%"  # no "region" labels: skipped
    assert f1["motif"] == "motif=Cys 100% (20.0x)"
    assert f1["best_concept"] == "" and f1["best_f1"] == 0 and np.isnan(f1["best_q"])
    assert f1["top_sequences"] == "s0, s1, s2"
    assert f3["best_concept"] == "X" and f3["best_f1"] == pytest.approx(0.1) and f3["top_residues"] == "R 100%"
    assert f3["score"] == pytest.approx(4.5) and f3["motif"] == ""
    # Lowering the sequence bar admits f4; raising the density bar drops everything.
    assert "f00004" in set(unexplained_features(_matrix(dense), assoc, labels, obs, min_sequences=3)["feature"])
    assert unexplained_features(_matrix(dense), assoc, labels, obs, min_density=0.5).empty
    # Without residues, imgt or motif labels the evidence columns are empty rather than errors.
    bare = labels_from_spans(obs[["sequence_id", "position"]], spans[-1])
    plain = unexplained_features(_matrix(dense), assoc, bare, obs[["sequence_id", "position"]])
    assert (plain["top_residues"] == "").all() and (plain["profile"] == "").all() and (plain["motif"] == "").all()


# -------------------------------------------------------------------------------------------------- rediscovery


def _planted(n_seq: int, length: int, span: int, seed: int):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    ids = [f"p{i:03d}" for i in range(n_seq)]
    obs = _obs(ids, length)
    starts = rng.integers(1, length - span, n_seq)
    spans = pd.DataFrame({"sequence_id": ids, "start": starts, "end": starts + span - 1, "concept": "m=X"})
    labels = labels_from_spans(obs, spans)
    return obs, labels, ids, np.repeat(np.arange(n_seq), length), rng


def test_rediscovery_perfect_feature_finds_withheld_instances() -> None:
    obs, labels, ids, token_seq, rng = _planted(60, 30, 3, 0)
    truth = labels.tokens.toarray()[:, 0]
    dense = np.c_[truth * rng.uniform(0.9, 1.0, len(truth)), (rng.random(len(truth)) < 0.1) * rng.random(len(truth))]
    feats = _matrix(dense)
    table = rediscovery(feats, labels, obs, ids, token_seq, k=10)
    row = table.iloc[0]
    assert row["concept"] == "m=X" and row["feature"] == "f00000" and row["rank"] == 1
    assert row["n_instances"] == 60 and row["n_withheld"] == 30 and row["n_candidates"] == 30
    assert row["precision_at_k"] == 1.0 and row["withheld_found"] == 1.0 and row["k"] == 10
    # Chance: a random 3-token window off the remaining labels overlaps one of the 30 withheld 3-token spans.
    assert 0.05 < row["base_rate"] < 0.3 and row["lift"] == pytest.approx(1 / row["base_rate"])
    again = rediscovery(feats, labels, obs, ids, token_seq, k=10)
    pd.testing.assert_frame_equal(table, again)
    other = rediscovery(feats, labels, obs, ids, token_seq, k=10, seed=1, withhold=0.2)
    assert other.iloc[0]["n_withheld"] == 12 and other.iloc[0]["precision_at_k"] == 1.0
    # Too few instances: skipped by default, refused when asked for by name.
    assert rediscovery(feats, labels, obs, ids, token_seq, min_instances=100).empty
    with pytest.raises(InputError, match="no token concept"):
        rediscovery(feats, labels, obs, ids, token_seq, concepts=["m=Y"])
    with pytest.raises(InputError, match="withhold"):
        rediscovery(feats, labels, obs, ids, token_seq, withhold=1.0)


def test_rediscovery_random_feature_is_at_chance() -> None:
    obs, labels, ids, token_seq, rng = _planted(300, 40, 6, 1)
    noise = (rng.random(labels.n_tokens) < 0.15) * rng.random(labels.n_tokens)
    feats = _matrix(noise[:, None])
    loose = {"min_test_f1": 0.0, "max_q": 1.0}
    table = rediscovery(feats, labels, obs, ids, token_seq, k=400, candidate_options=loose)
    row = table.iloc[0]
    assert row["n_candidates"] > 400 and row["feature"] == "f00000"
    assert abs(row["precision_at_k"] - row["base_rate"]) < 0.06 and 0.6 < row["lift"] < 1.5
    # With the default bars the random feature is not a reliable marker: no candidates, no precision.
    strict = rediscovery(feats, labels, obs, ids, token_seq, k=400).iloc[0]
    assert strict["n_candidates"] == 0 and strict["feature"] == "" and np.isnan(strict["precision_at_k"])


def test_window_base_rate_by_hand() -> None:
    labelled = np.array([0, 1, 0, 0, 0, 0, 0], dtype=bool)
    withheld = np.array([0, 0, 0, 1, 0, 0, 1], dtype=bool)
    seq = np.array([0, 0, 0, 0, 0, 0, 1])
    # Length 1: unlabelled tokens 0, 2, 3, 4, 5, 6 -> withheld 3 and 6: 2/6. Length 2: windows inside one sequence
    # without a labelled token: (2,3) (3,4) (4,5) -> 2 of 3 hit.
    assert _window_base_rate(np.array([1]), labelled, withheld, seq) == pytest.approx(2 / 6)
    assert _window_base_rate(np.array([1, 2, 2]), labelled, withheld, seq) == pytest.approx((2 / 6 + 4 / 3) / 3)


# ------------------------------------------------------------------------------------ real store: causal effects


@pytest.fixture(scope="module")
def real(tiny_esm2, oas_fasta, tmp_path_factory):  # type: ignore[no-untyped-def]
    import torch

    import workbench
    from workbench.associate import feature_matrix
    from workbench.registry import load_adapter
    from workbench.sae import TrainConfig, train_sae

    tmp = tmp_path_factory.mktemp("discovery")
    store = workbench.extract(str(tiny_esm2), oas_fasta, layers=[1], out=tmp / "s", progress=False)
    train = TrainConfig(n_tokens=256 * 200, batch_size=256, lr=3e-3, warmup_steps=10, checkpoint_every=0,
                        loss_recovered_sequences=0)
    sae = train_sae(store, out=tmp / "sae", layer=1, width=64, k=8, train=train, progress=False).sae
    dead = 5
    with torch.no_grad():
        sae.b_enc[dead] = -1e4  # this feature can never fire
    feats = feature_matrix(store, sae, layer=1)
    return store, sae, feats, load_adapter(str(tiny_esm2)), dead


def test_causal_effects_ablation_acts_where_the_feature_fires(real) -> None:  # type: ignore[no-untyped-def]
    from workbench.discovery import causal_effects

    store, sae, feats, adapter, dead = real
    density = np.bincount(feats.values.indices, minlength=feats.values.shape[1]) / feats.values.shape[0]
    live = [int(f) for f in np.flatnonzero((density > 0.01) & (density < 0.3))[:6]]
    assert len(live) >= 4 and density[dead] == 0
    table = causal_effects(adapter, store, sae, layer=1, features=[*live, dead], feature_matrix=feats, n_sequences=4)
    assert table["rank"].tolist() == list(range(1, len(live) + 2)) and (table["mode"] == "ablate").all()
    effect = table.iloc[: len(live)]
    assert (effect["n_sequences"] == 4).all() and (effect["n_firing_tokens"] > 0).all()
    assert (effect["kl_firing"] > effect["kl_other"]).mean() >= 0.75
    assert np.isfinite(effect["dlogp_firing"]).all() and (effect["n_dlogp_firing"] + effect["n_dlogp_other"] > 0).all()
    nil = table.iloc[-1]
    assert nil["feature"] == f"f{dead:05d}" and nil["n_firing_tokens"] == 0 and nil["n_sequences"] == 4
    assert nil["kl_other"] == 0.0 and nil["dlogp_other"] == 0.0 and np.isnan(nil["kl_firing"])
    steered = causal_effects(adapter, store, sae, layer=1, features=[f"f{live[0]:05d}"], feature_matrix=feats,
                             n_sequences=2, mode="steer", steer=4.0)
    assert steered.iloc[0]["kl_other"] > 0 and steered.iloc[0]["feature"] == f"f{live[0]:05d}"


def test_ablation_removes_exactly_the_decoded_feature(real) -> None:  # type: ignore[no-untyped-def]
    """The ablation edit equals h - (decode(c) - decode(c without f)); steering adds the scaled decoder row."""
    import torch

    from workbench.discovery import feature_edit

    store, sae, feats, _, _ = real
    h = torch.as_tensor(store.get_sequence(str(store.sequences["sequence_id"].iloc[0]), 1))
    codes = sae.encode(h)
    f = int(torch.argmax((codes > 0).sum(0)))
    zeroed = codes.clone()
    zeroed[:, f] = 0
    state: dict[str, object] = {}
    edited = feature_edit(sae, f, mode="ablate", amount=0.0, state=state)(h)
    torch.testing.assert_close(edited, h - (sae.decode(codes) - sae.decode(zeroed)), rtol=1e-5, atol=1e-5)
    assert torch.equal(state["fires"], codes[:, f] > 0) and bool((codes[:, f] > 0).any())
    unchanged = ~(codes[:, f] > 0)
    assert torch.equal(edited[unchanged], h[unchanged])
    steered = feature_edit(sae, f, mode="steer", amount=2.0, state={})(h)
    torch.testing.assert_close(steered - h, (2.0 * sae.W_dec[f] * sae.input_scale).expand_as(h), rtol=1e-4, atol=1e-5)


def test_causal_effects_refuses_another_model(real) -> None:  # type: ignore[no-untyped-def]
    from workbench.discovery import causal_effects

    store, sae, feats, adapter, _ = real
    with pytest.raises(WorkbenchError, match="weights"):
        causal_effects(adapter.randomized(1), store, sae, layer=1, features=[0], feature_matrix=feats)
    with pytest.raises(WorkbenchError, match="layers"):
        causal_effects(adapter, store, sae, layer=2, features=[0], feature_matrix=feats)
    with pytest.raises(InputError, match="mode"):
        causal_effects(adapter, store, sae, layer=1, features=[0], feature_matrix=feats, mode="zero")


def test_discovery_tables_on_a_real_store(real) -> None:  # type: ignore[no-untyped-def]
    """End to end with the domain's motif / amino-acid labels: the tables build and keep their promises."""
    from domains.sequence.annotations import motif_labels
    from workbench.associate import associate_store

    store, sae, feats, _, _ = real
    labels = motif_labels(store).select(min_tokens=20)
    assoc = associate_store(store, labels, layer=1, sae=sae, n_permutations=0)
    obs = store.obs(["sequence_id", "position", "residue"])
    cands = missing_annotations(feats, labels, assoc, obs, min_test_f1=0.3)
    assert cands["rank"].tolist() == list(range(1, len(cands) + 1))
    order = cands["kind"].map({"silent": 0, "conflict": 1, "boundary": 2})
    assert order.is_monotonic_increasing  # silent candidates first, then disagreements
    assert all(g["score"].is_monotonic_decreasing for _, g in cands.groupby("kind"))
    # aa=X candidates sit on residues labelled with another amino acid: conflicts naming that residue.
    aa = cands[cands["concept"].str.startswith("aa=") & (cands["kind"] == "conflict")]
    assert len(aa) and (aa["database_label"] == "aa=" + aa["residues"].str[0]).all()
    # Residue-identity concepts are complete, so a candidate span can never hold the residue it is proposed for.
    aa = cands[cands["concept"].str.startswith("aa=")]
    assert all(c.split("=")[1] not in r for c, r in zip(aa["concept"], aa["residues"]))
    unexplained = unexplained_features(feats, assoc, labels, obs)
    assert (unexplained["n_sequences"] >= 5).all() and (unexplained["profile"] == "").all()
    captured = set(assoc.pairs.loc[(assoc.pairs["q_value"] <= 0.05) & (assoc.pairs["test_f1"] >= 0.2), "feature"])
    assert not captured & set(unexplained["feature"])
