"""Image-level analyses on top of the shared core: pathology association with confound control, the causal check on
the pathology logit, and images where the model and its own pathology features disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from workbench.associate import FeatureMatrix
    from workbench.pooled import PooledAssociation

    from .adapter import VisionAdapter
    from .readers import ImageRecord

__all__ = [
    "pooled_features", "pathology_association", "pathology_effects", "disagreements", "disagreement_counts",
    "pathology_features", "frame_concentration", "CAUSAL_COLUMNS", "DISAGREEMENT_KINDS", "SHORTCUT_SHARE",
    "REGION_CELLS",
]

SHORTCUT_SHARE = 0.8
"""A feature whose activation mass, summed over all images, sits at this share or more on the same
:data:`REGION_CELLS` of the grid's cells is flagged as a possible shortcut: it may read where in the frame, not what."""
REGION_CELLS = 0.05
"""The fraction of the grid's cells (at least one) that :func:`frame_concentration` measures the mass on: an even
spread puts this share of the mass there. On the PneumoniaMNIST demo (7x7 grid, 2 cells) a tenth of the SAE features
hold 80% of their mass there; with a fifth of the cells three quarters would, as the lungs sit in the same place in
every aligned chest X-ray."""


def pooled_features(features: FeatureMatrix | Any, token_image: np.ndarray, n_images: int) -> np.ndarray:
    """Mean over each image's positions of every feature (or of dense activations): ``(n_images, n_features)``."""
    from workbench.probes import pool

    values = features.values if hasattr(features, "values") and hasattr(features, "names") else features
    return np.asarray(pool(values, token_image, n_images, how="mean"), dtype=np.float64)


def pathology_association(
    pooled: np.ndarray, names: Sequence[str], label: np.ndarray, properties: pd.DataFrame, *, units: np.ndarray | None = None,
    concept: str = "pathology", alpha: float = 0.05,
) -> PooledAssociation:
    """Per feature: AUROC, enrichment and q-values for the pathology label, before and after controlling for the
    measured properties (see :func:`workbench.pooled.pooled_association`)."""
    import pandas as pd

    from workbench.pooled import pooled_association

    labels = pd.DataFrame({concept: pd.Series(label, dtype="boolean")})
    return pooled_association(pooled, labels, feature_names=list(names), covariates=properties.reset_index(drop=True),
                              alpha=alpha, units=units)


def pathology_features(pairs: pd.DataFrame, *, alpha: float = 0.05, n: int = 10, direction: int = 1) -> list[str]:
    """Features significantly associated with the label after confound control (``q_adjusted < alpha``) whose raw
    AUROC and partial correlation agree in sign (``direction`` 1 = higher in the pathology, -1 = lower), strongest
    partial correlation first."""
    sig = pairs[(pairs["q_adjusted"] < alpha) & (np.sign(pairs["partial_r"]) == direction)
                & (np.sign(pairs["auroc"] - 0.5) == direction)]
    order = sig["partial_r"].abs().sort_values(ascending=False, kind="stable").index
    return [str(f) for f in sig.loc[order, "feature"].head(n)]


