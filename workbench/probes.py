"""Linear probes: what a cross-validated linear read-out recovers from SAE codes, raw activations or model units.

A probe asks how well a target (a concept group such as ``region`` or ``species``, or a continuous assay value)
can be read linearly from a representation, per token or per sequence (after :func:`pool`). Every representation
gets

* a *dense* probe on all its dimensions (``k = 0`` in the results), and
* *k-sparse* probes for each ``k`` in ``sparse_k``: the ``k`` best dimensions are chosen on the training fold
  only (never on the test fold), then a probe is fitted on those dimensions alone. For classification the choice
  is one-vs-rest, ``k`` dimensions per class (ranked by the two-group F statistic of the class against the rest,
  which equals the squared t statistic), one binary probe per class, and the prediction is the class whose probe
  gives the highest probability (a binary target needs a single probe): the ``k = 1`` probe asks, class by class,
  whether one dimension separates the class from the others ("does one SAE feature do what no single neuron
  can"). For regression the ``k`` dimensions with the largest absolute Pearson correlation with the target are
  used. ``n_dims`` in the scores is the number of dimensions per probe (per class for k-sparse classification).

Models and scaling. Dimensions are scaled to unit variance on the training fold (dense inputs are also centred;
sparse ``csr`` inputs are only divided by their standard deviation, which keeps them sparse and, because the
intercept is not penalised, gives the same fitted probe as full standardisation). Classification uses
scikit-learn's ``LogisticRegression`` (L2, ``lbfgs``, multinomial for the dense probe, ``class_weight="balanced"``
because the score is balanced accuracy) with a fixed ``C = 1`` by default; passing a list of values for ``C``
chooses it per outer fold by an inner grouped 3-fold cross-validation (slower). The many tiny one-vs-rest
k-sparse probes minimise the same objective (same ``C``, balanced weights, unpenalised intercept) with a batched
Newton solver, one set of matrix products per fold instead of one scikit-learn fit per class; a test checks it
against ``LogisticRegression``. Regression uses ``RidgeCV`` with its efficient leave-one-out choice of ``alpha``
on the training fold (that choice sees only training rows, so the reported test scores stay clean). Fits that
hit ``max_iter`` are recorded (``converged`` is False) instead of warning. Categorical, string and boolean
columns are classification targets, every numeric column (integers included) a regression target: cast an
integer-coded class column to ``str`` or ``category`` first.

Cross-validation is grouped: all rows of one group (the tokens of one sequence; optionally, for sequence probes,
a clonotype or any user grouping) fall in the same fold (``StratifiedGroupKFold``, stratified by class, or by
target quintile for regression). Token probes subsample to ``max_samples`` labelled tokens per target (seeded;
stratified by class with a floor so that rare classes keep some tokens). Classes seen in fewer than ``cv``
groups are dropped and listed in ``dropped_classes``. A target that cannot be probed (fewer than two usable
classes, fewer than ``cv`` groups, a constant value) is skipped and explained in :attr:`ProbeResult.notes`, so
one bad column does not stop a run over many targets.

Scores are the mean and standard deviation over the outer folds of balanced accuracy (with macro F1 as the extra
metric) or R² (with Spearman's rho as the extra metric). ``baseline`` is what a constant prediction scores:
``1 / n_classes`` balanced accuracy, or an R² of 0. :attr:`ProbeResult.weights` holds the largest absolute weights
per class of the dense probe refitted on all (subsampled) rows, in standardised units (for a binary target the
second class gets the fitted weights and the first their negation). ``seconds`` is the time spent on one
(target, representation), all ``k`` together.

Speed. Probes run with BLAS and OpenMP held to one thread (many small fits: thread hand-offs cost far more than
they gain). Measured on this project's 2-core CPU machine: ~200,000 tokens of 2,000 sequences, six categorical
targets (2 to 20 classes), three representations (a 4,096-wide SAE as ``csr`` with 64 active codes per token, 512
raw dimensions, 512 rectified units), ``max_samples=20000``, ``cv=5``, ``sparse_k=(1, 8)``: about 35 s in all.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench.concepts import ConceptLabels
from workbench.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import scipy.sparse as sp

__all__ = [
    "ProbeResult", "token_targets", "sequence_targets", "pool", "probe_tokens", "probe_sequences", "concat_results",
    "SCORE_COLUMNS", "WEIGHT_COLUMNS", "NOTE_COLUMNS",
]

SCORE_COLUMNS = [
    "level", "target", "task", "representation", "k", "metric", "score", "score_std", "extra_metric", "extra",
    "extra_std", "baseline", "n_samples", "n_groups", "n_classes", "n_dims", "dropped_classes", "converged", "seconds",
]
WEIGHT_COLUMNS = ["target", "class", "representation", "dim", "weight"]
NOTE_COLUMNS = ["level", "target", "note"]

RIDGE_ALPHAS: tuple[float, ...] = tuple(float(a) for a in np.logspace(-2, 5, 8))
_DENSIFY_DENSITY = 0.25  # sparse inputs at least this dense are fitted as dense arrays (same result, faster)
_DENSIFY_MAX_CELLS = 32_000_000


@dataclass
class ProbeResult:
    """Scores, top weights and notes of a probe run (see the module docstring for every column)."""

    scores: pd.DataFrame
    """One row per (level, target, representation, k): ``SCORE_COLUMNS``."""
    weights: pd.DataFrame
    """Top absolute weights per class of each dense probe refitted on all rows: ``WEIGHT_COLUMNS``."""
    notes: pd.DataFrame
    """Targets that were skipped, and why: ``NOTE_COLUMNS``."""
    params: dict[str, Any] = field(default_factory=dict)

    def table(self, *, level: str | None = None) -> pd.DataFrame:
        """Wide view: one row per (level, target), one column per (representation, k), cells = mean score."""
        s = self.scores if level is None else self.scores[self.scores["level"] == level]
        return s.pivot_table(index=["level", "target"], columns=["representation", "k"], values="score")


def concat_results(results: Sequence[ProbeResult]) -> ProbeResult:
    """Stack several results (e.g. token and sequence probes) into one."""
    import pandas as pd

    results = list(results)
    if not results:
        raise InputError("no probe results to combine")
    params = {k: v for r in results for k, v in r.params.items()}
    return ProbeResult(
        pd.concat([r.scores for r in results], ignore_index=True),
        pd.concat([r.weights for r in results], ignore_index=True),
        pd.concat([r.notes for r in results], ignore_index=True),
        params,
    )


# --------------------------------------------------------------------------------------------------- targets


def _targets_from(matrix: Any, names: Sequence[str], groups: Sequence[str], what: str,
                  scope_of: Callable[[list[int]], np.ndarray | None] | None = None) -> pd.DataFrame:
    import pandas as pd
    import scipy.sparse as sp

    if isinstance(groups, str):
        groups = [groups]
    split = [str(n).split("=", 1) for n in names]
    available = sorted({p[0] for p in split if len(p) == 2})
    m = sp.csc_matrix(matrix, dtype=bool)
    m.eliminate_zeros()
    out = {}
    for group in groups:
        cols = [j for j, p in enumerate(split) if len(p) == 2 and p[0] == group]
        if not cols:
            raise InputError(f"no {what} concept of group {group!r}; groups present: {', '.join(available) or 'none'}")
        sub = sp.csr_matrix(m[:, cols])
        sub.sum_duplicates()
        count = np.diff(sub.indptr)
        one = np.flatnonzero(count == 1)
        codes = np.full(sub.shape[0], -1, dtype=np.int64)
        codes[one] = sub.indices[sub.indptr[one]]
        covered = scope_of(cols) if scope_of is not None else None
        if covered is not None:
            codes[~covered] = -1  # outside every scope of the group: unlabelled, not a class
        values = [split[j][1] for j in cols]
        # Categories keep the concept-table order; duplicated values (same name from two sources) merge.
        categories = list(dict.fromkeys(values))
        remap = np.array([categories.index(v) for v in values] + [-1], dtype=np.int64)
        out[group] = pd.Categorical.from_codes(remap[codes], categories=categories)
    return pd.DataFrame(out)


def token_targets(labels: ConceptLabels, groups: Sequence[str]) -> pd.DataFrame:
    """One categorical column per concept group, one row per token (store order).

    The group of a concept is the part of its name before the first ``=`` (``region`` for ``region=CDR3``) and
    the value the part after it. A token gets the value of the group's concept that labels it when exactly one
    does, and NaN when none or several do (unlabelled or ambiguous). Concepts without ``=`` belong to no group.
    A token outside the scope of every concept of the group (:attr:`~workbench.concepts.ConceptLabels.scopes`:
    where the source could not decide) is NaN too, so probes leave it out. An unknown group is an
    :class:`InputError` listing the groups present.
    """
    return _targets_from(labels.tokens, labels.token_concepts["concept"].tolist(), groups, "token",
                         lambda cols: labels.group_scope(cols, "token"))


def sequence_targets(labels: ConceptLabels, groups: Sequence[str]) -> pd.DataFrame:
    """Like :func:`token_targets`, for sequence-level concepts: one row per sequence in the store's order (NaN outside
    the sequence scopes of the group's concepts)."""
    return _targets_from(labels.sequences, labels.sequence_concepts["concept"].tolist(), groups, "sequence",
                         lambda cols: labels.group_scope(cols, "sequence"))


