"""Concept scopes: outside a concept's scope a token is unlabelled, not negative, in every consumer of the labels."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.stats import hypergeom

import workbench.associate as assoc_module
from workbench.associate import FeatureMatrix, associate, count_pairs
from workbench.concepts import ConceptLabels, concat_labels, labels_from_spans, scope_labels
from workbench.errors import InputError
from core_helpers import alternating_ids  # noqa: E402  (tests/core, on the path under pytest)

LENGTH = 20
SCOPE_END = 10
"""Residues 1-10 of every sequence are in scope (compared with a germline, say), 11-20 are not."""




def _obs(ids: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"sequence_id": np.repeat(ids, LENGTH), "position": np.tile(np.arange(1, LENGTH + 1), len(ids)),
                         "residue": list("ACDEFGHIKLMNPQRSTVWY" * len(ids))})


def _in_scope(n_seq: int) -> np.ndarray:
    return np.tile(np.arange(1, LENGTH + 1) <= SCOPE_END, n_seq)


def _matrix(dense: np.ndarray) -> FeatureMatrix:
    return FeatureMatrix(sp.csr_matrix(dense.astype(np.float32)), np.ones(dense.shape[1], dtype=np.float32),
                         [f"f{i:05d}" for i in range(dense.shape[1])])


def scoped_case(n_seq: int = 20, *, scoped: bool = True):  # type: ignore[no-untyped-def]
    """``shm=mutated`` at residues 3-4 of every sequence (one instance each), in scope on residues 1-10; ``aa=A``
    (unscoped) at residue 1. f0 fires on every mutated residue and on residues 15-16, outside the scope; f1 fires on
    residue 1 and on residues 5-6 (in scope, unlabelled)."""
    ids = alternating_ids(n_seq)
    obs = _obs(ids)
    spans = pd.DataFrame({"sequence_id": ids * 2, "start": [3] * n_seq + [1] * n_seq, "end": [4] * n_seq + [1] * n_seq,
                          "concept": ["shm=mutated"] * n_seq + ["aa=A"] * n_seq})
    labels = labels_from_spans(obs, spans)
    if scoped:
        labels = scope_labels(labels, tokens=_in_scope(n_seq), name="germline", token_concepts=["shm=mutated"])
    pos = obs["position"].to_numpy()
    dense = np.zeros((len(obs), 2))
    dense[np.isin(pos, [3, 4, 15, 16]), 0] = 1.0
    dense[np.isin(pos, [1, 5, 6]), 1] = 1.0
    return _matrix(dense), labels, ids, np.repeat(np.arange(n_seq), LENGTH), obs


# ------------------------------------------------------------------------------------------------- association


def test_scoped_precision_counts_only_tokens_in_scope() -> None:
    feats, labels, ids, token_seq, _ = scoped_case()
    res = associate(feats, labels, ids, token_seq, n_permutations=0)
    x = res.pairs.set_index(["feature", "concept"]).loc[("f00000", "shm=mutated")]
    # In scope f0 fires only on the mutated residues: precision 1 (unscoped: 2 of 4 active residues).
    assert x["test_precision"] == pytest.approx(1.0) and x["test_f1"] == pytest.approx(1.0)
    assert x["n_active"] == 2 * 20 and x["tp"] == 2 * 20 and x["n_labelled"] == 2 * 20
    best = res.best.set_index("concept")
    assert best.loc["shm=mutated", "n_scope"] == SCOPE_END * 20 and best.loc["aa=A", "n_scope"] == LENGTH * 20

    plain = associate(feats, scoped_case(scoped=False)[1], ids, token_seq, n_permutations=0)
    y = plain.pairs.set_index(["feature", "concept"]).loc[("f00000", "shm=mutated")]
    assert y["test_precision"] == pytest.approx(0.5) and y["n_active"] == 4 * 20
    assert plain.best.set_index("concept").loc["shm=mutated", "n_scope"] == LENGTH * 20


def test_enrichment_draws_from_the_scope() -> None:
    feats, labels, ids, token_seq, _ = scoped_case()
    res = associate(feats, labels, ids, token_seq, n_permutations=0)
    # f1 fires on residues 1, 5 and 6; of them 5 and 6 lie in scope but carry no mutation: no overlap, no pair.
    assert not ((res.pairs["feature"] == "f00001") & (res.pairs["concept"] == "shm=mutated")).any()
    x = res.pairs.set_index(["feature", "concept"]).loc[("f00000", "shm=mutated")]
    expected = hypergeom.sf(x["tp"] - 1, SCOPE_END * 20, x["n_labelled"], x["n_active"])
    assert x["p_value"] == pytest.approx(expected, rel=1e-12, abs=0)
    # Unscoped, the same overlap among 4 x 20 active of 400 tokens is far less surprising.
    assert x["p_value"] < 1e-6 * hypergeom.sf(x["tp"] - 1, LENGTH * 20, x["n_labelled"], 4 * 20)


def test_unscoped_concepts_are_unchanged_by_scopes_elsewhere() -> None:
    """aa=A is unscoped: its pairs and best row are the same whether or not shm=mutated has a scope."""
    feats, labels, ids, token_seq, _ = scoped_case()
    plain_labels = scoped_case(scoped=False)[1]
    a = associate(feats, labels, ids, token_seq, n_permutations=0)
    b = associate(feats, plain_labels, ids, token_seq, n_permutations=0)
    pa = a.pairs[a.pairs["concept"] == "aa=A"].reset_index(drop=True)
    pb = b.pairs[b.pairs["concept"] == "aa=A"].reset_index(drop=True)
    pd.testing.assert_frame_equal(pa.drop(columns=["q_value"]), pb.drop(columns=["q_value"]))
    pd.testing.assert_frame_equal(a.best[a.best["concept"] == "aa=A"], b.best[b.best["concept"] == "aa=A"])
    # A scope holding every token gives the unscoped numbers.
    everywhere = scope_labels(scoped_case(scoped=False)[1], tokens=np.ones(labels.n_tokens, bool), name="all")
    c = associate(feats, everywhere, ids, token_seq, n_permutations=0)
    pd.testing.assert_frame_equal(c.pairs, b.pairs, check_exact=False, rtol=1e-12)
    pd.testing.assert_frame_equal(c.best, b.best)


def test_scoped_counts_match_a_dense_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    active = rng.random((300, 6)) > 0.6
    labels = rng.random((300, 4)) > 0.8
    masks = rng.random((300, 2)) > 0.3
    index = np.array([1, -1, 0, 1])
    ref = np.c_[active.T.astype(int) @ masks[:, 1], active.sum(0), active.T.astype(int) @ masks[:, 0],
                active.T.astype(int) @ masks[:, 1]]
    dense = count_pairs(active, sp.csr_matrix(labels), None, masks, index)
    np.testing.assert_array_equal(dense["n_active_scoped"], ref)
    np.testing.assert_array_equal(dense["n_active"], active.sum(0))
    monkeypatch.setattr(assoc_module, "DENSE_FRACTION", 1.0)  # the sparse path, sparse scopes
    sparse = count_pairs(sp.csr_matrix(active), sp.csr_matrix(labels), None, sp.csr_matrix(masks), index)
    np.testing.assert_array_equal(sparse["n_active_scoped"], ref)
    assert "n_active_scoped" not in count_pairs(active, sp.csr_matrix(labels))


def test_permutation_null_shifts_scopes_with_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every count of the null sees shifted labels inside their (equally shifted) scope."""
    feats, labels, ids, token_seq, _ = scoped_case()
    calls = []
    original = assoc_module._label_side
    _, scope_index = labels.scope_matrix("token")

    def checked(lab, spans=None, scopes=None):  # type: ignore[no-untyped-def]
        if scopes is not None:
            csc = sp.csc_matrix(lab)
            for j in np.flatnonzero(scope_index >= 0):
                rows = csc.indices[csc.indptr[j] : csc.indptr[j + 1]]
                assert np.asarray(scopes)[rows, scope_index[j]].all()
            calls.append(1)
        return original(lab, spans, scopes)

    monkeypatch.setattr(assoc_module, "_label_side", checked)
    res = associate(feats, labels, ids, token_seq, n_permutations=9, seed=3)
    assert len(calls) == 2 + 9  # the labels of both splits, then of every shift (each serves all thresholds)
    null_p, empirical = res.best["null_p"], res.best["null_p_empirical"]
    assert np.isfinite(null_p).all() and ((null_p > 0) & (null_p <= 1)).all()
    assert ((empirical >= 0.1) & (empirical <= 1)).all()  # 9 shifts: the empirical p-value's floor is 1/10


