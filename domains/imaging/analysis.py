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

__all__ = ["pooled_features", "pathology_association", "pathology_effects", "disagreements", "pathology_features"]


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
    groups: dict[str, Sequence[str]] | None = None,
) -> pd.DataFrame:
    """Ablate features inside the model and report the change of the pathology logit.

    For each feature, the ``n_images`` images where its mean activation is largest ("firing") and ``n_images``
    seeded images where it is zero ("other") are run clean and with the feature's contribution removed at ``layer``
    at every position (:func:`workbench.discovery.feature_edit`). The pathology logit is the log-odds of class
    ``positive`` against the rest (log p - log(1 - p)). ``groups`` (name -> features) are ablated together, on the
    images where their summed mean activation is largest (for example every pathology feature at once, and as many
    random features as a control). Reported per feature or group: mean change (edited - clean) on the firing and the
    other images, its mean absolute value on the firing images, the share of firing images whose predicted class
    flips, and the mean activation there.
    """
    import pandas as pd
    import torch

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

    def log_odds(logits: torch.Tensor) -> torch.Tensor:
        lp = torch.log_softmax(logits.float(), -1)
        pos = lp[:, positive]
        rest = torch.logsumexp(torch.cat([lp[:, :positive], lp[:, positive + 1 :]], 1), 1)
        return pos - rest

    def run(recs: list[ImageRecord], feats: list[int]) -> tuple[np.ndarray, np.ndarray]:
        if not recs:
            return np.zeros(0), np.zeros(0, bool)
        deltas, flips = [], []
        for batch in adapter.batches(recs, tokens_per_batch=batch_size * adapter.n_kept(recs[0])):
            edit = feature_edit(sae, feats, mode="ablate", amount=0.0, state={})
            clean = adapter.run_with_edit(batch, layer, None)
            edited = adapter.run_with_edit(batch, layer, edit)
            deltas.append((log_odds(edited) - log_odds(clean)).cpu().numpy())
            flips.append((edited.argmax(-1) != clean.argmax(-1)).cpu().numpy())
        return np.concatenate(deltas), np.concatenate(flips)

    def row(rank: int, name: str, kind: str, feats: list[int]) -> dict[str, Any]:
        col = pooled[:, feats].sum(1)
        firing = np.flatnonzero(col > 0)
        firing = firing[np.argsort(-col[firing], kind="stable")][:n_images]
        silent = np.flatnonzero(col == 0)
        other = np.sort(rng.choice(silent, min(n_images, len(silent)), replace=False)) if len(silent) else silent
        d_f, flip_f = run([records[i] for i in firing], feats)
        d_o, _ = run([records[i] for i in other], feats)

        def mean(x: np.ndarray) -> float:
            return float(x.mean()) if len(x) else float("nan")

        return {"rank": rank, "feature": name, "kind": kind, "n_features": len(feats), "n_firing": len(firing),
                "n_other": len(other), "mean_activation_firing": mean(col[firing]), "dlogit_firing": mean(d_f),
                "dlogit_other": mean(d_o), "abs_dlogit_firing": mean(np.abs(d_f)), "flip_fraction": mean(flip_f)}

    rows = [row(rank, name, "feature", [index[name]]) for rank, name in enumerate(features, start=1)]
    for rank, (name, feats) in enumerate((groups or {}).items(), start=len(rows) + 1):
        rows.append(row(rank, name, "group", [index[f] for f in feats]))
    return pd.DataFrame(rows, columns=["rank", "feature", "kind", "n_features", "n_firing", "n_other", "mean_activation_firing",
                                       "dlogit_firing", "dlogit_other", "abs_dlogit_firing", "flip_fraction"])


def disagreements(
    image_ids: Sequence[str], label: np.ndarray, p_model: np.ndarray, pooled: np.ndarray, names: Sequence[str], *,
    features: Sequence[str], splits: Sequence[str] | None = None, high: float = 0.9, low: float = 0.1, top: int = 50,
) -> pd.DataFrame:
    """Images where the model's call and its pathology features disagree.

    The pathology score of an image is the mean, over ``features`` (pathology features, higher in the pathology),
    of the image's percentile rank of the feature's pooled activation. ``model normal, features high``: the model
    gives the pathology a probability under 0.5 while the score is at or above the ``high`` quantile of all images;
    ``model pathology, features silent``: probability 0.5 or more with the score at or below the ``low`` quantile.
    Each kind is ranked by how far the score is from the model's call; ``label`` says who was right.
    """
    import pandas as pd
    from scipy.stats import rankdata

    cols = [f"{c}" for c in ("rank", "kind", "image_id", "split", "label", "p_model", "score", "model_correct")]
    if not features:
        return pd.DataFrame(columns=cols + ["features"])
    index = {n: i for i, n in enumerate(names)}
    cols_idx = [index[f] for f in features]
    pct = rankdata(pooled[:, cols_idx], axis=0) / len(pooled)
    score = pct.mean(1)
    hi_cut, lo_cut = np.quantile(score, high), np.quantile(score, low)
    p = np.asarray(p_model, dtype=np.float64)
    lab = np.asarray(label, dtype=object)
    frames = []
    for kind, mask, key in (("model normal, features high", (p < 0.5) & (score >= hi_cut), score - p),
                            ("model pathology, features silent", (p >= 0.5) & (score <= lo_cut), p - score)):
        idx = np.flatnonzero(mask)
        idx = idx[np.argsort(-key[idx], kind="stable")][:top]
        frames.append(pd.DataFrame({
            "kind": kind, "image_id": np.asarray(image_ids, dtype=object)[idx],
            "split": np.asarray(splits, dtype=object)[idx] if splits is not None else "",
            "label": lab[idx], "p_model": p[idx], "score": score[idx],
            "model_correct": [bool(lb) == (pm >= 0.5) if lb is not None and lb == lb else None for lb, pm in zip(lab[idx], p[idx])],
        }))
    out = pd.concat(frames, ignore_index=True)
    out.insert(0, "rank", out.groupby("kind").cumcount() + 1)
    out["features"] = ",".join(features)
    return out[cols + ["features"]]
