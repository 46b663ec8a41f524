"""Held-out check of the best single pooled feature per unit-level target, after confound control.

:mod:`workbench.pooled` tests every feature on the same units it reports on; with thousands of features the best
one is partly chosen for its luck. Here the choice is made on training units only and judged on held-out units:

1. every feature enters as its ranks over the units (pooled SAE features are heavy-tailed: a few units carry most
   of a feature's activation, and on raw values one unit could decide a correlation); on the training units, the
   target and every feature are residualised on the covariates (least squares with an
   intercept), the residuals are correlated (Frisch-Waugh-Lovell partial correlation, t test on ``n - k - 2``
   degrees of freedom) and Benjamini-Hochberg q-values are taken over the features. The feature with the smallest
   p-value (ties: largest ``|r|``) is kept with the sign of its correlation;
2. on the held-out units that one feature is evaluated as it is, with no refit of the choice. Its residualisation
   (and the target's) uses the covariate coefficients fitted on the training units, and its significance is a
   one-sided rank test in the training direction (Mann-Whitney for a binary target, Spearman for a numeric one);
3. ``covariates_r2`` / ``covariates_auroc`` tell how much of the target the covariates alone predict on the
   held-out units, the baseline a feature has to beat to be more than a confound detector.

Targets the data cannot test (too few units, one class, a target the covariates determine) get an explicit
``status`` instead of a number. Run it on SAE features, neurons and a random-weight SAE for the baselines.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from workbench.errors import InputError
from workbench.pooled import _bh, auroc

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["heldout_findings", "HeldoutFindings", "covariate_matrix", "COLUMNS"]

COLUMNS = [
    "target", "kind", "representation", "status", "n_train", "n_test", "n_positive_test", "best_feature", "sign",
    "train_partial_r", "train_q", "n_significant_train", "test_auroc", "test_auroc_adjusted", "test_rho",
    "test_rho_adjusted", "test_partial_r", "test_p_adjusted", "test_q_adjusted", "covariates_r2", "covariates_auroc",
]
_RESULTS = COLUMNS[8:]  # NaN on rows that are not testable
MISSING = "(missing)"


class HeldoutFindings(NamedTuple):
    """Output of :func:`heldout_findings`."""

    table: pd.DataFrame
    """One row per target x representation (columns in :data:`COLUMNS`, documented in :func:`heldout_findings`)."""
    params: dict[str, Any]
    """The options and sizes used (stored with the results)."""


def covariate_matrix(covariates: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    """Design matrix of confounds: ``(n_units, n_terms)`` and the names of its columns.

    Categorical, object, string and bool columns are one-hot encoded with the first level dropped (terms named
    ``"column=level"``; a missing value is its own level ``"(missing)"``, placed last so a real level is the
    reference). Numeric columns are standardised (term named as the column); a numeric column with missing or
    infinite values raises :class:`InputError` (bin it into a categorical column or fill it). A column with a single
    value is dropped. Rows are taken by position.
    """
    import pandas as pd

    if covariates.columns.has_duplicates:
        raise InputError("covariates have duplicate column names")
    blocks: list[np.ndarray] = []
    names: list[str] = []
    for name in covariates.columns:
        col = covariates[name]
        dtype = col.dtype
        numeric = pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)
        if isinstance(dtype, pd.CategoricalDtype) or not numeric:
            present = col.dropna()
            if isinstance(dtype, pd.CategoricalDtype):
                levels = [str(c) for c in dtype.categories if (present == c).any()]
            else:
                levels = sorted({str(v) for v in present})
            if col.isna().any():
                levels.append(MISSING)
            if len(levels) < 2:
                continue
            as_str = np.array([MISSING if pd.isna(v) else str(v) for v in col.astype(object)], dtype=object)
            for level in levels[1:]:
                blocks.append((as_str == level).astype(np.float64)[:, None])
                names.append(f"{name}={level}")
        else:
            x = col.to_numpy(dtype=np.float64, na_value=np.nan)
            if not np.isfinite(x).all():
                raise InputError(f"numeric covariate {name!r} has missing or infinite values; bin it or fill it")
            sd = x.std()
            if sd == 0:
                continue
            blocks.append(((x - x.mean()) / sd)[:, None])
            names.append(str(name))
    matrix = np.hstack(blocks) if blocks else np.zeros((len(covariates), 0))
    return matrix, names


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a @ a) * (b @ b))
    return float(a @ b / den) if den > 0 else float("nan")


def _target(col: pd.Series) -> tuple[str, np.ndarray]:
    """("binary" or "numeric", float values with NaN for missing)."""
    try:
        y = col.to_numpy(dtype=np.float64, na_value=np.nan)
    except (TypeError, ValueError):
        raise InputError(f"target {col.name!r} is neither binary nor numeric") from None
    if np.isinf(y).any():
        raise InputError(f"target {col.name!r} holds infinite values")
    return ("binary" if np.isin(y[~np.isnan(y)], (0.0, 1.0)).all() else "numeric"), y


def _check(values: Mapping[str, np.ndarray], feature_names: Mapping[str, Sequence[str]], n: int) -> None:
    if not values:
        raise InputError("no representation given in values")
    for rep, v in values.items():
        shape = np.shape(v)
        if len(shape) != 2:
            raise InputError(f"values[{rep!r}] has shape {shape}; want (n_units, n_features)")
        if shape[0] != n:
            raise InputError(f"values[{rep!r}] has {shape[0]} units; targets have {n} rows")
        if rep not in feature_names or len(feature_names[rep]) != shape[1]:
            got = len(feature_names[rep]) if rep in feature_names else "no"
            raise InputError(f"feature_names[{rep!r}] has {got} names for {shape[1]} features")


def _centred(rep: str, v: np.ndarray) -> np.ndarray:
    """A float64 copy centred on all units (the intercept absorbs the shift; it keeps the sums of squares below free
    of cancellation)."""
    v = np.asarray(v)
    mean = v.mean(0, dtype=np.float64)
    if not np.isfinite(mean).all():  # NaN and inf propagate into the column mean
        raise InputError(f"values[{rep!r}] hold NaN or infinite values")
    return np.subtract(v, mean, dtype=np.float64)


def heldout_findings(
    values: Mapping[str, np.ndarray],
    targets: pd.DataFrame,
    *,
    feature_names: Mapping[str, Sequence[str]],
    covariates: pd.DataFrame | None = None,
    train: np.ndarray,
    alpha: float = 0.05,
    min_units: int = 10,
) -> HeldoutFindings:
    """Choose the best pooled feature per target on training units and evaluate it on held-out units.

    Parameters
    ----------
    values
        Per representation name (``"sae"``, ``"neurons"``, ``"random_sae"``...), a dense ``(n_units, n_features)``
        array of pooled activations.
    targets
        One column per target, one row per unit (by position). Binary when the non-missing values are bool or a
        subset of {0, 1}, numeric otherwise. Missing values: the unit is not used for that target.
    feature_names
        Per representation, the names of its feature columns.
    covariates
        Confounds, one row per unit, encoded by :func:`covariate_matrix` (``None``: no adjustment).
    train
        Boolean mask of the training units; the others are the held-out test units.
    alpha
        q-value threshold of ``n_significant_train``.
    min_units
        Fewest train and fewest test units (with a non-missing target) a target needs to be tested.

    Returns
    -------
    HeldoutFindings
        ``table`` has one row per target x representation with columns: ``target``; ``kind`` ("binary" or
        "numeric"); ``representation``; ``status`` ("ok" or "not testable: <reason>"); ``n_train``, ``n_test``
        (units with a non-missing target); ``n_positive_test`` (positives among the test units, NaN for numeric
        targets); ``best_feature`` (chosen on train, "" when not testable); ``sign`` (+1 / -1, the sign of its
        train partial correlation); ``train_partial_r`` and ``train_q`` (its partial correlation and BH q-value over
        the representation's features); ``n_significant_train`` (features with ``train_q < alpha``); ``test_auroc``
        (binary: AUROC of ``sign * activation`` on test); ``test_auroc_adjusted`` (binary: AUROC of ``sign *``
        the activation residualised with the train covariate fit); ``test_rho`` (numeric: Spearman correlation of
        ``sign * activation`` with the target on test); ``test_rho_adjusted`` (numeric: Spearman correlation of the
        residualised activation and residualised target on test); ``test_partial_r`` (Pearson correlation on test
        of ``sign *`` residualised activation with the residualised target, both with train coefficients: > 0 when
        the train direction holds); ``test_p_adjusted`` (one-sided, in the training direction, on ranks: a
        Mann-Whitney test of the residualised activation between classes for a binary target, the test behind
        ``test_auroc_adjusted``; for a numeric target a t test of ``test_rho_adjusted`` on ``n_test - k - 2``
        degrees of freedom, ``k`` the rank of the covariates on train); ``test_q_adjusted``
        (BH over the ``ok`` rows' ``test_p_adjusted``); ``covariates_r2`` (R^2 on test of the covariate-only least
        squares fit from train, NaN without covariates; may be negative); ``covariates_auroc`` (binary: AUROC on
        test of that fitted value). Rows that are not testable keep their counts and hold NaN in every result
        column. ``params`` records the options, the covariate columns and terms, and the unit counts.
    """
    import pandas as pd
    from scipy.stats import rankdata

    n = len(targets)
    _check(values, feature_names, n)
    train = np.asarray(train)
    if train.shape != (n,) or not (train.dtype == bool or np.isin(train, (0, 1)).all()):
        raise InputError(f"train must be a boolean mask of {n} units; got shape {train.shape}, dtype {train.dtype}")
    train = train.astype(bool)
    if train.all() or not train.any():
        raise InputError("train needs at least one training (True) and one held-out (False) unit")
    if not 0 < alpha < 1 or min_units < 2:
        raise InputError(f"alpha must be in (0, 1) and min_units at least 2; got {alpha}, {min_units}")
    if targets.columns.has_duplicates:
        raise InputError("targets have duplicate column names")
    cov, terms = np.zeros((n, 0)), []
    if covariates is not None:
        if len(covariates) != n:
            raise InputError(f"covariates have {len(covariates)} rows for {n} units")
        cov, terms = covariate_matrix(covariates)
    design = np.column_stack([np.ones(n), cov])
    bases: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}  # train mask -> (orthonormal basis, pseudo-inverse)
    heads, fits = [], {}
    for name in targets.columns:
        kind, y_all = _target(targets[name])
        tr, te = train & ~np.isnan(y_all), ~train & ~np.isnan(y_all)
        n_tr, n_te = int(tr.sum()), int(te.sum())
        y_tr, y_te = y_all[tr], y_all[te]
        status = "ok"
        if n_tr < min_units or n_te < min_units:
            side = "train" if n_tr < min_units else "test"
            status = f"not testable: fewer than {min_units} {side} units ({n_tr} train, {n_te} test)"
        elif kind == "binary" and len(np.unique(y_tr)) < 2:
            status = "not testable: one class on train"
        elif kind == "binary" and len(np.unique(y_te)) < 2:
            status = "not testable: one class on test"
        elif np.ptp(y_tr) == 0:
            status = "not testable: the target is constant on train"
        elif np.ptp(y_te) == 0:
            status = "not testable: the target is constant on test"
        else:
            key = tr.tobytes()
            if key not in bases:
                u, sv, vt = np.linalg.svd(design[tr], full_matrices=False)
                rank = int((sv > sv[0] * max(design[tr].shape) * np.finfo(float).eps).sum())
                bases[key] = (u[:, :rank], (vt[:rank].T / sv[:rank]) @ u[:, :rank].T)
            u, pinv = bases[key]
            ry = y_tr - u @ (u.T @ y_tr)
            k = u.shape[1] - 1
            if ry @ ry < 1e-9 * ((y_tr - y_tr.mean()) ** 2).sum():
                status = "not testable: the covariates determine the target"
            elif min(n_tr, n_te) - k - 2 < 1:
                status = f"not testable: too few units for {k} covariate terms"
            else:
                fits[name] = {"key": key, "tr": tr, "te": te, "y_tr": y_tr, "y_te": y_te, "ry": ry, "kind": kind,
                              "dof_tr": n_tr - k - 2, "dof_te": n_te - k - 2}
        heads.append({"target": name, "kind": kind, "status": status, "n_train": n_tr, "n_test": n_te,
                      "n_positive_test": float(y_te.sum()) if kind == "binary" else np.nan, "best_feature": ""})
    # all features of a representation at once, without copying its (units x features) matrix: every train set
    # enters as zero-padded columns (its covariate basis), every target as its zero-padded train residual
    keys = list(dict.fromkeys(f["key"] for f in fits.values()))
    masks = np.column_stack([np.frombuffer(key, dtype=bool) for key in keys] or [np.zeros(n, bool)])
    edges = np.cumsum([0] + [bases[key][0].shape[1] for key in keys])
    stack = np.zeros((n, edges[-1] + len(fits)))
    for g, key in enumerate(keys):
        stack[masks[:, g], edges[g]:edges[g + 1]] = bases[key][0]
    for i, f in enumerate(fits.values()):
        stack[f["tr"], edges[-1] + i] = f["ry"]
    results: dict[tuple[str, str], dict[str, Any]] = {}
    for rep, v in values.items():
        _centred(rep, v)  # checks the values even when no target is testable
        if not fits:
            continue
        # Ranks over units: sparse features are heavy-tailed (a few units carry most of the activation), and a
        # Pearson statistic on raw values lets one unit decide; on ranks the partial correlation is a robust one.
        xc = _centred(rep, rankdata(np.asarray(v), axis=0))
        proj = stack.T @ xc
        total = np.einsum("ik,ij,ij->kj", masks.astype(np.float64), xc, xc)  # train sums of squares, one pass
        resid = [total[g] - (proj[edges[g]:edges[g + 1]] ** 2).sum(0) for g in range(len(keys))]
        for i, (name, f) in enumerate(fits.items()):
            g = keys.index(f["key"])
            results[name, rep] = _best_feature(xc, proj[edges[-1] + i], resid[g], total[g], feature_names[rep], f,
                                               design, bases[f["key"]][1], has_cov=cov.shape[1] > 0, alpha=alpha)
    rows = [{**head, "representation": rep, **dict.fromkeys(_RESULTS, np.nan), **results.get((head["target"], rep), {})}
            for head in heads for rep in values]
    table = pd.DataFrame(rows, columns=COLUMNS)
    ok = (table["status"] == "ok").to_numpy()
    table.loc[ok, "test_q_adjusted"] = _bh(table.loc[ok, "test_p_adjusted"].to_numpy(dtype=float))
    params = {"alpha": alpha, "min_units": min_units,
              "covariates": [str(c) for c in covariates.columns] if covariates is not None else [],
              "covariate_terms": terms, "n_units": n, "n_train": int(train.sum()), "n_test": int((~train).sum())}
    return HeldoutFindings(table, params)


def _best_feature(
    xc: np.ndarray, num: np.ndarray, resid_ss: np.ndarray, total_ss: np.ndarray, names: Sequence[str],
    f: dict[str, Any], design: np.ndarray, pinv: np.ndarray, *, has_cov: bool, alpha: float,
) -> dict[str, Any]:
    """Result columns of one (target, representation) whose target passed the checks: choose on train, test on test.

    ``num`` = each feature's product with the target's train residual, ``resid_ss`` = each feature's train residual
    sum of squares (``total_ss`` before covariates), ``pinv`` the train least-squares map from values to coefficients.
    """
    from scipy.special import stdtr
    from scipy.stats import mannwhitneyu, rankdata

    tr, te, y_tr, y_te, ry = f["tr"], f["te"], f["y_tr"], f["y_te"], f["ry"]
    varies = resid_ss > 1e-9 * np.maximum(total_ss, np.finfo(float).tiny)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.clip(np.where(varies, num / np.sqrt(np.where(varies, resid_ss, 1.0) * (ry @ ry)), np.nan), -1.0, 1.0)
        tstat = r * np.sqrt(f["dof_tr"] / np.clip(1 - r**2, 1e-300, None))
    p = 2 * stdtr(f["dof_tr"], -np.abs(tstat))
    p[~np.isfinite(r)] = np.nan
    if not np.isfinite(p).any():
        return {"status": "not testable: no feature varies on train beyond the covariates"}
    q = _bh(p)
    j = int(np.lexsort((-np.abs(np.nan_to_num(r)), np.where(np.isfinite(p), p, np.inf)))[0])
    sign = 1.0 if r[j] >= 0 else -1.0
    xj_te = sign * xc[te, j]
    dz = design[te]
    rx_te = xj_te - sign * (dz @ (pinv @ xc[tr, j]))
    y_fit = dz @ (pinv @ y_tr)
    ry_te = y_te - y_fit
    pr = _pearson(rx_te, ry_te)
    out = {"best_feature": str(names[j]), "sign": sign, "train_partial_r": float(r[j]), "train_q": float(q[j]),
           "n_significant_train": float((q < alpha).sum()), "test_partial_r": pr}
    if has_cov:
        out["covariates_r2"] = 1 - float(ry_te @ ry_te) / float(((y_te - y_te.mean()) ** 2).sum())
    if f["kind"] == "binary":
        yb = y_te.astype(bool)
        out["test_auroc"] = float(auroc(xj_te[:, None], yb)[0])
        out["test_auroc_adjusted"] = float(auroc(rx_te[:, None], yb)[0])
        # one-sided rank test in the training direction, the test behind the adjusted AUROC
        out["test_p_adjusted"] = float(mannwhitneyu(rx_te[yb], rx_te[~yb], alternative="greater").pvalue)
        if has_cov:
            out["covariates_auroc"] = float(auroc(y_fit[:, None], yb)[0])
    else:
        out["test_rho"] = _pearson(rankdata(xj_te), rankdata(y_te))
        rho = _pearson(rankdata(rx_te), rankdata(ry_te))
        out["test_rho_adjusted"] = rho
        t_te = rho * np.sqrt(f["dof_te"] / max(1 - rho**2, 1e-300)) if np.isfinite(rho) else np.nan
        out["test_p_adjusted"] = float(stdtr(f["dof_te"], -t_te)) if np.isfinite(rho) else np.nan  # one-sided
    return out