# ------------------------------------------------------------------------------------------------- labels


def test_concat_subset_select_and_scope_checks() -> None:
    _, labels, *_ = scoped_case()
    n = labels.n_tokens
    obs = _obs(alternating_ids(20))
    other = labels_from_spans(obs, pd.DataFrame({"sequence_id": [obs["sequence_id"].iloc[0]], "start": [2], "end": [2],
                                                 "concept": ["shm=other"]}))
    other = scope_labels(other, tokens=_in_scope(20), name="germline")
    other.measures = pd.DataFrame({"shm_count": np.arange(20, dtype=float)})
    both = concat_labels([labels, other])
    assert list(both.scopes) == ["germline"] and both.token_scope("shm=other") is not None
    assert both.token_concepts.set_index("concept")["scope"].to_dict() == {
        "aa=A": "", "shm=mutated": "germline", "shm=other": "germline"}
    assert list(both.measures.columns) == ["shm_count"]
    masks, index = both.scope_matrix()
    assert masks.shape == (n, 1) and index.tolist() == [-1, 0, 0]
    # One scope name, two masks: refused.
    clash = scope_labels(labels_from_spans(obs, pd.DataFrame(columns=["sequence_id", "start", "end", "concept"])),
                         tokens=np.ones(n, bool), name="germline")
    with pytest.raises(InputError, match="scope 'germline' differently"):
        concat_labels([labels, clash])
    # A labelled token outside the mask: refused.
    fresh = scoped_case(scoped=False)[1]
    with pytest.raises(InputError, match="outside it"):
        scope_labels(fresh, tokens=~_in_scope(20), name="wrong", token_concepts=["shm=mutated"])
    # subset and select keep scopes and measures; a concept naming an undefined scope is an error.
    sub = both.subset([2], [])
    assert sub.token_concepts["concept"].tolist() == ["shm=other"] and np.array_equal(sub.token_scope(0), _in_scope(20))
    assert sub.measures is both.measures
    kept = both.select(min_tokens=2)
    assert kept.token_concepts["concept"].tolist() == ["aa=A", "shm=mutated"] and "germline" in kept.scopes
    broken = replace(sub, scopes={})
    with pytest.raises(InputError, match="germline"):
        broken.scope_matrix()


