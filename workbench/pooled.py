"""Association of pooled features with unit-level labels (an image's pathology, a sequence's assay class), with
confound control.

Token-level association (:mod:`workbench.associate`) asks where inside a sequence or image a feature fires. Many
labels belong to the whole unit instead: an X-ray is labelled pneumonia, not a pixel. Here each feature is pooled
per unit (mean or max over the unit's tokens) and compared with a binary unit label:

* ``auroc``: area under the ROC curve of the pooled activation for the label (0.5 = no signal, < 0.5 = the feature
  is higher in units without the label), with a two-sided Mann-Whitney U test (normal approximation with tie
  correction) as ``p_value`` and Benjamini-Hochberg ``q_value`` over every feature x label pair;
* ``partial_r``, ``p_adjusted``, ``q_adjusted``: the same question after removing what measured covariates
  (brightness, contrast, position...) explain: the pooled activation and the label are both residualised on the
  covariates by least squares (Frisch-Waugh-Lovell), and the correlation of the residuals is tested with a t test
  on ``n - k - 2`` degrees of freedom, ``k`` the number of covariates. A feature that only tracks brightness loses
  its signal here; ``auroc_adjusted`` is the AUROC of the residualised activation, for reading;
* ``top_precision``, ``enrichment``, ``p_enrichment``, ``q_enrichment``: of the ``top_fraction`` units where the
  feature is strongest, the share carrying the label, its ratio to the base rate, and the hypergeometric tail
  probability of at least that many.

The same function applied to neurons and to a random-weight control gives the baselines the numbers need.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from workbench.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["pooled_association", "PooledAssociation", "auroc", "residualize"]

COLUMNS = [
    "feature", "concept", "auroc", "p_value", "q_value", "partial_r", "auroc_adjusted", "p_adjusted", "q_adjusted",
    "top_precision", "enrichment", "p_enrichment", "q_enrichment", "mean_with", "mean_without", "n_with", "n_units",
]


class PooledAssociation(NamedTuple):
    """Output of :func:`pooled_association`."""

    pairs: pd.DataFrame
    """One row per feature x concept (columns in :data:`COLUMNS`)."""
    best: pd.DataFrame
    """Per concept: the feature with the smallest ``p_adjusted`` (ties: largest ``|auroc - 0.5|``) and the counts of
    features significant at ``alpha`` before and after confound control (``n_significant``,
    ``n_significant_adjusted``, ``n_strong_adjusted``)."""
    params: dict[str, Any]
    """The options used (stored with the results)."""


def auroc(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Column-wise AUROC of scores ``x`` (``n x f``) for the binary labels ``y`` (ties count one half)."""
    from scipy.stats import rankdata

    y = np.asarray(y, dtype=bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return np.full(x.shape[1], np.nan)
    ranks = rankdata(x, axis=0)
    return (ranks[y].sum(0) - n1 * (n1 + 1) / 2) / (n1 * n0)


def residualize(x: np.ndarray, covariates: np.ndarray) -> np.ndarray:
    """``x`` minus its least-squares fit on the covariates plus an intercept (column-wise)."""
    c = np.column_stack([np.ones(len(covariates)), covariates]) if covariates.size else np.ones((len(x), 1))
    coef, *_ = np.linalg.lstsq(c, x, rcond=None)
    return x - c @ coef


def _bh(p: np.ndarray) -> np.ndarray:
    from scipy.stats import false_discovery_control

    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = false_discovery_control(np.clip(p[ok], 0.0, 1.0))
    return out


def pooled_association(
    values: np.ndarray,
    labels: pd.DataFrame,
    *,
    feature_names: Sequence[str],
    covariates: pd.DataFrame | None = None,
    top_fraction: float = 0.1,
    alpha: float = 0.05,
    strong: float = 0.3,
    units: np.ndarray | None = None,
) -> PooledAssociation:
    """Test every pooled feature against every binary unit label, before and after confound control.

    Parameters
    ----------
    values
        ``(n_units, n_features)`` pooled activations (dense).
    labels
        One boolean column per concept, one row per unit (missing values: the unit is left out of that concept).
    feature_names
        Names of the ``n_features`` columns.
    covariates
        Numeric confounds, one row per unit (``None``: no adjustment; the adjusted columns then equal a plain
        correlation test).
    top_fraction
        Share of units, by activation, used for the enrichment statistics.
    alpha
        q-value threshold of the significance counts in ``best``.
    strong
        ``n_strong_adjusted`` in ``best`` counts features significant after control whose AUROC is at least this far
        from 0.5 and whose partial correlation has the same sign (large effects, not just small p-values).
    units
        Optional boolean mask of the units to use (for example the images outside the test split).
    """
    import pandas as pd
    from scipy.stats import hypergeom, mannwhitneyu
    from scipy.stats import t as t_dist

    x_all = np.asarray(values, dtype=np.float64)
    if x_all.ndim != 2 or x_all.shape[1] != len(feature_names):
        raise InputError(f"values have shape {x_all.shape}; want (n_units, {len(feature_names)})")
    if len(labels) != x_all.shape[0]:
        raise InputError(f"labels have {len(labels)} rows for {x_all.shape[0]} units")
    if not np.isfinite(x_all).all():
        raise InputError("pooled activations hold NaN or infinite values")
    if not 0 < top_fraction <= 1:
        raise InputError("top_fraction must be in (0, 1]")
    cov_all = np.zeros((len(x_all), 0))
    if covariates is not None:
        if len(covariates) != len(x_all):
            raise InputError(f"covariates have {len(covariates)} rows for {len(x_all)} units")
        cov_all = covariates.to_numpy(dtype=np.float64)
        if not np.isfinite(cov_all).all():
            raise InputError("covariates hold NaN or infinite values")
        sd = cov_all.std(0)
        cov_all = (cov_all - cov_all.mean(0)) / np.where(sd > 0, sd, 1.0)
    base = np.ones(len(x_all), dtype=bool) if units is None else np.asarray(units, dtype=bool)
    frames = []
    for concept in labels.columns:
        col = labels[concept]
        use = base & col.notna().to_numpy()
        y = col[use].astype(bool).to_numpy()
        n, n1 = int(use.sum()), int(y.sum())
        if n1 == 0 or n1 == n:
            continue
        x = x_all[use]
        cov = cov_all[use]
        a = auroc(x, y)
        p = mannwhitneyu(x[y], x[~y], axis=0, method="asymptotic").pvalue
        rx = residualize(x, cov)
        ry = residualize(y.astype(np.float64)[:, None], cov)[:, 0]
        with np.errstate(invalid="ignore", divide="ignore"):
            r = (rx * ry[:, None]).sum(0) / np.sqrt((rx**2).sum(0) * (ry**2).sum())
            dof = n - cov.shape[1] - 2
            tstat = r * np.sqrt(dof / np.clip(1 - r**2, 1e-300, None))
        p_adj = 2 * t_dist.sf(np.abs(tstat), dof)
        p_adj[~np.isfinite(r)] = np.nan
        a_adj = auroc(rx, y)
        n_top = max(1, int(round(top_fraction * n)))
        top = np.argsort(-x, axis=0, kind="stable")[:n_top]
        hits = y[top].sum(0)
        p_enr = hypergeom.sf(hits - 1, n, n1, n_top)
        frames.append(pd.DataFrame({
            "feature": list(feature_names), "concept": concept, "auroc": a, "p_value": p, "partial_r": r,
            "auroc_adjusted": a_adj, "p_adjusted": p_adj, "top_precision": hits / n_top,
            "enrichment": (hits / n_top) / (n1 / n), "p_enrichment": p_enr,
            "mean_with": x[y].mean(0), "mean_without": x[~y].mean(0), "n_with": n1, "n_units": n,
        }))
    if not frames:
        pairs = pd.DataFrame({c: pd.Series(dtype=object if c in ("feature", "concept") else float) for c in COLUMNS})
    else:
        pairs = pd.concat(frames, ignore_index=True)
        pairs["q_value"] = _bh(pairs["p_value"].to_numpy())
        pairs["q_adjusted"] = _bh(pairs["p_adjusted"].to_numpy())
        pairs["q_enrichment"] = _bh(pairs["p_enrichment"].to_numpy())
        pairs = pairs[COLUMNS]
    best_rows = []
    for concept, g in pairs.groupby("concept", sort=False):
        strength = (g["auroc"] - 0.5).abs()
        order = np.lexsort((-strength.to_numpy(), g["p_adjusted"].fillna(1.0).to_numpy()))
        top = g.iloc[order[0]]
        best_rows.append({
            "concept": concept, "best_feature": top["feature"], "auroc": float(top["auroc"]),
            "auroc_adjusted": float(top["auroc_adjusted"]), "q_adjusted": float(top["q_adjusted"]),
            "best_auroc_feature": g.loc[strength.idxmax(), "feature"], "best_auroc": float(g.loc[strength.idxmax(), "auroc"]),
            "n_significant": int((g["q_value"] < alpha).sum()), "n_significant_adjusted": int((g["q_adjusted"] < alpha).sum()),
            "n_strong_adjusted": int(((g["q_adjusted"] < alpha) & (strength >= strong)
                                      & (np.sign(g["partial_r"]) == np.sign(g["auroc"] - 0.5))).sum()),
            "n_features": len(g),
        })
    best = pd.DataFrame(best_rows, columns=["concept", "best_feature", "auroc", "auroc_adjusted", "q_adjusted", "best_auroc_feature",
                                            "best_auroc", "n_significant", "n_significant_adjusted", "n_strong_adjusted",
                                            "n_features"])
    params = {"top_fraction": top_fraction, "alpha": alpha, "strong": strong, "covariates": list(covariates.columns) if covariates is not None else [],
              "n_units": int(base.sum())}
    return PooledAssociation(pairs, best, params)