# --------------------------------------------------------------------------------------------------- pooling


def pool(X: np.ndarray | sp.spmatrix, token_sequence: np.ndarray, n_sequences: int, *, how: str = "mean") -> np.ndarray:
    """Pool token rows into sequence rows: ``(n_sequences, d)`` float array.

    ``token_sequence[i]`` is the sequence index (``0 .. n_sequences-1``) of row ``i`` of ``X`` (dense array or
    scipy sparse matrix; rows in any order, e.g. ``pd.factorize(store.obs()["sequence_id"])[0]``). ``how="mean"`` is one sparse matrix product; ``how="max"`` is a sorted segment maximum
    (for sparse input the implicit zeros count, so a sequence's maximum is never below 0 unless all its entries are
    stored). Sequences without tokens get zeros.
    """
    import scipy.sparse as sp

    if how not in ("mean", "max"):
        raise InputError(f"unknown pooling {how!r}; use 'mean' or 'max'")
    seq = np.asarray(token_sequence)
    if not sp.issparse(X):
        X = np.asarray(X)
        if X.ndim != 2:
            raise InputError(f"pool needs a 2-D matrix (tokens x dimensions), got shape {X.shape}")
    if X.dtype == np.float16:
        X = X.astype(np.float32)
    n = X.shape[0]
    if seq.shape != (n,):
        raise InputError(f"token_sequence has {seq.size} entries for {n} rows")
    if n and (not np.issubdtype(seq.dtype, np.integer) or seq.min() < 0 or seq.max() >= n_sequences):
        raise InputError(f"token_sequence must hold integers in 0..{n_sequences - 1}")
    seq = seq.astype(np.int64)
    d = X.shape[1]
    counts = np.bincount(seq, minlength=n_sequences).astype(np.float64)
    out_dtype = np.float32 if X.dtype == np.float32 or X.dtype == np.float16 else np.float64
    if how == "mean":
        inv = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
        P = sp.csr_matrix((inv[seq], (seq, np.arange(n))), shape=(n_sequences, n))
        out = P @ X
        out = out.toarray() if sp.issparse(out) else np.asarray(out)
        return out.astype(out_dtype, copy=False)
    if sp.issparse(X):
        coo = sp.coo_matrix(X)
        key = seq[coo.row] * d + coo.col.astype(np.int64)
        order = np.argsort(key, kind="stable")
        key, data = key[order], coo.data[order]
        out = np.zeros((n_sequences, d), dtype=out_dtype)
        if len(key):
            starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
            uniq = key[starts]
            best = np.maximum.reduceat(data, starts).astype(out_dtype)
            stored = np.diff(np.r_[starts, len(key)])
            # An entry stored on fewer rows than the sequence has tokens competes with an implicit zero.
            best = np.where(stored < counts[uniq // d], np.maximum(best, 0), best)
            out.reshape(-1)[uniq] = best
        return out
    X = np.asarray(X)
    in_order = bool(np.all(seq[1:] >= seq[:-1]))  # store order: no reordered copy of X
    order = None if in_order else np.argsort(seq, kind="stable")
    sorted_seq = seq if order is None else seq[order]
    out = np.zeros((n_sequences, d), dtype=out_dtype)
    if n:
        starts = np.flatnonzero(np.r_[True, sorted_seq[1:] != sorted_seq[:-1]])
        out[sorted_seq[starts]] = np.maximum.reduceat(X if order is None else X[order], starts, axis=0)
    return out


# --------------------------------------------------------------------------------------------------- checks


def _check_representations(representations: Mapping[str, Any]) -> dict[str, Any]:
    import scipy.sparse as sp

    if not isinstance(representations, Mapping) or not representations:
        raise InputError("give at least one representation as {name: matrix}")
    out: dict[str, Any] = {}
    for name, X in representations.items():
        if sp.issparse(X):
            X = sp.csr_matrix(X)
            if not np.issubdtype(X.dtype, np.number) and X.dtype != bool:
                raise InputError(f"representation {name!r} is not numeric")
            if X.dtype.kind == "f" and not np.isfinite(X.data).all():
                raise InputError(f"representation {name!r} has NaN or infinite values")
        else:
            X = np.asarray(X)
            if X.ndim != 2:
                raise InputError(f"representation {name!r} must be 2-D (rows x dimensions), got shape {X.shape}")
            if not (np.issubdtype(X.dtype, np.number) or X.dtype == bool):
                raise InputError(f"representation {name!r} is not numeric")
            if X.dtype.kind == "f":
                for start in range(0, X.shape[0], 65536):
                    if not np.isfinite(X[start : start + 65536]).all():
                        raise InputError(f"representation {name!r} has NaN or infinite values")
        if X.shape[1] == 0:
            raise InputError(f"representation {name!r} has no dimensions")
        out[str(name)] = X
    rows = {name: X.shape[0] for name, X in out.items()}
    if len(set(rows.values())) != 1:
        raise InputError(f"representations have different row counts: {rows}")
    return out


def _check_targets(targets: pd.DataFrame, n: int) -> None:
    import pandas as pd

    if not isinstance(targets, pd.DataFrame):
        raise InputError("targets must be a DataFrame with one column per target")
    if len(targets) != n:
        raise InputError(f"targets have {len(targets)} rows for {n} representation rows")
    if targets.shape[1] == 0:
        raise InputError("targets has no columns")


def _task_of(column: pd.Series) -> str:
    import pandas as pd

    if pd.api.types.is_bool_dtype(column) or not pd.api.types.is_numeric_dtype(column):
        return "classification"
    return "regression"


# --------------------------------------------------------------------------------------------------- linear algebra


def _float(X: Any, dtype: Any) -> Any:
    """Rows already selected: a float matrix, densified when sparse but dense enough to be faster as an array."""
    import scipy.sparse as sp

    if sp.issparse(X):
        X = sp.csr_matrix(X, dtype=dtype)
        cells = X.shape[0] * X.shape[1]
        if cells and X.nnz / cells >= _DENSIFY_DENSITY and cells <= _DENSIFY_MAX_CELLS:
            return X.toarray()
        return X
    return np.asarray(X, dtype=dtype)


def _scaler(X: Any) -> tuple[np.ndarray | None, np.ndarray]:
    """Column mean (dense only; None for sparse) and inverse standard deviation (1 for constant columns)."""
    import scipy.sparse as sp

    n = X.shape[0]
    if sp.issparse(X):
        mean = np.asarray(X.sum(0), dtype=np.float64).ravel() / n
        sq = np.asarray(X.multiply(X).sum(0), dtype=np.float64).ravel() / n
        var = np.maximum(sq - mean**2, 0)
        centre = None
    else:
        mean = X.mean(0, dtype=np.float64)
        var = np.zeros(X.shape[1])
        for s in range(0, n, 8192):
            var += ((X[s : s + 8192] - mean) ** 2).sum(0, dtype=np.float64)
        var /= n
        centre = mean
    sd = np.sqrt(var)
    inv = np.where(sd > 1e-12 * np.maximum(1.0, np.abs(mean)), 1.0 / np.where(sd > 0, sd, 1.0), 1.0)
    return centre, inv


def _scale(X: Any, centre: np.ndarray | None, inv: np.ndarray, cols: np.ndarray | None = None) -> Any:
    import scipy.sparse as sp

    if cols is not None:
        X = X[:, cols]
        inv = inv[cols]
        centre = None if centre is None else centre[cols]
    if sp.issparse(X):
        return sp.csr_matrix(X @ sp.diags(inv.astype(X.dtype)))
    dtype = X.dtype
    Z = X - centre.astype(dtype) if centre is not None else X.copy()
    Z *= inv.astype(dtype)
    return Z


def _dense_cols(X: Any, cols: np.ndarray) -> np.ndarray:
    import scipy.sparse as sp

    sub = X[:, cols]
    return sub.toarray() if sp.issparse(sub) else np.asarray(sub)


def _rank_dims(X: Any, y: np.ndarray, n_classes: int, task: str) -> np.ndarray:
    """Dimension scores on the training rows only: ``(n_classes or 1, d)``, larger is better.

    Classification: one-vs-rest two-group F statistic per class (F = t², computed from class sums in one sparse
    product); a dimension that separates a class perfectly scores ``inf``. Regression: absolute Pearson r.
    """
    import scipy.sparse as sp

    n = X.shape[0]
    sq = X.multiply(X) if sp.issparse(X) else X * X
    total = np.asarray(X.sum(0), dtype=np.float64).ravel()
    total_sq = np.asarray(sq.sum(0), dtype=np.float64).ravel()
    if task == "regression":
        yc = y - y.mean()
        cov = np.asarray(X.T @ yc, dtype=np.float64).ravel() / n
        var = np.maximum(total_sq / n - (total / n) ** 2, 0)
        sy = yc.std()
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(var > 0, np.abs(cov) / (np.sqrt(var) * sy), 0.0)
        return np.nan_to_num(r)[None, :]
    Y = sp.csr_matrix((np.ones(n), (np.arange(n), y)), shape=(n, n_classes))
    s1 = np.asarray((Y.T @ X).todense() if sp.issparse(X) else Y.T @ X, dtype=np.float64)
    q1 = np.asarray((Y.T @ sq).todense() if sp.issparse(sq) else Y.T @ sq, dtype=np.float64)
    n1 = np.bincount(y, minlength=n_classes).astype(np.float64)[:, None]
    n0 = n - n1
    with np.errstate(divide="ignore", invalid="ignore"):
        m1 = np.where(n1 > 0, s1 / n1, 0.0)
        m0 = np.where(n0 > 0, (total - s1) / n0, 0.0)
        ssw = np.maximum((q1 - n1 * m1**2) + ((total_sq - q1) - n0 * m0**2), 0.0)
        between = n1 * n0 / n * (m1 - m0) ** 2
        scale = np.maximum(total_sq / n, 1e-300)
        F = np.where(ssw > 1e-10 * n * scale, between / (ssw / max(n - 2, 1)), np.where(between > 1e-12 * scale, np.inf, 0.0))
    F[(n1[:, 0] == 0) | (n0[:, 0] == 0)] = 0.0
    return np.nan_to_num(F, nan=0.0, posinf=np.inf)


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest scores, ties broken by the lower index (deterministic)."""
    k = min(k, len(scores))
    return np.lexsort((np.arange(len(scores)), -scores))[:k]


# --------------------------------------------------------------------------------------------------- fitting


@dataclass
class _Setup:
    C: float | tuple[float, ...]
    max_iter: int
    cv: int
    seed: int


def _logistic(X: Any, y: np.ndarray, C: float, max_iter: int) -> tuple[Any, bool]:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=C, max_iter=max_iter, class_weight="balanced").fit(X, y)
    return model, bool(np.max(model.n_iter_) < max_iter)


def _ridge(X: Any, y: np.ndarray) -> Any:
    from sklearn.linear_model import RidgeCV

    return RidgeCV(alphas=RIDGE_ALPHAS).fit(X, y)


def _splits(y_strat: np.ndarray, g: np.ndarray, n_splits: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import StratifiedGroupKFold

    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    folds = list(splitter.split(np.zeros(len(g)), y_strat, g))
    return [(tr, te) for tr, te in folds if len(tr) and len(te)]


def _choose_C(X: Any, y: np.ndarray, g: np.ndarray, setup: _Setup) -> float:
    """Inner grouped 3-fold choice of C by balanced accuracy (only when a grid is given)."""
    from sklearn.metrics import balanced_accuracy_score

    if isinstance(setup.C, float):
        return setup.C
    inner = _splits(y, g, 3, setup.seed + 1)
    best, best_score = setup.C[0], -np.inf
    for C in setup.C:
        scores = []
        for tr, te in inner:
            centre, inv = _scaler(X[tr])
            model, _ = _logistic(_scale(X[tr], centre, inv), y[tr], C, setup.max_iter)
            scores.append(balanced_accuracy_score(y[te], model.predict(_scale(X[te], centre, inv))))
        if np.mean(scores) > best_score:
            best, best_score = C, float(np.mean(scores))
    return float(best)


def _classify_fold(X: Any, y: np.ndarray, g: np.ndarray, n_classes: int, tr: np.ndarray, te: np.ndarray,
                   ks: Sequence[int], setup: _Setup) -> dict[int, tuple[np.ndarray, bool]]:
    """Predictions on ``te`` of the dense probe (key 0) and of each k-sparse probe; plus convergence."""
    Xtr, ytr = X[tr], y[tr]
    centre, inv = _scaler(Xtr)
    Ztr, Zte = _scale(Xtr, centre, inv), _scale(X[te], centre, inv)
    if len(np.unique(ytr)) < 2:
        return {k: (np.full(len(te), ytr[0]), True) for k in [0, *ks]}
    C = _choose_C(Xtr, ytr, g[tr], setup)
    model, ok = _logistic(Ztr, ytr, C, setup.max_iter)
    out = {0: (model.predict(Zte), ok)}
    if not ks:
        return out
    present = np.unique(ytr)
    F = _rank_dims(Ztr, ytr, n_classes, "classification")  # training rows only: no leakage into the choice
    # Binary targets need one probe (both classes rank dimensions identically); otherwise one per class.
    positive = present[1:] if len(present) == 2 else present
    for k in ks:
        cols = np.stack([_top(F[c], k) for c in positive])
        margins = np.empty((len(te), len(positive)))
        converged = True
        for start in range(0, len(positive), _OVR_CHUNK):
            chunk = slice(start, start + _OVR_CHUNK)
            A = _gather(Ztr, cols[chunk])
            t = ytr[None, :] == positive[chunk, None]
            W, b, ok = _ovr_logistic(A, t, C, setup.max_iter)
            margins[:, chunk] = ((_gather(Zte, cols[chunk]) @ W[:, :, None])[:, :, 0] + b[:, None]).T
            converged &= ok
        if len(present) == 2:
            out[k] = (np.where(margins[:, 0] > 0, present[1], present[0]), converged)
        else:
            out[k] = (present[np.argmax(margins, axis=1)], converged)
    return out


_OVR_CHUNK = 16


def _gather(Z: Any, cols: np.ndarray) -> np.ndarray:
    """``(n_problems, n_rows, k)`` float64: for each problem, the rows of ``Z`` restricted to its columns."""
    n_problems, k = cols.shape
    sub = _dense_cols(Z, cols.ravel()).astype(np.float64, copy=False)
    return np.ascontiguousarray(sub.reshape(Z.shape[0], n_problems, k).transpose(1, 0, 2))


def _ovr_logistic(A: np.ndarray, t: np.ndarray, C: float, max_iter: int, tol: float = 1e-8) -> tuple[np.ndarray, np.ndarray, bool]:
    """Many small binary L2 logistic regressions at once, by damped Newton steps.

    Problem ``j`` has design ``A[j]`` (``n x k``), labels ``t[j]`` and minimises
    ``C * sum_i s_i * logloss_i + ||w||^2 / 2`` with balanced sample weights ``s_i = n / (2 n_class(i))`` and an
    unpenalised intercept: scikit-learn's ``LogisticRegression(C=C, class_weight="balanced")`` objective, solved
    for all the tiny k-sparse probes of a fold in a few batched matrix products instead of one fit per class.
    Returns weights ``(m, k)``, intercepts ``(m,)`` and whether every problem converged.
    """
    from scipy.special import expit

    m, n, k = A.shape
    A1 = np.concatenate([A, np.ones((m, n, 1))], axis=2)
    A1T = A1.transpose(0, 2, 1)
    tf = t.astype(np.float64)
    n_pos = tf.sum(1, keepdims=True)
    s = np.where(t, n / (2 * np.maximum(n_pos, 1)), n / (2 * np.maximum(n - n_pos, 1)))
    pen = np.r_[np.ones(k), 0.0]
    w = np.zeros((m, k + 1))

    def objective(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z = (A1 @ w[:, :, None])[:, :, 0]
        return C * (s * (np.logaddexp(0, z) - tf * z)).sum(1) + 0.5 * (pen * w * w).sum(1), z

    f, z = objective(w)
    active = np.ones(m, dtype=bool)
    for _ in range(max_iter):
        q = expit(z)
        grad = C * (A1T @ (s * (q - tf))[:, :, None])[:, :, 0] + pen * w
        h = s * q * (1 - q)
        H = C * ((A1T * h[:, None, :]) @ A1) + np.diag(pen + 1e-10)
        step = np.linalg.solve(H, grad[:, :, None])[:, :, 0]
        step[~active] = 0
        decrement = (grad * step).sum(1)
        active &= decrement > tol * (1 + np.abs(f))
        if not active.any():
            return w[:, :k], w[:, k], True
        alpha = np.ones(m)
        for _ in range(30):  # halve the step of each problem until its objective does not increase
            trial = w - alpha[:, None] * step
            f_new, z_new = objective(trial)
            worse = active & (f_new > f + 1e-12 * np.abs(f))
            if not worse.any():
                break
            alpha = np.where(worse, alpha / 2, alpha)
        w, f, z = trial, f_new, z_new
    return w[:, :k], w[:, k], False


def _regress_fold(X: Any, y: np.ndarray, tr: np.ndarray, te: np.ndarray, ks: Sequence[int]) -> dict[int, np.ndarray]:
    Xtr = X[tr]
    centre, inv = _scaler(Xtr)
    Ztr, Zte = _scale(Xtr, centre, inv), _scale(X[te], centre, inv)
    out = {0: _ridge(Ztr, y[tr]).predict(Zte)}
    if ks:
        r = _rank_dims(Ztr, y[tr], 1, "regression")[0]
        for k in ks:
            cols = _top(r, k)
            out[k] = _ridge(_dense_cols(Ztr, cols), y[tr]).predict(_dense_cols(Zte, cols))
    return out


def _fold_metrics(task: str, y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float]:
    from scipy.stats import spearmanr
    from sklearn.metrics import balanced_accuracy_score, f1_score, r2_score

    if task == "classification":
        return float(balanced_accuracy_score(y_true, y_pred)), float(f1_score(y_true, y_pred, average="macro", zero_division=0))
    rho = spearmanr(y_true, y_pred).statistic if np.ptp(y_pred) > 0 and np.ptp(y_true) > 0 else np.nan
    return float(r2_score(y_true, y_pred)), float(rho)


def _top_weights(coef: np.ndarray, classes: Sequence[Any], target: str, rep: str, top: int) -> pd.DataFrame:
    import pandas as pd

    rows = []
    for c, w in zip(classes, coef):
        idx = _top(np.abs(w), top)
        rows.append(pd.DataFrame({"target": target, "class": c, "representation": rep, "dim": idx.astype(np.int64),
                                  "weight": w[idx].astype(np.float64)}))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=WEIGHT_COLUMNS)


# --------------------------------------------------------------------------------------------------- subsampling


def _subsample(codes: np.ndarray | None, n: int, max_samples: int | None, rng: np.random.Generator) -> np.ndarray:
    """Row indices kept: all when ``n <= max_samples``; else uniform (regression) or stratified with a floor.

    Stratified: each class first gets ``min(n_c, max_samples // (5 * n_classes))`` rows, the remaining budget is
    shared in proportion to what each class has left, so common classes keep their share and rare ones survive.
    """
    if max_samples is None or n <= max_samples:
        return np.arange(n)
    if codes is None:
        return np.sort(rng.choice(n, size=max_samples, replace=False))
    n_classes = int(codes.max()) + 1
    counts = np.bincount(codes, minlength=n_classes)
    floor = np.minimum(counts, max_samples // (5 * max(n_classes, 1)))
    left = counts - floor
    rest = max_samples - int(floor.sum())
    extra = np.minimum(left, np.floor(rest * left / max(left.sum(), 1)).astype(np.int64))
    take = floor + extra
    keep = [rng.choice(np.flatnonzero(codes == c), size=int(take[c]), replace=False) for c in range(n_classes) if take[c]]
    return np.sort(np.concatenate(keep))


def _groups_per_class(codes: np.ndarray, g: np.ndarray, n_classes: int) -> np.ndarray:
    """Number of distinct groups in which each class occurs."""
    n_groups = int(g.max()) + 1 if len(g) else 1
    pairs = np.unique(codes.astype(np.int64) * n_groups + g)
    return np.bincount(pairs // n_groups, minlength=n_classes)


# --------------------------------------------------------------------------------------------------- driver


def _probe_one(rep: str, X_all: Any, *, level: str, target: str, task: str, rows: np.ndarray, y: np.ndarray,
               g: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]], classes: np.ndarray | None, n_groups: int,
               dropped: list[str], ks: list[int], setup: _Setup, top_weights: int) -> tuple[list[dict[str, Any]], pd.DataFrame]:
    """Cross-validated dense and k-sparse probes of one target from one representation, plus the refitted weights."""
    n_classes = len(classes) if classes is not None else 0
    baseline = 1.0 / n_classes if task == "classification" else 0.0
    score_rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    X = _float(X_all[rows], np.float32 if task == "classification" else np.float64)
    d = X.shape[1]
    per_fold: dict[int, list[tuple[float, float]]] = {k: [] for k in [0, *ks]}
    conv: dict[int, bool] = {k: True for k in [0, *ks]}
    for tr, te in folds:
        if task == "classification":
            for k, (pred, ok) in _classify_fold(X, y, g, n_classes, tr, te, ks, setup).items():
                per_fold[k].append(_fold_metrics(task, y[te], pred))
                conv[k] &= ok
        else:
            for k, pred in _regress_fold(X, y, tr, te, ks).items():
                per_fold[k].append(_fold_metrics(task, y[te], pred))
    # Refit the dense probe on all rows for its weights.
    centre, inv = _scaler(X)
    Z = _scale(X, centre, inv)
    if task == "classification":
        assert classes is not None
        model, ok = _logistic(Z, y, _choose_C(X, y, g, setup), setup.max_iter)
        conv[0] &= ok
        if n_classes > 2:
            weights = _top_weights(model.coef_, [str(classes[c]) for c in model.classes_], target, rep, top_weights)
        else:
            weights = _top_weights(np.vstack([-model.coef_[0], model.coef_[0]]), [str(c) for c in classes], target, rep,
                                   top_weights)
    else:
        model = _ridge(Z, y)
        weights = _top_weights(np.atleast_2d(model.coef_), [None], target, rep, top_weights)
    seconds = time.perf_counter() - start
    for k, vals in per_fold.items():
        arr = np.array(vals, dtype=np.float64)
        extra_ok = bool(np.isfinite(arr[:, 1]).any())
        score_rows.append({
            "level": level, "target": target, "task": task, "representation": rep, "k": int(k),
            "metric": "balanced_accuracy" if task == "classification" else "r2",
            "score": float(np.nanmean(arr[:, 0])), "score_std": float(np.nanstd(arr[:, 0])),
            "extra_metric": "macro_f1" if task == "classification" else "spearman",
            "extra": float(np.nanmean(arr[:, 1])) if extra_ok else np.nan,
            "extra_std": float(np.nanstd(arr[:, 1])) if extra_ok else np.nan,
            "baseline": baseline, "n_samples": int(len(rows)), "n_groups": int(n_groups),
            "n_classes": int(n_classes), "n_dims": int(d) if k == 0 else int(min(k, d)),
            "dropped_classes": "; ".join(dropped), "converged": bool(conv[k]), "seconds": seconds,
        })
    return score_rows, weights


def _run(level: str, reps: dict[str, Any], targets: pd.DataFrame, group_codes: np.ndarray, *, cv: int,
         max_samples: int | None, sparse_k: Sequence[int], seed: int, C: float | Sequence[float], max_iter: int,
         top_weights: int) -> ProbeResult:
    import pandas as pd

    if int(cv) < 2:
        raise InputError(f"cv must be at least 2, got {cv}")
    ks = sorted({int(k) for k in sparse_k})
    if any(k < 1 for k in ks):
        raise InputError(f"sparse_k values must be positive, got {list(sparse_k)}")
    if max_samples is not None and max_samples < 2 * cv:
        raise InputError(f"max_samples must be at least {2 * cv} for {cv}-fold cross-validation")
    grid: float | tuple[float, ...]
    if isinstance(C, (int, float)):
        grid = float(C)
    else:
        grid = tuple(float(c) for c in C)
        if not grid:
            raise InputError("C grid is empty")
    if any(c <= 0 for c in np.atleast_1d(grid)):
        raise InputError("C must be positive")
    setup = _Setup(grid, int(max_iter), int(cv), int(seed))
    score_rows: list[dict[str, Any]] = []
    weight_frames: list[pd.DataFrame] = []
    notes: list[dict[str, Any]] = []

    for target in targets.columns:
        column = targets[target]
        task = _task_of(column)
        valid = column.notna().to_numpy()
        if task == "regression":
            values = column.to_numpy(dtype=np.float64)
            valid &= np.isfinite(values)
        rows = np.flatnonzero(valid)
        if not len(rows):
            notes.append({"level": level, "target": str(target), "note": "no labelled rows"})
            continue
        g = group_codes[rows]
        dropped: list[str] = []
        classes: np.ndarray | None = None
        codes: np.ndarray | None = None
        if task == "classification":
            classes, codes = np.unique(column.iloc[rows].astype(str).to_numpy(), return_inverse=True)
            for attempt in (0, 1):  # before and after subsampling
                per = _groups_per_class(codes, g, len(classes))
                small = per < cv
                if small.any():
                    dropped += [f"{classes[c]} ({per[c]} groups)" for c in np.flatnonzero(small)]
                    keep = ~small[codes]
                    rows, g = rows[keep], g[keep]
                    remap = np.cumsum(~small) - 1
                    classes, codes = classes[~small], remap[codes[keep]]
                if len(classes) < 2:
                    break
                if attempt == 0:
                    sub = _subsample(codes, len(rows), max_samples, np.random.default_rng(seed))
                    rows, g, codes = rows[sub], g[sub], codes[sub]
            if len(classes) < 2:
                why = f"fewer than 2 classes seen in at least {cv} groups"
                notes.append({"level": level, "target": str(target),
                              "note": why + (f" (dropped: {'; '.join(dropped)})" if dropped else "")})
                continue
            y = codes
            strat = codes
        else:
            sub = _subsample(None, len(rows), max_samples, np.random.default_rng(seed))
            rows, g = rows[sub], g[sub]
            y = values[rows]
            if np.ptp(y) == 0:
                notes.append({"level": level, "target": str(target), "note": "constant target"})
                continue
            strat = pd.qcut(pd.Series(y).rank(method="first"), q=min(cv, len(y)), labels=False).to_numpy()
        n_groups = len(np.unique(g))
        if n_groups < cv:
            notes.append({"level": level, "target": str(target), "note": f"only {n_groups} groups for {cv}-fold CV"})
            continue
        folds = _splits(strat, g, cv, seed)

        context = dict(level=level, target=str(target), task=task, rows=rows, y=y, g=g, folds=folds, classes=classes,
                       n_groups=n_groups, dropped=dropped, ks=ks, setup=setup, top_weights=top_weights)
        for rep, X_all in reps.items():
            rows_out, weights_out = _probe_one(rep, X_all, **context)
            score_rows.extend(rows_out)
            weight_frames.append(weights_out)
    scores = pd.DataFrame(score_rows, columns=SCORE_COLUMNS)
    weights = pd.concat(weight_frames, ignore_index=True) if weight_frames else pd.DataFrame(columns=WEIGHT_COLUMNS)
    note_frame = pd.DataFrame(notes, columns=NOTE_COLUMNS)
    params = {f"{level}_probe": {"cv": cv, "max_samples": max_samples, "sparse_k": ks, "seed": seed,
                                 "C": grid, "max_iter": max_iter, "ridge_alphas": list(RIDGE_ALPHAS)}}
    return ProbeResult(scores, weights[WEIGHT_COLUMNS], note_frame, params)


def _run_limited(*args: Any, **kwargs: Any) -> ProbeResult:
    """:func:`_run` with BLAS and OpenMP held to one thread: for these many small fits, thread hand-offs between
    OpenBLAS and scikit-learn's OpenMP loops cost far more than they gain (10x slower measured on 2 cores)."""
    import scipy.stats  # noqa: F401  (load every native library first: threadpoolctl limits only loaded ones)
    import sklearn.linear_model  # noqa: F401
    import sklearn.metrics  # noqa: F401
    import sklearn.model_selection  # noqa: F401
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    # Warnings are silenced once, here: convergence is recorded per probe, and scikit-learn's notes on small classes
    # or on classes missing from a test fold are expected with grouped folds.
    with threadpool_limits(limits=1), warnings.catch_warnings():
        for category in (ConvergenceWarning, UserWarning, RuntimeWarning):
            warnings.simplefilter("ignore", category)
        return _run(*args, **kwargs)


def _group_codes(groups: Any, n: int, what: str) -> np.ndarray:
    import pandas as pd

    g = np.asarray(groups)
    if g.shape != (n,):
        raise InputError(f"{what} has {g.size} entries for {n} rows")
    if pd.isna(pd.Series(g)).any():
        raise InputError(f"{what} has missing values")
    return pd.factorize(pd.Series(g), sort=False)[0].astype(np.int64)


def probe_tokens(
    representations: Mapping[str, np.ndarray | sp.spmatrix],
    targets: pd.DataFrame,
    groups: np.ndarray,
    *,
    cv: int = 5,
    max_samples: int | None = 20000,
    sparse_k: Sequence[int] = (1, 8),
    seed: int = 0,
    C: float | Sequence[float] = 1.0,
    max_iter: int = 200,
    top_weights: int = 10,
) -> ProbeResult:
    """Token-level probes of every target column from every representation (module docstring for the method).

    ``representations`` maps a name (``"sae"``, ``"raw"``, ``"neurons"``...) to a ``(n_tokens, d)`` dense array or
    sparse matrix, rows in the same order as ``targets`` (e.g. :func:`token_targets`) and ``groups`` (the sequence
    of each token: index or id). Folds never split a sequence. Categorical, string or boolean columns are
    classification targets, numeric columns regression targets; NaN rows are left out per target. Each target is
    subsampled (seeded) to ``max_samples`` labelled tokens; the same rows and folds serve every representation, so
    their scores compare directly.
    """
    reps = _check_representations(representations)
    n = next(iter(reps.values())).shape[0]
    _check_targets(targets, n)
    codes = _group_codes(groups, n, "groups")
    return _run_limited("token", reps, targets, codes, cv=cv, max_samples=max_samples, sparse_k=sparse_k, seed=seed,
                C=C, max_iter=max_iter, top_weights=top_weights)


def probe_sequences(
    representations: Mapping[str, np.ndarray | sp.spmatrix],
    targets: pd.DataFrame,
    *,
    cv: int = 5,
    sparse_k: Sequence[int] = (1, 8),
    seed: int = 0,
    groups: np.ndarray | None = None,
    max_samples: int | None = None,
    C: float | Sequence[float] = 1.0,
    max_iter: int = 200,
    top_weights: int = 10,
) -> ProbeResult:
    """Sequence-level probes (rows are sequences, e.g. from :func:`pool`; targets e.g. from :func:`sequence_targets`
    or an assay table aligned to the rows). Object/categorical/boolean columns are classified, numeric columns
    regressed (Jain-style biophysical assays), NaN rows dropped per target. ``groups`` (optional, one per row: a
    clonotype, a donor...) keeps related sequences in the same fold; by default every row is its own group."""
    reps = _check_representations(representations)
    n = next(iter(reps.values())).shape[0]
    _check_targets(targets, n)
    codes = np.arange(n, dtype=np.int64) if groups is None else _group_codes(groups, n, "groups")
    return _run_limited("sequence", reps, targets, codes, cv=cv, max_samples=max_samples, sparse_k=sparse_k, seed=seed,
                C=C, max_iter=max_iter, top_weights=top_weights)