def pathology_effects(
    adapter: VisionAdapter, sae: Any, records: Sequence[ImageRecord], pooled: np.ndarray, names: Sequence[str], *,
    layer: int, features: Sequence[str], positive: int, n_images: int = 16, seed: int = 0, batch_size: int = 64,
    groups: dict[str, Sequence[str]] | None = None, alpha: float = 0.05,
) -> pd.DataFrame:
    """Ablate features inside the model and report the change of the pathology logit, against a matched control.

    For each feature, the ``n_images`` images where its mean activation is largest ("firing") are run clean, with
    the feature's contribution removed at ``layer`` at every position (:func:`workbench.discovery.feature_edit`),
    and with the *same amount* removed along a seeded random direction of the same norm (the control: does any
    perturbation of that size move the logit, or this feature's direction?). Images where the feature is silent are
    not a control: ablating a silent feature changes nothing by construction. The pathology logit is the log-odds of
    class ``positive`` against the rest (log p - log(1 - p)). ``groups`` (name -> features) are ablated together, on
    the images where their summed mean activation is largest (for example every pathology feature at once, and as
    many random live features as a control).

    Reported per feature or group: ``dlogit_firing`` / ``dlogit_random``, the mean change (edited - clean) of the
    logit with the feature's and the random direction removed; their mean absolute values; ``flip_fraction`` /
    ``flip_fraction_random``, the share of images whose predicted class flips; ``p_vs_random``, a paired Wilcoxon
    signed-rank test of |change| feature vs control over the images; and ``beyond_control``: True when the feature's
    change is larger than the control's at ``p_vs_random < alpha``. A row that is not beyond its control is not
    evidence that the model uses the feature.
    """
    import pandas as pd
    import torch
    from scipy.stats import wilcoxon

    from workbench.discovery import feature_edit

    if len(records) != pooled.shape[0]:
        raise InputError(f"{len(records)} records for {pooled.shape[0]} pooled rows")
    index = {n: i for i, n in enumerate(names)}
    wanted = list(features) + [f for g in (groups or {}).values() for f in g]
    unknown = [f for f in wanted if f not in index]
    if unknown:
        raise InputError(f"no features {unknown[:3]}")
    adapter.prepare([layer])
    rng = np.random.default_rng(seed)
    w_dec = sae.W_dec.detach().float().cpu().numpy()

    def log_odds(logits: torch.Tensor) -> torch.Tensor:
        lp = torch.log_softmax(logits.float(), -1)
        pos = lp[:, positive]
        rest = torch.logsumexp(torch.cat([lp[:, :positive], lp[:, positive + 1 :]], 1), 1)
        return pos - rest

    def random_rows(feats: list[int]) -> torch.Tensor:
        """Seeded random directions with the norms of the features' decoder rows."""
        r = rng.standard_normal((len(feats), w_dec.shape[1]))
        r *= (np.linalg.norm(w_dec[feats], axis=1) / np.linalg.norm(r, axis=1))[:, None]
        return torch.as_tensor(r, dtype=torch.float32)

    def run(recs: list[ImageRecord], feats: list[int]) -> tuple[np.ndarray, ...]:
        """(delta, flip) with the features removed, then with the random control, per image."""
        if not recs:
            return np.zeros(0), np.zeros(0, bool), np.zeros(0), np.zeros(0, bool)
        control = random_rows(feats)
        out: list[list[np.ndarray]] = [[], [], [], []]
        for batch in adapter.batches(recs, tokens_per_batch=batch_size * adapter.n_kept(recs[0])):
            clean = adapter.run_with_edit(batch, layer, None)
            for k, directions in ((0, None), (2, control)):
                edit = feature_edit(sae, feats, mode="ablate", amount=0.0, state={}, directions=directions)
                edited = adapter.run_with_edit(batch, layer, edit)
                out[k].append((log_odds(edited) - log_odds(clean)).cpu().numpy())
                out[k + 1].append((edited.argmax(-1) != clean.argmax(-1)).cpu().numpy())
        return tuple(np.concatenate(o) for o in out)

    def mean(x: np.ndarray) -> float:
        return float(x.mean()) if len(x) else float("nan")

    def row(rank: int, name: str, kind: str, feats: list[int]) -> dict[str, Any]:
        col = pooled[:, feats].sum(1)
        firing = np.flatnonzero(col > 0)
        firing = firing[np.argsort(-col[firing], kind="stable")][:n_images]
        d_f, flip_f, d_r, flip_r = run([records[i] for i in firing], feats)
        diff = np.abs(d_f) - np.abs(d_r)
        p = float(wilcoxon(np.abs(d_f), np.abs(d_r), alternative="greater").pvalue) \
            if len(diff) >= 5 and np.any(diff != 0) else float("nan")
        return {"rank": rank, "feature": name, "kind": kind, "n_features": len(feats), "n_firing": len(firing),
                "mean_activation_firing": mean(col[firing]), "dlogit_firing": mean(d_f), "dlogit_random": mean(d_r),
                "abs_dlogit_firing": mean(np.abs(d_f)), "abs_dlogit_random": mean(np.abs(d_r)),
                "flip_fraction": mean(flip_f), "flip_fraction_random": mean(flip_r), "p_vs_random": p,
                "beyond_control": bool(p < alpha) if p == p else False}

    rows = [row(rank, name, "feature", [index[name]]) for rank, name in enumerate(features, start=1)]
    for rank, (name, feats) in enumerate((groups or {}).items(), start=len(rows) + 1):
        rows.append(row(rank, name, "group", [index[f] for f in feats]))
    return pd.DataFrame(rows, columns=CAUSAL_COLUMNS)