# ------------------------------------------------------------------------------------------------- probes, describe


def test_probe_targets_are_nan_outside_the_groups_scope() -> None:
    from workbench._pipeline import probe_groups
    from workbench.probes import sequence_targets, token_targets

    n_seq = 4
    obs = _obs(alternating_ids(n_seq))
    pos = obs["position"].to_numpy()
    # A two-valued group labelled on every token (as an inconsistent source might); only 1-10 is its scope.
    spans = pd.DataFrame({"sequence_id": obs["sequence_id"], "start": pos, "end": pos,
                          "concept": np.where(pos % 2 == 0, "shm=mutated", "shm=germline")})
    seq_values = pd.DataFrame({"sequence_id": alternating_ids(n_seq), "isotype": ["G", "M", "G", "A"]})
    labels = labels_from_spans(obs, spans, sequence_ids=alternating_ids(n_seq), sequence_values=seq_values)
    labels = ConceptLabels(labels.tokens, labels.instances, labels.token_concepts.assign(scope="germline"),
                           labels.sequences, labels.sequence_concepts.assign(scope="typed"),
                           {"germline": _in_scope(n_seq)}, {"typed": np.array([True, True, False, True])})
    t = token_targets(labels, ["shm"])["shm"]
    inside = _in_scope(n_seq)
    assert t[~inside].isna().all() and t[inside].notna().all()
    assert (t[inside].astype(str) == np.where(pos[inside] % 2 == 0, "mutated", "germline")).all()
    s = sequence_targets(labels, ["isotype"])["isotype"]
    assert s.isna().tolist() == [False, False, True, False]
    # A group with an unscoped concept is defined everywhere.
    mixed = replace(labels, token_concepts=labels.token_concepts.assign(
        scope=np.where(labels.token_concepts["concept"] == "shm=mutated", "germline", "")))
    assert token_targets(mixed, ["shm"])["shm"].notna().all()
    # Coverage for automatic probe groups is measured inside the scope.
    half = scope_labels(labels_from_spans(obs, spans[inside]), tokens=inside, name="germline")
    assert probe_groups(half, level="token", min_coverage=0.9) == ["shm"]


