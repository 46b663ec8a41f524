"""Held-out evaluation of the best pooled feature after confound control (workbench.heldout)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

from workbench.errors import InputError
from workbench.heldout import COLUMNS, covariate_matrix, heldout_findings
from workbench.pooled import pooled_association

N_NOISE = 40


def _data(n: int = 600, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    mouse = rng.random(n) < 0.5
    species = np.where(mouse, "mouse", "human").astype(object)
    hidden = rng.normal(size=n)
    # the label depends on the species (confound) and on a hidden cause the signal feature sees
    y = 1.2 * mouse + hidden + 0.5 * rng.normal(size=n) > 0.6
    count = np.clip(np.round(3 + 2 * hidden + 2 * mouse + rng.normal(size=n)), 0, None)
    signal = hidden + 0.3 * rng.normal(size=n)
    confound = mouse + 0.3 * rng.normal(size=n)
    noise = rng.normal(size=(n, N_NOISE))
    sae = np.column_stack([noise[:, :20], signal, confound, noise[:, 20:]])
    names = [f"n{i}" for i in range(20)] + ["signal", "confound"] + [f"n{i}" for i in range(20, N_NOISE)]
    neg = np.column_stack([noise[:, :10], -signal + 0.2 * rng.normal(size=n)])
    # split by "antibody": consecutive pairs of units fall on the same side
    train = np.repeat(rng.random(n // 2) < 0.6, 2)
    return {
        "values": {"sae": sae, "neg": neg, "confound_only": confound[:, None]},
        "names": {"sae": names, "neg": [f"m{i}" for i in range(10)] + ["anti"], "confound_only": ["confound"]},
        "targets": pd.DataFrame({"disease": y, "mutations": count}),
        "cov": pd.DataFrame({"species": species}), "train": train, "y": y, "mouse": mouse, "signal": signal,
        "confound": confound,
    }


def _run(d: dict, **kw):
    kw = {"feature_names": d["names"], "covariates": d["cov"], "train": d["train"], **kw}
    return heldout_findings(d["values"], d["targets"], **kw)


def _row(res, target: str, rep: str) -> pd.Series:
    t = res.table
    return t[(t["target"] == target) & (t["representation"] == rep)].iloc[0]


def test_signal_feature_chosen_and_replicates() -> None:
    d = _data()
    res = _run(d)
    assert list(res.table.columns) == COLUMNS
    assert len(res.table) == 2 * 3
    assert (res.table["status"] == "ok").all()
    row = _row(res, "disease", "sae")
    assert row["kind"] == "binary" and row["best_feature"] == "signal" and row["sign"] == 1
    assert row["train_q"] < 1e-6 and row["n_significant_train"] >= 1
    assert row["test_auroc_adjusted"] > 0.75 and row["test_auroc"] > 0.75
    assert row["test_partial_r"] > 0.3 and row["test_p_adjusted"] < 1e-6 and row["test_q_adjusted"] < 1e-5
    assert np.isnan(row["test_rho"]) and np.isnan(row["test_rho_adjusted"])
    assert row["n_train"] == d["train"].sum() and row["n_test"] == (~d["train"]).sum()
    assert row["n_positive_test"] == d["y"][~d["train"]].sum()
    # the species alone predicts the label somewhat: that is the baseline the feature beats
    assert 0.55 < row["covariates_auroc"] < row["test_auroc_adjusted"]
    assert res.params["covariate_terms"] == ["species=mouse"] and res.params["covariates"] == ["species"]
    assert res.params["n_units"] == 600 and res.params["n_train"] + res.params["n_test"] == 600


def test_confound_only_feature_loses_its_signal() -> None:
    d = _data()
    x, y, tr = d["confound"], d["y"], d["train"]
    assert roc_auc_score(y[tr], x[tr]) > 0.65  # raw association on train
    row = _row(_run(d), "disease", "confound_only")
    assert row["status"] == "ok" and row["best_feature"] == "confound"
    assert abs(row["test_auroc"] - 0.5) > 0.15
    assert abs(row["test_auroc_adjusted"] - 0.5) < 0.1
    assert row["train_q"] > 0.05 and row["n_significant_train"] == 0
    # without covariates the same feature looks like a finding
    plain = _row(_run(d, covariates=None), "disease", "confound_only")
    assert plain["train_q"] < 1e-6 and plain["test_auroc_adjusted"] > 0.65
    assert np.isnan(plain["covariates_r2"]) and np.isnan(plain["covariates_auroc"])


def test_negative_feature_gets_sign_minus_one() -> None:
    row = _row(_run(_data()), "disease", "neg")
    assert row["best_feature"] == "anti" and row["sign"] == -1 and row["train_partial_r"] < 0
    assert row["test_auroc"] > 0.75 and row["test_auroc_adjusted"] > 0.75 and row["test_partial_r"] > 0


def test_numeric_target() -> None:
    d = _data()
    row = _row(_run(d), "mutations", "sae")
    assert row["kind"] == "numeric" and row["best_feature"] == "signal" and row["sign"] == 1
    assert row["test_rho"] > 0.6 and row["test_rho_adjusted"] > 0.6
    assert abs(row["test_rho_adjusted"] - row["test_partial_r"]) < 0.1  # Spearman beside Pearson of the residuals
    assert row["test_p_adjusted"] < 1e-6
    assert np.isnan(row["test_auroc"]) and np.isnan(row["n_positive_test"]) and np.isnan(row["covariates_auroc"])
    assert 0.05 < row["covariates_r2"] < 0.9
    neg = _row(_run(d), "mutations", "neg")
    assert neg["sign"] == -1 and neg["test_rho"] > 0.6


def test_matches_a_manual_computation_with_train_coefficients() -> None:
    d = _data()
    # shift the test units' feature by species so a fit on test would differ from the fit on train
    d["values"]["sae"][~d["train"], 20] += 0.8 * d["mouse"][~d["train"]]
    row = _row(_run(d), "disease", "sae")
    assert row["best_feature"] == "signal"
    tr, te = d["train"], ~d["train"]
    x, y = rankdata(d["values"]["sae"][:, 20]), d["y"].astype(float)  # features enter as ranks over all units
    c = np.column_stack([np.ones(len(x)), d["mouse"]])
    bx, *_ = np.linalg.lstsq(c[tr], x[tr], rcond=None)
    by, *_ = np.linalg.lstsq(c[tr], y[tr], rcond=None)
    rx, ry = x - c @ bx, y - c @ by
    assert row["train_partial_r"] == pytest.approx(np.corrcoef(rx[tr], ry[tr])[0, 1], abs=1e-10)
    assert row["test_auroc"] == pytest.approx(roc_auc_score(y[te], x[te]), abs=1e-12)
    assert row["test_auroc_adjusted"] == pytest.approx(roc_auc_score(y[te], rx[te]), abs=1e-12)
    assert row["test_partial_r"] == pytest.approx(np.corrcoef(rx[te], ry[te])[0, 1], abs=1e-10)
    assert row["covariates_auroc"] == pytest.approx(roc_auc_score(y[te], (c @ by)[te]), abs=1e-12)
    r2 = 1 - ((ry[te]) ** 2).sum() / ((y[te] - y[te].mean()) ** 2).sum()
    assert row["covariates_r2"] == pytest.approx(r2, abs=1e-10)
    # a covariate fit on the test units would give another answer
    bt, *_ = np.linalg.lstsq(c[te], x[te], rcond=None)
    assert abs(roc_auc_score(y[te], x[te] - c[te] @ bt) - row["test_auroc_adjusted"]) > 1e-3


def test_train_statistics_match_pooled_association() -> None:
    d = _data()
    tr = d["train"]
    cov, terms = covariate_matrix(d["cov"])
    ranks = rankdata(d["values"]["sae"], axis=0)  # heldout_findings works on ranks over all units
    ref = pooled_association(ranks[tr], d["targets"][["disease"]][tr], feature_names=d["names"]["sae"],
                             covariates=pd.DataFrame(cov[tr], columns=terms)).pairs
    row = _row(_run(d), "disease", "sae")
    assert row["n_significant_train"] == (ref["q_adjusted"] < 0.05).sum()
    best = ref.loc[ref["p_adjusted"].idxmin()]
    assert best["feature"] == row["best_feature"]
    assert row["train_partial_r"] == pytest.approx(best["partial_r"], abs=1e-10)
    assert row["train_q"] == pytest.approx(best["q_adjusted"], rel=1e-8)


def test_a_few_extreme_units_do_not_make_a_finding() -> None:
    """A sparse feature that is zero almost everywhere and huge on a few positive units (the shape of many SAE
    features pooled over chains) has a large Pearson correlation but carries almost no ranking information: it is
    not chosen over the real signal, and alone it is not significant held out."""
    d = _data()
    y = d["y"]
    spike = np.zeros(len(y))
    pos_train = np.flatnonzero(y & d["train"])[:2]
    pos_test = np.flatnonzero(y & ~d["train"])[:1]
    spike[np.r_[pos_train, pos_test]] = 1e3
    d["values"]["sae"] = np.column_stack([d["values"]["sae"], spike])
    d["names"]["sae"] = d["names"]["sae"] + ["spike"]
    d["values"]["spike_only"] = spike[:, None]
    d["names"]["spike_only"] = ["spike"]
    res = _run(d)
    assert _row(res, "disease", "sae")["best_feature"] == "signal"
    alone = _row(res, "disease", "spike_only")
    assert abs(alone["test_auroc"] - 0.5) < 0.05 and alone["test_p_adjusted"] > 0.01
    pearson = np.corrcoef(spike[~d["train"]], y[~d["train"]])[0, 1]
    assert pearson > 0.05  # what a Pearson test on raw values would have seen


def test_missing_values_in_targets_and_categorical_covariates() -> None:
    d = _data()
    targets = d["targets"].astype({"disease": object})
    targets.loc[:99, "disease"] = None
    d["targets"] = targets
    species = d["cov"]["species"].copy()
    species[::7] = None
    d["cov"] = pd.DataFrame({"species": species})
    res = _run(d)
    assert res.params["covariate_terms"] == ["species=mouse", "species=(missing)"]
    row = _row(res, "disease", "sae")
    assert row["status"] == "ok" and row["kind"] == "binary" and row["best_feature"] == "signal"
    assert row["n_train"] + row["n_test"] == 500
    assert row["n_train"] == (d["train"] & (np.arange(600) >= 100)).sum()
    assert row["test_auroc_adjusted"] > 0.75
    assert _row(res, "mutations", "sae")["n_train"] == d["train"].sum()  # another train set in the same run
    # a level seen on test units only leaves the train fit rank-deficient; its coefficient is zero, nothing breaks
    vfam = np.where(~d["train"] & (np.arange(600) % 5 == 0), "IGHV9", "IGHV1")
    res = _run(d, covariates=d["cov"].assign(vfam=vfam))
    assert "vfam=IGHV9" in res.params["covariate_terms"]
    row = _row(res, "disease", "sae")
    assert row["status"] == "ok" and row["best_feature"] == "signal"
    used = ["train_partial_r", "test_auroc_adjusted", "test_p_adjusted", "covariates_r2", "covariates_auroc"]
    assert np.isfinite(row[used].astype(float)).all() and row["test_auroc_adjusted"] > 0.75


def test_covariate_matrix() -> None:
    cov = pd.DataFrame({
        "species": ["human", "mouse", None, "human"], "age": [1.0, 2.0, 3.0, 4.0], "const": ["a"] * 4,
        "flag": [True, False, True, True],
        "vfam": pd.Categorical(["V1", "V3", "V3", "V1"], categories=["V3", "V1", "V9"]),
    })
    m, names = covariate_matrix(cov)
    assert names == ["species=mouse", "species=(missing)", "age", "flag=True", "vfam=V1"]
    assert m.shape == (4, 5)
    np.testing.assert_array_equal(m[:, 0], [0, 1, 0, 0])
    np.testing.assert_array_equal(m[:, 1], [0, 0, 1, 0])
    assert m[:, 2].mean() == pytest.approx(0) and m[:, 2].std() == pytest.approx(1)
    np.testing.assert_array_equal(m[:, 4], [1, 0, 0, 1])
    with pytest.raises(InputError, match="'age'.*bin it or fill it"):
        covariate_matrix(cov.assign(age=[1.0, np.nan, 2.0, 3.0]))
    with pytest.raises(InputError, match="'dose'"):
        _run(_data(), covariates=pd.DataFrame({"dose": [np.nan] + [1.0] * 599}))


def test_not_testable_targets() -> None:
    d = _data()
    n = 600
    extra = pd.DataFrame({
        "is_mouse": d["mouse"],  # the covariate determines it
        "mouse_score": 2.0 * d["mouse"] + 1,  # numeric, determined too
        "all_true": np.ones(n, bool),
        "test_one_class": np.where(d["train"], d["y"], False),
        "rare": np.where(np.arange(n) < 15, d["y"], np.nan),
        "constant": np.full(n, 3.0),
    })
    d["targets"] = pd.concat([d["targets"], extra], axis=1)
    t = _run(d).table.set_index(["target", "representation"])
    for name in ("is_mouse", "mouse_score"):
        assert t.loc[(name, "sae"), "status"] == "not testable: the covariates determine the target"
    assert t.loc[("all_true", "sae"), "status"] == "not testable: one class on train"
    assert t.loc[("test_one_class", "sae"), "status"] == "not testable: one class on test"
    assert t.loc[("rare", "sae"), "status"].startswith("not testable: fewer than 10 ")
    assert t.loc[("constant", "sae"), "status"] == "not testable: the target is constant on train"
    bad = t[t["status"] != "ok"]
    assert len(bad) == 6 * 3 and (bad["best_feature"] == "").all()
    assert bad[COLUMNS[8:]].isna().all().all()
    ok = t[t["status"] == "ok"]
    assert len(ok) == 2 * 3 and ok["test_q_adjusted"].notna().all()
    # the BH correction covers the ok rows only
    assert (ok["test_q_adjusted"] >= ok["test_p_adjusted"] - 1e-15).all()


def test_features_without_variation_on_train() -> None:
    d = _data()
    flat = np.zeros((600, 3))
    flat[~d["train"], 0] = 1.0  # varies on test only
    d["values"] = {"flat": flat}
    d["names"] = {"flat": ["a", "b", "c"]}
    row = _row(_run(d), "disease", "flat")
    assert row["status"] == "not testable: no feature varies on train beyond the covariates"
    assert row["best_feature"] == "" and np.isnan(row["test_auroc"])
    # sparse features silent on train never win over a real one
    d = _data()
    d["values"]["sae"][d["train"], :20] = 0.0
    assert _row(_run(d), "disease", "sae")["best_feature"] == "signal"


def test_bad_input() -> None:
    d = _data()
    with pytest.raises(InputError, match="599 units"):
        heldout_findings({**d["values"], "sae": d["values"]["sae"][:599]}, d["targets"], feature_names=d["names"],
                         covariates=d["cov"], train=d["train"])
    with pytest.raises(InputError, match="covariates have 10 rows"):
        _run(d, covariates=d["cov"].iloc[:10])
    with pytest.raises(InputError, match="train must be a boolean mask of 600"):
        _run(d, train=d["train"][:-1])
    with pytest.raises(InputError, match="at least one training"):
        _run(d, train=np.ones(600, bool))
    with pytest.raises(InputError, match="names"):
        _run(d, feature_names={**d["names"], "neg": ["x"]})
    with pytest.raises(InputError, match="names"):
        _run(d, feature_names={"sae": d["names"]["sae"]})
    nan = d["values"]["neg"].copy()
    nan[3, 2] = np.inf
    with pytest.raises(InputError, match="NaN or infinite"):
        heldout_findings({"neg": nan}, d["targets"], feature_names=d["names"], covariates=d["cov"], train=d["train"])
    with pytest.raises(InputError, match="NaN or infinite"):  # checked even when no target is testable
        heldout_findings({"neg": nan}, d["targets"][[]], feature_names=d["names"], train=d["train"])
    with pytest.raises(InputError, match="targets have 10 rows"):
        heldout_findings(d["values"], d["targets"].iloc[:10], feature_names=d["names"], train=d["train"][:10])
    with pytest.raises(InputError, match="neither binary nor numeric"):
        heldout_findings(d["values"], pd.DataFrame({"t": ["a"] * 600}), feature_names=d["names"], train=d["train"])