CAUSAL_COLUMNS = ["rank", "feature", "kind", "n_features", "n_firing", "mean_activation_firing", "dlogit_firing",
                  "dlogit_random", "abs_dlogit_firing", "abs_dlogit_random", "flip_fraction", "flip_fraction_random",
                  "p_vs_random", "beyond_control"]
"""The columns of :func:`pathology_effects` (the catalog's ``pathology_causal`` table)."""

DISAGREEMENT_KINDS = ("model wrong, features right", "model and features both wrong", "model right, features wrong",
                      "model pathology, features normal", "model normal, features pathology")
"""The kinds of :func:`disagreements`: the first three on labelled images, the last two on unlabelled ones."""


def disagreements(
    image_ids: Sequence[str], label: np.ndarray, p_model: np.ndarray, pooled: np.ndarray, names: Sequence[str], *,
    features: Sequence[str], fit: np.ndarray, splits: Sequence[str] | None = None, top: int | None = None,
) -> pd.DataFrame:
    """Images where the model's call, its pathology features' call and the label do not all agree.

    The features' call is a logistic regression of the label on the pooled activations of ``features`` (the
    pathology features, both directions; standardised), fitted on the images flagged in ``fit`` (train and
    validation; they are not reported) and read as ``p_features``. Each other image whose calls differ gets a kind:

    * ``model wrong, features right``: the model errs although its own pathology features read the image right
      (the error arises after or beside these features);
    * ``model and features both wrong``: the features read the image as the model does (a shared confound, a hard
      image or a label to check);
    * ``model right, features wrong``: the model is right on evidence the features do not carry;
    * ``model pathology, features normal`` / ``model normal, features pathology``: unlabelled images where the calls
      differ.

    Each kind is ranked by confidence (``|p_model - p_features|`` where the two differ, else how far both are from
    0.5); every image, or the first ``top`` per kind. Columns: ``rank, kind, image_id, split, label, p_model, p_features, model_correct,
    features_correct, features``.
    """
    import pandas as pd
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    cols = ["rank", "kind", "image_id", "split", "label", "p_model", "p_features", "model_correct", "features_correct"]
    lab = np.asarray(label, dtype=object)
    known, y = _known_labels(lab)
    fit = np.asarray(fit, dtype=bool) & known
    if not features or len(set(y[fit])) < 2:
        return pd.DataFrame(columns=cols + ["features"])
    index = {n: i for i, n in enumerate(names)}
    unknown = [f for f in features if f not in index]
    if unknown:
        raise InputError(f"no features {unknown[:3]}")
    x = pooled[:, [index[f] for f in features]]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x[fit], y[fit])
    p_feat = model.predict_proba(x)[:, 1]
    p = np.asarray(p_model, dtype=np.float64)
    m_call, f_call = p >= 0.5, p_feat >= 0.5
    report = ~fit
    masks = {
        DISAGREEMENT_KINDS[0]: report & known & (m_call != y) & (f_call == y),
        DISAGREEMENT_KINDS[1]: report & known & (m_call != y) & (f_call != y),
        DISAGREEMENT_KINDS[2]: report & known & (m_call == y) & (f_call != y),
        DISAGREEMENT_KINDS[3]: report & ~known & m_call & ~f_call,
        DISAGREEMENT_KINDS[4]: report & ~known & ~m_call & f_call,
    }
    frames = []
    for kind, mask in masks.items():
        idx = np.flatnonzero(mask)
        key = np.minimum(np.abs(p - 0.5), np.abs(p_feat - 0.5)) if kind == DISAGREEMENT_KINDS[1] else np.abs(p - p_feat)
        idx = idx[np.argsort(-key[idx], kind="stable")][:top]
        frames.append(pd.DataFrame({
            "kind": kind, "image_id": np.asarray(image_ids, dtype=object)[idx],
            "split": np.asarray(splits, dtype=object)[idx] if splits is not None else "",
            "label": lab[idx], "p_model": p[idx], "p_features": p_feat[idx],
            "model_correct": [bool(m_call[i] == y[i]) if known[i] else None for i in idx],
            "features_correct": [bool(f_call[i] == y[i]) if known[i] else None for i in idx],
        }))
    out = pd.concat([f for f in frames if len(f)], ignore_index=True) if any(len(f) for f in frames) \
        else pd.DataFrame(columns=cols[1:])
    out.insert(0, "rank", out.groupby("kind").cumcount() + 1 if len(out) else [])
    out["features"] = ",".join(features)
    return out[cols + ["features"]]