def test_profiles_are_taken_inside_the_scope() -> None:
    from workbench.describe import describe_features, feature_profile

    feats, labels, ids, token_seq, obs = scoped_case()
    values, share, baseline = feature_profile(labels, feats, "shm")
    # f0: half its mass on mutated residues, the other half outside the scope -> all of its in-scope mass.
    assert values == ["mutated"] and share[0, 0] == pytest.approx(1.0) and share[1, 0] == 0
    assert baseline[0] == pytest.approx(2 / SCOPE_END)
    plain = feature_profile(scoped_case(scoped=False)[1], feats, "shm")
    assert plain[1][0, 0] == pytest.approx(0.5) and plain[2][0] == pytest.approx(2 / LENGTH)
    res = associate(feats, labels, ids, token_seq, n_permutations=0)
    desc = describe_features(res, labels, feats, profile_groups=("shm",))
    assert desc.loc["f00000", "profile"] == "shm (50% in scope): mutated 100%"
    assert "100% shm=mutated in scope" in desc.loc["f00000", "description"]


# ------------------------------------------------------------------------------------------------- discovery


def test_missing_annotations_mark_spans_outside_the_scope() -> None:
    from workbench.discovery import missing_annotations

    feats, labels, ids, token_seq, obs = scoped_case()
    dense = feats.values.toarray()
    first = np.flatnonzero(obs["sequence_id"] == ids[0])
    dense[first[[9, 10]], 0] = 1.0  # f0 on residues 10-11 of one sequence: across the scope's end
    feats = _matrix(dense)
    res = associate(feats, labels, ids, token_seq, n_permutations=0)
    table = missing_annotations(feats, labels, res, obs, top=None)
    table = table[table["concept"] == "shm=mutated"]
    outside = table[~table["in_scope"]]
    assert len(outside) == 20 + 1 and set(outside["start"]) == {11, 15}
    assert table["in_scope"].dtype == bool
    # The firing across the boundary is two spans: residue 10 (in scope) and 11 (outside, joined to nothing).
    one = table[table["sequence_id"] == ids[0]].sort_values("start")
    assert one[["start", "end", "in_scope"]].values.tolist() == [[10, 10, True], [11, 11, False], [15, 16, False]]
    # Unscoped, the same firings are all "in scope".
    plain_labels = scoped_case(scoped=False)[1]
    plain = missing_annotations(feats, plain_labels, associate(feats, plain_labels, ids, token_seq, n_permutations=0),
                                obs, top=None)
    assert plain["in_scope"].all()


def test_rediscovery_ignores_tokens_outside_the_scope() -> None:
    from workbench.discovery import rediscovery

    feats, labels, ids, token_seq, obs = scoped_case()
    options = {"candidate_options": {"min_test_f1": 0.2}, "concepts": ["shm=mutated"], "k": 10}
    scoped = rediscovery(feats, labels, obs, ids, token_seq, **options).iloc[0]
    # f0 marks every withheld instance; its firings on 15-16 lie outside the scope and are neither hits nor misses.
    assert scoped["feature"] == "f00000" and scoped["n_candidates"] == scoped["n_withheld"] == 10
    assert scoped["precision_at_k"] == pytest.approx(1.0) and scoped["withheld_found"] == pytest.approx(1.0)
    # Chance windows of two residues lie in 1-10 outside the kept labels: 6 per kept sequence (none hits), 9 per
    # sequence whose instance was withheld (3 hit) -> 30 / 150.
    assert scoped["base_rate"] == pytest.approx(0.2) and scoped["lift"] == pytest.approx(5.0)
    plain_labels = scoped_case(scoped=False)[1]
    plain = rediscovery(feats, plain_labels, obs, ids, token_seq, **options).iloc[0]
    assert plain["n_candidates"] == 10 + 20 and plain["precision_at_k"] < 1.0


