"""The imaging annotation stage: an image store + SAE -> an annotated catalog with pixels and pathology analyses.

:func:`annotate_images` wraps the shared :func:`workbench.annotate` (token-level association with controls, probes,
discovery, descriptions, families, the catalog) and adds what images need: the pathology label per image with
confound control for SAE features, the layer's channels and the random-weight control (:mod:`workbench.pooled`);
the best single feature's held-out AUROC beside the model's own; the causal check on the pathology logit; images
where the model and its pathology features disagree; and the pixels, so heatmaps can be drawn from the catalog.
``workbench annotate`` calls it for stores extracted by the vision adapter.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from workbench.catalog import Catalog
    from workbench.store import ActivationStore

    from .adapter import VisionAdapter
    from .readers import ImageRecord

__all__ = ["ImageAnnotateConfig", "annotate_images", "annotate_cli"]


@dataclass
class ImageAnnotateConfig:
    """Options of :func:`annotate_images` (saved in the catalog's summary)."""

    positive: str | None = None
    """Name of the pathology class (default: the model card's ``positive_class``)."""
    n_causal: int = 12
    """Pathology features ablated one at a time in the causal check (0 skips it)."""
    group_size: int = 16
    """The strongest pathology features (higher in the pathology) also ablated together, beside as many random live
    features as a control (0: no group ablation)."""
    alpha: float = 0.05
    """q-value threshold for "significant"."""
    n_permutations: int = 20
    """Label permutations of the token-level association's null."""
    seed: int = 0
    """Seed of the analyses."""
    layer_name: str | None = None
    """Name of the analysed layer, for display (default: the adapter's name for it)."""
    sources: Sequence[str] = ("dataset", "measured")
    """Concept sources: the data set's labels and the measured properties (see :mod:`domains.imaging.sources`)."""


def _log(progress: bool, message: str) -> None:
    if progress:
        print(f"[annotate images] {message}", flush=True)


def _pixels(records: Sequence[ImageRecord]) -> np.ndarray:
    """Every image as one flat uint8 row (16-bit and float images scaled to 0-255); all images must share a shape."""
    shapes = {np.asarray(r.image).shape for r in records}
    if len(shapes) != 1:
        raise InputError(f"images of different shapes {sorted(shapes)[:3]} cannot be kept in one catalog")
    stack = np.stack([np.asarray(r.image) for r in records])
    if stack.dtype != np.uint8:
        scale = 65535.0 if stack.dtype == np.uint16 else 1.0
        stack = np.clip(np.rint(stack.astype(np.float64) / scale * 255), 0, 255).astype(np.uint8)
    return stack.reshape(len(records), -1)


def _median(values: Any) -> float | None:
    return round(float(np.median(values)), 4) if len(values) else None


def annotate_images(
    store: ActivationStore | str | Path,
    sae: Any,
    *,
    out: str | Path,
    control_store: ActivationStore | str | Path | None = None,
    control_sae: Any | None = None,
    adapter: VisionAdapter | None = None,
    records: Sequence[ImageRecord] | None = None,
    config: ImageAnnotateConfig | None = None,
    summary_extra: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Catalog:
    """Annotate an image store's SAE features and write the catalog to ``out`` (nothing is written on failure).

    ``sae`` is the SAE folder (or object) trained on ``store``; ``control_store`` / ``control_sae`` the random-weight
    control; ``adapter`` the model (loaded from the store's manifest when omitted); ``records`` the images (read
    again from the files the store names when omitted).
    """
    import pandas as pd

    import workbench
    from workbench._pipeline import AnnotateConfig
    from workbench.associate import feature_matrix
    from workbench.pooled import auroc
    from workbench.sae import load_sae
    from workbench.store import ActivationStore, open_store

    from .analysis import (
        DISAGREEMENT_KINDS, REGION_CELLS, SHORTCUT_SHARE, disagreement_counts, disagreements, frame_concentration,
        pathology_association, pathology_effects, pathology_features, pooled_features,
    )
    from .annotations import PROPERTY_COLUMNS, image_labels
    from .sources import SPECS, select_sources, store_records

    cfg = config or ImageAnnotateConfig()
    store = store if isinstance(store, ActivationStore) else open_store(store)
    if len(store.layers) != 1:
        raise InputError(f"{store.path} holds layers {store.layers}; an image store for annotation holds one")
    layer = store.layers[0]
    if (control_store is None) != (control_sae is None):
        raise InputError("the random-weight control needs both control_store and control_sae")
    if adapter is None:
        adapter = workbench.load_adapter(str(store.manifest.get("model_source", store.model)))
    if not hasattr(adapter, "positive_class"):
        raise InputError(f"{store.path} was not extracted by an image model (adapter {store.manifest.get('adapter')!r})")
    if adapter.weights_hash() != store.manifest.get("weights_sha256"):
        raise InputError(f"the model {adapter.name!r} is not the one {store.path} was extracted with (weights differ)")
    adapter.prepare([layer])
    ids = store.sequences["sequence_id"].astype(str).tolist()
    records = list(records) if records is not None else store_records(store)
    by_id = {r.id: r for r in records}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise InputError(f"{len(missing)} store images have no record, e.g. {missing[:3]}")
    ordered = [by_id[i] for i in ids]
    positive_name = cfg.positive or adapter.card.options.get("positive_class")
    positive = adapter.classes.index(positive_name) if positive_name in adapter.classes else None
    if positive is None:
        raise InputError(f"say which class is the pathology: {positive_name!r} is not one of the model's classes {adapter.classes}")

    def label_name(rec: ImageRecord) -> str | None:
        name = rec.meta.get("label_name")
        code = rec.meta.get("label")
        if (name is None or name != name) and code is not None and code == code and 0 <= int(code) < len(adapter.classes):
            name = adapter.classes[int(code)]
        return None if name is None or name != name else str(name)

    names = [label_name(r) for r in ordered]
    if not any(n == positive_name for n in names) or all(n == positive_name for n in names if n is not None):
        raise InputError(f"the images need both {positive_name!r} and other labels for the pathology analysis")
    is_pos = np.asarray([n == positive_name if n is not None else False for n in names])
    labelled = np.asarray([n is not None for n in names])
    split = np.asarray([str(r.meta.get("split")) for r in ordered], dtype=object)
    held = (split == "test") & labelled
    eval_set = held if held.any() else labelled
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    def timed(name: str, fn: Any) -> Any:
        t = time.perf_counter()
        _log(progress, f"{name} ...")
        result = fn()
        timings[name] = round(time.perf_counter() - t, 1)
        return result

    labels, props = timed("labels", lambda: image_labels(store, ordered))
    unknown = [x for x in cfg.sources if x not in SPECS]
    if unknown:
        raise InputError(f"unknown imaging annotation source(s) {unknown}; use {', '.join(SPECS)}")
    labels = select_sources(labels, cfg.sources)
    sae_obj = load_sae(sae) if isinstance(sae, (str, Path)) else sae
    control_obj = None
    if control_store is not None:
        control_store = control_store if isinstance(control_store, ActivationStore) else open_store(control_store)
        control_obj = load_sae(control_sae) if isinstance(control_sae, (str, Path)) else control_sae
    token_image = store.token_sequence()
    label_col = pd.Series(np.where(labelled, is_pos, None), dtype="boolean")
    units = labelled

    def image_level() -> dict[str, Any]:
        feats = feature_matrix(store, sae_obj, layer=layer)
        pooled = pooled_features(feats, token_image, len(ids))
        neurons = pooled_features(store.activations(layer), token_image, len(ids))
        res = {"sae": pathology_association(pooled, feats.names, label_col, props, alpha=cfg.alpha, units=units),
               "neurons": pathology_association(neurons, [f"u{j:04d}" for j in range(neurons.shape[1])], label_col, props,
                                                alpha=cfg.alpha, units=units)}
        if control_obj is not None:
            random_pooled = pooled_features(feature_matrix(control_store, control_obj, layer=layer), token_image, len(ids))
            res["random_sae"] = pathology_association(random_pooled, feats.names, label_col, props, alpha=cfg.alpha, units=units)
        # the best single unit of each representation: chosen on the images outside the evaluation set, scored on it
        choose = labelled & ~eval_set if (labelled & ~eval_set).any() else labelled
        reps = {"sae": (pooled, feats.names), "neurons": (neurons, [f"u{j:04d}" for j in range(neurons.shape[1])])}
        if control_obj is not None:
            reps["random_sae"] = (random_pooled, feats.names)
        best_units = {}
        for name, (values, unit_names) in reps.items():
            a = auroc(values[choose], is_pos[choose])
            j = int(np.nanargmax(np.abs(a - 0.5)))
            sign = 1.0 if a[j] >= 0.5 else -1.0
            best_units[name] = {"unit": unit_names[j], "direction": "higher" if sign > 0 else "lower",
                                "selection_auroc": round(float(a[j]), 4),
                                "test_auroc": round(float(auroc(sign * values[eval_set][:, [j]], is_pos[eval_set])[0]), 4)}
        obs = store.obs()
        region = frame_concentration(feats.values, obs["y"].to_numpy() * int(adapter.grid[1]) + obs["x"].to_numpy(),
                                     adapter.grid, feats.names)
        return {"assoc": res, "pooled": pooled, "names": feats.names, "best_units": best_units, "region": region}

    il = timed("image-level pathology association (SAE, neurons, random control)", image_level)
    p_model = timed("model predictions", lambda: adapter.predict(ordered)[:, positive].numpy().astype(np.float64))
    model_auc = float(auroc(p_model[eval_set][:, None], is_pos[eval_set])[0])
    model_acc = float(((p_model[eval_set] >= 0.5) == is_pos[eval_set]).mean())
    pairs = il["assoc"]["sae"].pairs.merge(il["region"], on="feature", how="left")
    higher, lower = (pathology_features(pairs, alpha=cfg.alpha, n=len(pairs), direction=d) for d in (1, -1))
    up, down = higher[: max(cfg.n_causal, cfg.group_size)], lower[: max(cfg.n_causal // 3, 1)]
    every = higher + lower
    share = pairs.set_index("feature")["region_share"]
    fixed = [f for f in every if float(share.get(f, np.nan)) >= SHORTCUT_SHARE]  # possible shortcuts, listed
    causal_feats = (up[: cfg.n_causal - min(len(down), cfg.n_causal // 3)] + down)[: cfg.n_causal] if cfg.n_causal > 0 else []
    groups: dict[str, list[str]] = {}
    if cfg.n_causal > 0 and cfg.group_size > 0 and up:
        group = up[: cfg.group_size]
        live = [f for f, d in zip(il["names"], (il["pooled"] > 0).any(0)) if d]
        rng = np.random.default_rng(cfg.seed)
        groups[f"{len(group)} strongest pathology features together"] = group
        groups[f"{len(group)} random live features together (control)"] = [
            str(f) for f in rng.choice(live, min(len(group), len(live)), replace=False)]
    causal = timed("causal check on the pathology logit", lambda: pathology_effects(
        adapter, sae_obj, ordered, il["pooled"], il["names"], layer=layer, features=causal_feats, positive=positive,
        seed=cfg.seed, groups=groups))
    # the features' own call is fitted on the images outside the evaluation set (a seeded half when there is none)
    fit = labelled & ~eval_set
    if not fit.any():
        fit = labelled & (np.random.default_rng(cfg.seed).random(len(ids)) < 0.5)
    disagree = disagreements(ids, np.where(labelled, is_pos, None), p_model, il["pooled"], il["names"],
                             features=up[:5] + down[:5], fit=fit, splits=list(split))
    kinds = disagree["kind"].astype(str).value_counts() if len(disagree) else pd.Series(dtype=int)
    single = causal[causal["kind"] == "feature"]
    images = pd.DataFrame({"image_id": ids, "split": split, "label": names, "pathology": label_col, "p_model": p_model})
    images = pd.concat([images, props.reset_index(drop=True)[PROPERTY_COLUMNS]], axis=1)
    per_rep = {name: res.best.iloc[0] if len(res.best) else None for name, res in il["assoc"].items()}

    def field(key: str, cast: Any) -> dict[str, Any]:
        return {name: (cast(row[key]) if row is not None else None) for name, row in per_rep.items()}

    summary = {
        "domain": "imaging",
        "pathology": positive_name,
        "model_eval_split": "test" if held.any() else "all labelled images",
        "model_test_auroc": round(model_auc, 4),
        "model_test_accuracy": round(model_acc, 4),
        "model_test_errors": disagreement_counts(np.where(labelled, is_pos, None), p_model, mask=eval_set),
        "disagreements": {k: int(kinds.get(k, 0)) for k in DISAGREEMENT_KINDS},
        "pathology_significant_adjusted": field("n_significant_adjusted", int),
        "pathology_significant_unadjusted": field("n_significant", int),
        "pathology_features_tested": field("n_features", int),
        "pathology_best_auroc_all_images": field("best_auroc", lambda v: round(float(v), 4)),
        "pathology_strong_adjusted": field("n_strong_adjusted", int),
        "best_feature": il["best_units"]["sae"]["unit"],
        "best_feature_direction": il["best_units"]["sae"]["direction"],
        "best_feature_test_auroc": il["best_units"]["sae"]["test_auroc"],
        "best_unit_test_auroc": {name: b["test_auroc"] for name, b in il["best_units"].items()},
        "best_units": il["best_units"],
        "pathology_fixed_region": {"threshold": SHORTCUT_SHARE, "cells_share": REGION_CELLS, "features": fixed,
                                   "of": len(every)},
        "causal_median_abs_dlogit_firing": _median(single["abs_dlogit_firing"]),
        "causal_median_abs_dlogit_random": _median(single["abs_dlogit_random"]),
        "causal_beyond_control": int(single["beyond_control"].sum()),
        "causal_features": [str(f) for f in causal_feats],
        "causal_groups": {r.feature: {"dlogit_firing": round(float(r.dlogit_firing), 4), "flip_fraction": round(float(r.flip_fraction), 4),
                                      "dlogit_random": round(float(r.dlogit_random), 4),
                                      "beyond_control": bool(r.beyond_control), "n_images": int(r.n_firing)} for r in causal[causal["kind"] == "group"].itertuples()},
        "image_annotate_config": {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in asdict(cfg).items()},
        "image_annotate_seconds": timings,
        **dict(summary_extra or {}),
    }
    tables = {
        "pooled_association": pairs,
        "pooled_association_neurons": il["assoc"]["neurons"].pairs,
        "pooled_best": pd.concat([res.best.assign(representation=name) for name, res in il["assoc"].items()], ignore_index=True),
        "pathology_causal": causal,
        "disagreements": disagree,
        "images": images,
    }
    if "random_sae" in il["assoc"]:
        tables["pooled_association_random"] = il["assoc"]["random_sae"].pairs
    layer_name = cfg.layer_name or adapter.layer_names().get(layer, str(layer))
    catalog = workbench.annotate(
        store, sae, labels, layer=layer, out=out, control_store=control_store, control_sae=control_obj, adapter=adapter,
        extra_tables=tables, summary_extra=summary, obsm_extra={"image": _pixels(ordered)},
        uns_extra={"images": {"shape": list(np.asarray(ordered[0].image).shape), "grid": list(adapter.grid),
                              "dataset": str(ids[0]).split(":", 1)[0] if ":" in str(ids[0]) else "", "classes": adapter.classes,
                              "positive_class": positive_name, "layer_name": layer_name}},
        config=AnnotateConfig(n_causal=0, n_permutations=cfg.n_permutations, complete_sources=("measured",), position_group=None,
                              rediscovery_groups=(), profile_groups=("frame_row", "frame_col"),
                              strata_groups=("frame_row", "frame_col"), strata_columns=(), strata_sequence_groups=(),
                              token_probe_groups=("frame_row", "frame_col", "patch_intensity"),
                              sequence_probe_groups=("label", "intensity", "contrast", "edges"), seed=cfg.seed),
        overwrite=overwrite, progress=progress,
    )
    _log(progress, f"done in {time.perf_counter() - t0:.0f} s")
    return catalog


def annotate_cli(store: ActivationStore, sae: str, *, out: str, specs: Sequence[str], control_store: str | None,
                 control_sae: str | None, n_permutations: int, n_causal: int, overwrite: bool, progress: bool) -> Catalog:
    """What ``workbench annotate`` runs for an image store (entry point ``workbench.annotators``: ``imaging``)."""
    cfg = ImageAnnotateConfig(n_causal=n_causal, n_permutations=n_permutations, sources=tuple(specs) or ("dataset", "measured"))
    return annotate_images(store, sae, out=out, control_store=control_store, control_sae=control_sae, config=cfg,
                           overwrite=overwrite, progress=progress)
