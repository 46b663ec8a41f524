"""Scored feature descriptions: a simulator built from validation tokens, scored on the test tokens only."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from workbench.associate import FeatureMatrix, associate, sequence_split
from workbench.concepts import concat_labels, labels_from_spans, labels_from_token_values
from workbench.description_scores import description_summary, score_descriptions
from workbench.errors import InputError
from core_helpers import alternating_ids  # noqa: E402  (tests/core, on the path under pytest)

N_SEQ, LENGTH = 120, 40
REGIONS = (("FR1", 1, 10), ("CDR1", 11, 15), ("FR2", 16, 25), ("CDR3", 26, 33), ("FR4", 34, 40))
AMINO = list("ACDEFGHIKLMNPQRSTVWY")




def _matrix(dense: np.ndarray, prefix: str) -> FeatureMatrix:
    dense = np.maximum(dense, 0).astype(np.float32)
    scale = dense.max(0)
    dense = dense / np.where(scale > 0, scale, 1)
    return FeatureMatrix(sp.csr_matrix(dense), scale, [f"{prefix}{i:05d}" for i in range(dense.shape[1])])


@lru_cache(maxsize=None)
def case():  # type: ignore[no-untyped-def]
    """Sequences of 40 residues in five regions, IMGT position = residue number, random residues, a span concept
    ``loop=CDR3`` on the CDR3. SAE features: f0 fires exactly on CDR3 (planted), f1 at random, f2 on CDR1 in
    validation sequences but on FR4 in test sequences, f3 never, f4 on FR2 in validation sequences only, f5 on CDR3
    with a strength that grows along it. Neurons: u0 on CDR3 plus noise, u1 Gaussian noise (positive half)."""
    rng = np.random.default_rng(0)
    ids = alternating_ids(N_SEQ)
    is_val = sequence_split(ids)
    obs = pd.DataFrame({"sequence_id": np.repeat(ids, LENGTH), "position": np.tile(np.arange(1, LENGTH + 1), N_SEQ)})
    pos = obs["position"].to_numpy()
    region = np.empty(len(obs), dtype=object)
    for name, a, b in REGIONS:
        region[(pos >= a) & (pos <= b)] = name
    obs["residue"] = rng.choice(AMINO, len(obs))
    spans = pd.DataFrame({"sequence_id": ids, "start": 26, "end": 33, "concept": "loop=CDR3"})
    labels = concat_labels([labels_from_token_values(obs, pd.DataFrame({"region": region, "imgt": pos.astype(str)})),
                            labels_from_spans(obs, spans)])
    token_seq = np.repeat(np.arange(N_SEQ), LENGTH)
    val = is_val[token_seq]
    n = len(obs)
    cdr3 = region == "CDR3"
    x = np.zeros((n, 6))
    x[cdr3, 0] = 1.0
    x[:, 1] = np.where(rng.random(n) < 0.1, rng.uniform(0.1, 1, n), 0)
    x[(region == "CDR1") & val, 2] = 1.0
    x[(region == "FR4") & ~val, 2] = 1.0
    x[(region == "FR2") & val, 4] = 1.0
    x[cdr3, 5] = (pos[cdr3] - 25) / 8 + rng.uniform(0, 0.05, cdr3.sum())
    neurons = np.c_[np.where(cdr3, 1.0, 0.0) + rng.normal(0, 0.1, n), rng.normal(0, 1, n)]
    return _matrix(x, "f"), _matrix(neurons, "u"), labels, obs, ids, token_seq


@lru_cache(maxsize=None)
def assoc(kind: str = "sae"):  # type: ignore[no-untyped-def]
    sae, neurons, labels, _, ids, token_seq = case()
    return associate(sae if kind == "sae" else neurons, labels, ids, token_seq, n_permutations=0)


def score(features: FeatureMatrix | None = None, association=None, obs=None, **options):  # type: ignore[no-untyped-def]
    sae, _, labels, obs0, ids, token_seq = case()
    return score_descriptions(sae if features is None else features, labels,
                              assoc() if association is None else association, obs0 if obs is None else obs,
                              token_sequence=token_seq, sequence_ids=ids, **options)


def test_planted_feature_is_predicted_and_random_one_is_not() -> None:
    res = score(n_null=5)
    t = res.table
    assert list(t.index) == [f"f{i:05d}" for i in range(6)]
    assert t.at["f00000", "description_corr"] > 0.8
    assert t.at["f00000", "description_spearman"] > 0.8
    assert t.at["f00000", "description_detection"] > 0.95
    assert t.at["f00000", "description_f1"] > 0.95
    assert abs(t.at["f00001", "description_corr"]) < 0.1
    assert abs(t.at["f00001", "description_detection"] - 0.5) < 0.1
    # a graded feature: the IMGT profile names the peak window, so the ranks inside CDR3 are partly predicted
    assert t.at["f00005", "description_corr"] > 0.8
    # the shuffled null: the planted feature simulated from other features' descriptions
    assert t.at["f00000", "description_null_corr"] < 0.3
    assert res.summary["n_scored"] == 4  # f3 never fires, f4 never fires on test tokens
    assert res.summary["corr_above_0_5"] == pytest.approx(2 / 4)
    assert res.summary["null_corr_above_0_5"] < 0.5
    assert res.summary["parts"] == ["region", "imgt", "residue"]


def test_scores_use_test_tokens_only() -> None:
    """f2 fires on CDR1 in validation sequences, on FR4 in test sequences: its description (CDR1) fails the test."""
    t = score().table
    assert t.at["f00002", "description_corr"] < 0
    assert t.at["f00002", "description_detection"] <= 0.5
    assert t.at["f00002", "description_f1"] == 0
    # f4 is described (it fires on validation tokens) but has nothing to score on test tokens
    assert t.at["f00004", "description_concept"] == "region=FR2"
    assert t.loc["f00004", ["description_corr", "description_detection", "description_spearman"]].isna().all()


def test_dead_feature_has_no_scores() -> None:
    t = score().table
    assert t.loc["f00003", ["description_detection", "description_f1", "description_corr", "description_spearman",
                            "description_null_corr"]].isna().all()
    assert t.at["f00003", "description_concept"] is None


def test_scores_match_a_dense_recomputation() -> None:
    """The per-cell sums equal Pearson / Spearman / detection computed token by token on the materialised prediction."""
    from scipy.stats import pearsonr, spearmanr

    from workbench import description_scores as ds

    sae, _, labels, obs, ids, token_seq = case()
    res = score(profile_groups=("region",))
    is_val = sequence_split(ids)[token_seq]
    desc = ds._describe(sae, labels, assoc(), obs, np.flatnonzero(is_val), profile_groups=("region",),
                        residue_column="residue", alpha=0.05, min_f1=0.2)
    pred, concept = ds._predictions(desc, np.arange(6))
    x = sae.values.toarray()
    checked = 0
    for j in range(6):
        member = np.zeros(len(x), dtype=np.int64)
        if concept[j] < len(desc.used):
            member = labels.tokens[:, int(desc.used[concept[j]])].toarray().ravel().astype(np.int64)
        p = pred[j, 2 * desc.combo + member]
        real = x[:, j]
        row = res.table.iloc[j]
        if real[~is_val].max() == 0 or real[is_val].max() == 0:
            continue
        assert row["description_corr"] == pytest.approx(pearsonr(p[~is_val], real[~is_val])[0], abs=1e-9)
        assert row["description_spearman"] == pytest.approx(spearmanr(p[~is_val], real[~is_val])[0], abs=1e-9)
        fires, called = real[~is_val] > 0, p[~is_val] >= row["description_threshold"]
        ba = 0.5 * (called[fires].mean() + (~called[~fires]).mean())
        assert row["description_detection"] == pytest.approx(ba, abs=1e-12)
        called = p[~is_val] >= row["description_f1_threshold"]
        assert row["description_f1"] == pytest.approx(2 * (called & fires).sum() / (called.sum() + fires.sum()))
        # the thresholds are the best of all levels on validation tokens
        fv = real[is_val] > 0
        levels = np.unique(p[is_val])

        def ba_at(v: float) -> float:
            return 0.5 * ((p[is_val] >= v)[fv].mean() + (p[is_val] < v)[~fv].mean())

        def f1_at(v: float) -> float:
            return 2 * ((p[is_val] >= v) & fv).sum() / ((p[is_val] >= v).sum() + fv.sum())

        assert ba_at(row["description_threshold"]) == pytest.approx(max(max(map(ba_at, levels)), 0.5), abs=1e-12)
        assert f1_at(row["description_f1_threshold"]) == pytest.approx(max(map(f1_at, levels)), abs=1e-12)
        checked += 1
    assert checked == 4


def test_concept_alone_describes_the_planted_feature() -> None:
    """Without profiles the description is the top concept (here loop=CDR3: the region concept would be profiled)."""
    t = score(profile_groups=(), residue_column=None).table
    assert t.at["f00000", "description_concept"] in ("loop=CDR3", "region=CDR3")
    assert t.at["f00000", "description_corr"] > 0.95
    # a feature whose description states nothing predicts a constant: no correlation
    assert np.isnan(t.at["f00001", "description_corr"])


def test_a_concept_the_profile_names_is_not_counted_twice() -> None:
    """loop=CDR3 (f0's top concept) covers exactly the tokens of region=CDR3, which the region profile names."""
    from workbench import description_scores as ds

    sae, _, labels, obs, ids, token_seq = case()
    val = np.flatnonzero(sequence_split(ids)[token_seq])
    options = {"residue_column": None, "alpha": 0.05, "min_f1": 0.2}
    folded = ds._describe(sae, labels, assoc(), obs, val, profile_groups=("region",), **options)
    alone = ds._describe(sae, labels, assoc(), obs, val, profile_groups=("imgt",), **options)
    assert folded.concept_name[0] == alone.concept_name[0] == "loop=CDR3"
    assert folded.concept[0] == len(folded.used)  # carried by the region profile: no concept part
    # IMGT positions name the CDR3 only as a window (no single position holds its tokens): the concept stays a part
    assert alone.concept[0] < len(alone.used)
    assert alone.concept_lift[0, 0] == 0 and alone.concept_lift[0, 1] > 1


def test_works_without_the_residue_column() -> None:
    _, _, _, obs, _, _ = case()
    res = score(obs=obs.drop(columns="residue"))
    assert res.summary["parts"] == ["region", "imgt"]
    assert res.table.at["f00000", "description_corr"] > 0.8
    none = score_descriptions(case()[0], case()[2], assoc(), None, token_sequence=case()[5], sequence_ids=case()[4],
                              profile_groups=("imgt", "no_such_group"))
    assert none.summary["parts"] == ["imgt"]


def test_neurons_are_scored_the_same_way() -> None:
    _, neurons, *_ = case()
    res = score(neurons, assoc("neurons"), n_null=0)
    t = res.table
    assert list(t.index) == ["u00000", "u00001"]
    assert t.at["u00000", "description_corr"] > 0.8
    assert abs(t.at["u00001", "description_corr"]) < 0.1
    assert t["description_null_corr"].isna().all()
    summary = description_summary(score(n_null=3), res)
    assert set(summary["description_corr_above_0_5"]) == {"sae", "neurons", "shuffled"}
    assert summary["description_corr_above_0_5"]["neurons"] == pytest.approx(0.5)
    with_random = description_summary(score(n_null=3), res, random=res)  # a control scored like the neurons
    assert set(with_random["description_corr_above_0_5"]) == {"sae", "neurons", "random", "shuffled"}
    assert with_random["description_scored"]["random"] == res.summary["n_scored"]
    assert summary["description_corr_ratio_sae_neurons"] == pytest.approx(
        summary["description_corr_above_0_5"]["sae"] / 0.5, abs=1e-3)


def test_a_split_without_test_sequences_scores_nothing() -> None:
    sae, _, labels, obs, ids, token_seq = case()
    val_ids = [s for s, v in zip(ids, sequence_split(ids)) if v]  # validation sequences only
    keep = np.flatnonzero(sequence_split(ids)[token_seq])
    sub = FeatureMatrix(sae.values[keep], sae.max_activation, sae.names)
    obs = obs.iloc[keep].reset_index(drop=True)
    lab = labels_from_token_values(obs, pd.DataFrame({"region": labels.group_values("region")[keep]}))
    seq = np.unique(token_seq[keep], return_inverse=True)[1]
    a = associate(sub, lab, val_ids, seq, n_permutations=0)
    res = score_descriptions(sub, lab, a, obs, token_sequence=seq, sequence_ids=val_ids)
    assert res.summary["n_scored"] == 0
    assert res.table[["description_corr", "description_detection"]].isna().all().all()


def test_mismatched_inputs_are_refused() -> None:
    sae, _, labels, obs, ids, token_seq = case()
    short = FeatureMatrix(sae.values[:-7], sae.max_activation, sae.names)
    with pytest.raises(InputError, match=f"{short.values.shape[0]}.*{labels.n_tokens}"):
        score(short)
    with pytest.raises(InputError, match="split_seed"):
        score(split_seed=1)
    with pytest.raises(InputError, match="obs has"):
        score(obs=obs.iloc[:10])
    with pytest.raises(InputError, match="n_null"):
        score(n_null=-1)


@pytest.mark.slow
def test_annotate_stores_description_scores(tiny_catalog: Path) -> None:
    from workbench.catalog import Catalog

    cat = Catalog.open(tiny_catalog)
    var = cat.features
    for col in ("description_detection", "description_f1", "description_corr", "description_spearman"):
        assert col in var.columns, col
    live = var["density"] > 0
    assert var.loc[live, "description_corr"].notna().any()
    assert var.loc[~live, "description_corr"].isna().all()
    fractions = cat.summary["description_corr_above_0_5"]
    assert set(fractions) == {"sae", "neurons", "shuffled"}
    scored = var["description_detection"].notna()  # described and firing on test tokens
    assert fractions["sae"] == pytest.approx(float((var["description_corr"] > 0.5).sum() / scored.sum()), abs=1e-3)
    neurons = cat.table("description_scores_neurons")
    assert len(neurons) == cat.provenance.get("sae_config", {}).get("d_in", len(neurons))