def _known_labels(label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which images have a label (None / NaN: none) and the labels as booleans (False where there is none)."""
    known = np.asarray([v is not None and v == v for v in label], dtype=bool)
    return known, np.asarray([bool(v) if k else False for v, k in zip(label, known)], dtype=bool)


def disagreement_counts(label: np.ndarray, p_model: np.ndarray, *, mask: np.ndarray | None = None) -> dict[str, int]:
    """How often the model's call is wrong on the labelled images under ``mask``: ``{"images", "model_wrong",
    "false_positive", "false_negative"}``."""
    known, y = _known_labels(np.asarray(label, dtype=object))
    if mask is not None:
        known = known & np.asarray(mask, dtype=bool)
    call = np.asarray(p_model, dtype=np.float64) >= 0.5
    return {"images": int(known.sum()), "model_wrong": int((known & (call != y)).sum()),
            "false_positive": int((known & call & ~y).sum()), "false_negative": int((known & ~call & y).sum())}


def frame_concentration(
    values: Any, cell: np.ndarray, grid: Sequence[int], names: Sequence[str], *, cells_share: float = REGION_CELLS,
) -> pd.DataFrame:
    """Where in the frame each feature's activation mass sits, summed over all images.

    ``values`` is the ``(n_tokens, n_features)`` activation matrix (sparse or dense) and ``cell`` every token's grid
    cell (row-major, 0-based) on a ``grid`` of ``(rows, cols)``. Per feature: ``region_share``, the share of its
    total mass on the ``cells_share`` fraction of cells (at least one) that hold the most of it (a feature spread
    evenly scores about ``cells_share``; one that always fires on the same few cells scores near 1);
    ``region_cells``, those cells as ``"r3c4"`` (0-based row, column); ``region``, where their mass-weighted centre
    lies in thirds of the frame (``"middle centre"``, ``"top left"``...). NaN / ``""`` for features that never fire.
    """
    import pandas as pd
    import scipy.sparse as sp

    rows, cols = (int(g) for g in grid)
    n_cells = rows * cols
    cell = np.asarray(cell, dtype=np.int64)
    if cell.size and (cell.min() < 0 or cell.max() >= n_cells):
        raise InputError(f"grid cells must lie in 0..{n_cells - 1}")
    onehot = sp.csr_matrix((np.ones(len(cell)), (cell, np.arange(len(cell)))), shape=(n_cells, len(cell)))
    mass = onehot @ (values if sp.issparse(values) else np.asarray(values))
    mass = np.asarray(mass.toarray() if sp.issparse(mass) else mass, dtype=np.float64)  # (n_cells, n_features)
    k = max(1, int(round(cells_share * n_cells)))
    top = np.argsort(-mass, axis=0, kind="stable")[:k]  # (k, n_features)
    total = mass.sum(0)
    held = np.take_along_axis(mass, top, 0).sum(0)
    share = np.where(total > 0, held / np.where(total > 0, total, 1.0), np.nan)
    thirds_r, thirds_c = ("top", "middle", "bottom"), ("left", "centre", "right")
    out_cells, out_region = [], []
    for j in range(mass.shape[1]):
        if total[j] <= 0:
            out_cells.append("")
            out_region.append("")
            continue
        cells = top[:, j]
        weight = mass[cells, j]
        r = float(np.average(cells // cols, weights=weight)) if weight.sum() > 0 else 0.0
        c = float(np.average(cells % cols, weights=weight)) if weight.sum() > 0 else 0.0
        out_cells.append(",".join(f"r{i // cols}c{i % cols}" for i in sorted(cells.tolist())))
        out_region.append(f"{thirds_r[min(2, int(3 * (r + 0.5) / rows))]} {thirds_c[min(2, int(3 * (c + 0.5) / cols))]}")
    return pd.DataFrame({"feature": list(names), "region_share": share, "region_cells": out_cells,
                         "region": out_region})
