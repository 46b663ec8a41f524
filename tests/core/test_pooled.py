"""Unit-level association with confound control (workbench.pooled)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from workbench.errors import InputError
from workbench.pooled import auroc, pooled_association, residualize


def _data(n: int = 600, seed: int = 0) -> tuple[np.ndarray, pd.Series, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    brightness = rng.normal(size=n)
    # the label depends on brightness and on a hidden cause only feature 0 sees
    hidden = rng.normal(size=n)
    y = (0.8 * brightness + hidden + 0.3 * rng.normal(size=n)) > 0
    x = np.column_stack([
        hidden + 0.3 * rng.normal(size=n),             # f0: the real signal beyond brightness
        brightness + 0.1 * rng.normal(size=n),         # f1: tracks brightness only
        rng.normal(size=n),                            # f2: noise
        np.where(rng.random(n) < 0.3, 0.0, rng.exponential(size=n)),  # f3: sparse noise with ties at zero
    ])
    return x, pd.Series(y, name="pathology"), pd.DataFrame({"brightness": brightness})


def test_auroc_matches_sklearn_with_ties() -> None:
    x, y, _ = _data()
    ours = auroc(x, y.to_numpy())
    for j in range(x.shape[1]):
        assert ours[j] == pytest.approx(roc_auc_score(y, x[:, j]), abs=1e-12)
    assert np.isnan(auroc(x, np.ones(len(x), bool))).all()


def test_residualize_removes_linear_covariates() -> None:
    rng = np.random.default_rng(1)
    c = rng.normal(size=(200, 2))
    x = 3 * c[:, :1] - c[:, 1:] + 5 + rng.normal(size=(200, 1))
    r = residualize(x, c)
    assert abs(r.mean()) < 1e-10
    assert np.abs(c.T @ r).max() < 1e-8


def test_confound_only_feature_loses_significance() -> None:
    x, y, cov = _data()
    res = pooled_association(x, y.to_frame(), feature_names=["f0", "f1", "f2", "f3"], covariates=cov)
    p = res.pairs.set_index("feature")
    # before control, both the real feature and the brightness tracker separate the label
    assert p.loc["f0", "q_value"] < 1e-6 and p.loc["f1", "q_value"] < 1e-6
    # after control only the real one does
    assert p.loc["f0", "q_adjusted"] < 1e-6
    assert p.loc["f1", "q_adjusted"] > 0.05
    assert p.loc["f2", "q_adjusted"] > 0.05 and p.loc["f3", "q_adjusted"] > 0.05
    assert abs(p.loc["f1", "auroc_adjusted"] - 0.5) < abs(p.loc["f1", "auroc"] - 0.5)
    best = res.best.iloc[0]
    assert best["best_feature"] == "f0" and best["n_significant"] >= 2 and best["n_significant_adjusted"] == 1
    # enrichment: the top decile of f0 is mostly positive
    assert p.loc["f0", "enrichment"] > 1.3 and p.loc["f0", "q_enrichment"] < 0.01
    assert ((p["q_value"] >= p["p_value"] - 1e-12) & (p["q_value"] <= 1)).all()
    # without covariates the adjusted test is a plain correlation test and keeps the brightness tracker
    plain = pooled_association(x, y.to_frame(), feature_names=["f0", "f1", "f2", "f3"]).pairs.set_index("feature")
    assert plain.loc["f1", "q_adjusted"] < 1e-6


def test_units_mask_missing_labels_and_bad_input() -> None:
    x, y, cov = _data(200)
    labels = pd.DataFrame({"a": y.astype("boolean"), "const": pd.Series([True] * 200, dtype="boolean")})
    labels.loc[:9, "a"] = pd.NA
    res = pooled_association(x, labels, feature_names=list("abcd"), covariates=cov, units=np.arange(200) >= 50)
    assert set(res.pairs["concept"]) == {"a"}  # a constant label is skipped
    assert (res.pairs["n_units"] == 150).all()
    with pytest.raises(InputError, match="NaN"):
        bad = x.copy()
        bad[0, 0] = np.nan
        pooled_association(bad, y.to_frame(), feature_names=list("abcd"))
    with pytest.raises(InputError, match="rows"):
        pooled_association(x, y.to_frame().iloc[:10], feature_names=list("abcd"))
    with pytest.raises(InputError, match="shape"):
        pooled_association(x, y.to_frame(), feature_names=["a"])