def test_unexplained_evidence_is_taken_inside_the_scope() -> None:
    from workbench.discovery import unexplained_features

    feats, labels, ids, token_seq, obs = scoped_case()
    res = associate(feats, labels, ids, token_seq, n_permutations=0)
    options = {"min_f1": 2.0, "profile_groups": ("shm",), "motif_groups": ("shm",)}  # nothing counts as explained
    f0 = unexplained_features(feats, res, labels, obs, **options).set_index("feature").loc["f00000"]
    # Half of f0's weight lies outside the scope; inside, all of it is on mutated residues (2 of the 10 in scope).
    assert f0["profile"] == "shm=mutated 100% (of the 50% in scope)"
    assert f0["motif"] == "shm=mutated 100% (5.0x)"
    plain_labels = scoped_case(scoped=False)[1]
    g0 = unexplained_features(feats, res, plain_labels, obs, **options).set_index("feature").loc["f00000"]
    assert g0["profile"] == "shm=mutated 50%" and g0["motif"] == "shm=mutated 50% (5.0x)"


# ------------------------------------------------------------------------------------------------- pipeline


def test_pipeline_helpers_keep_scopes_and_write_measures() -> None:
    from workbench._annotate_tables import _measures_table
    from workbench._pipeline import _without_sources

    _, labels, ids, *_ = scoped_case()
    labels = replace(labels, token_concepts=labels.token_concepts.assign(
        source=np.where(labels.token_concepts["concept"] == "aa=A", "motif", "germline")))
    labels.measures = pd.DataFrame({"shm_count": np.r_[np.nan, np.arange(19.0)]})
    open_labels = _without_sources(labels, ["motif"])
    assert open_labels.token_concepts["concept"].tolist() == ["shm=mutated"]
    assert np.array_equal(open_labels.token_scope(0), labels.scopes["germline"])
    assert open_labels.measures is labels.measures
    table = _measures_table(labels, ids)
    assert list(table.columns) == ["sequence_id", "shm_count"] and table["sequence_id"].tolist() == ids
    assert np.isnan(table["shm_count"].iloc[0]) and table["shm_count"].iloc[-1] == 18
    with pytest.raises(InputError, match="rows"):
        _measures_table(labels, ids[:-1])
    assert _measures_table(replace(labels, measures=None), ids) is None


def test_annotate_keeps_measures_and_scope_sizes(tiny_esm2: Path, oas_fasta: Path, tmp_path: Path) -> None:
    """End to end on a tiny store: a scoped concept's scope size reaches the catalog, the measures a table."""
    import workbench
    from workbench._pipeline import AnnotateConfig
    from workbench.sae import TrainConfig, train_sae

    store = workbench.extract(str(tiny_esm2), oas_fasta, layers=[1], out=tmp_path / "s", progress=False)
    obs = store.obs(["sequence_id", "position", "residue"])
    spans = pd.DataFrame({"sequence_id": obs["sequence_id"], "start": obs["position"], "end": obs["position"],
                          "concept": "aa=" + obs["residue"]})
    early = (obs["position"] <= 60).to_numpy()
    late_gs = ~early & spans["concept"].isin(["aa=G", "aa=S"]).to_numpy()  # G and S only looked for in residues 1-60
    labels = labels_from_spans(obs, spans[~late_gs]).select(min_tokens=50)
    labels = scope_labels(labels, tokens=early, name="early", token_concepts=["aa=G", "aa=S"])
    ids = store.sequences["sequence_id"].astype(str).tolist()
    lengths = np.bincount(store.token_sequence(), minlength=len(ids)).astype(float)
    labels.measures = pd.DataFrame({"length": lengths})
    train = TrainConfig(n_tokens=256 * 40, batch_size=256, lr=3e-3, warmup_steps=5, checkpoint_every=0,
                        loss_recovered_sequences=0)
    train_sae(store, out=tmp_path / "sae", layer=1, width=32, k=4, train=train, progress=False)
    config = AnnotateConfig(n_permutations=2, n_causal=0, probe_cv=3, probe_representations=("sae",),
                            rediscovery_groups=(), position_group=None, profile_groups=("aa",))
    catalog = workbench.annotate(store, tmp_path / "sae", labels, layer=1, out=tmp_path / "cat", config=config,
                                 progress=False)
    measures = catalog.table("sequence_measures")
    assert list(measures.columns) == ["sequence_id", "length"] and measures["sequence_id"].tolist() == ids
    assert measures["length"].tolist() == lengths.tolist()
    best = catalog.table("best_sae").set_index("concept")
    assert best.loc["aa=G", "n_scope"] == int(early.sum()) and best.loc["aa=A", "n_scope"] == store.n_tokens
    assoc = catalog.table("association")
    g = assoc[assoc["concept"] == "aa=G"]
    assert len(g) and (g["n_active"] <= early.sum()).all()
