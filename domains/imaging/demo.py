"""The imaging demo on the bundled real data: the project's MedResNet -> store -> SAE -> concepts -> catalog.

For each data set (PneumoniaMNIST, BreastMNIST):

1. the shipped CNN (``models/medcnn_<dataset>.safetensors``; trained with :func:`domains.imaging.train.train_cnn`
   first only when the weights are missing);
2. ``layer3`` (a 7x7 grid of 128 channels) on every image of every split, one store row per position, and the same
   through a random-weight copy of the network (the control);
3. a TopK SAE on each store, with the same settings;
4. concepts: the pathology label, regions of the frame and measured image properties (:mod:`.annotations`);
5. :func:`workbench.annotate` (token-level association with neuron and random controls, probes, discovery,
   descriptions, families, catalog) plus the image-level analyses (:mod:`.analysis`): pathology association per
   image with confound control for SAE features, neurons and the control; the best single feature's held-out AUROC
   beside the model's; the causal check on the pathology logit; images where the model and its pathology features
   disagree. The catalog keeps the pixels, so the app draws heatmaps.

Every stage is reused when its output exists (stores and SAE training also resume after a kill).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


__all__ = ["run", "ImagingDemoConfig", "run_dataset"]


@dataclass
class ImagingDemoConfig:
    """Settings of the imaging demo (the defaults fit the 10-minute budget on 2 CPU cores)."""

    datasets: tuple[str, ...] = ("pneumoniamnist", "breastmnist")
    """Bundled MedMNIST data sets, each with its shipped ``medcnn-<dataset>`` model."""
    model: str | None = None
    """Another model (card name or card file) instead of ``medcnn-<dataset>`` (tests use a tiny one)."""
    layer: str = "layer3"
    """Layer analysed, by name (``stem``, ``layer1``, ``layer2``, ``layer3``)."""
    width: int = 1024
    """SAE latents (8 x the layer's 128 channels)."""
    k: int = 16
    """Active latents per position (TopK)."""
    n_tokens: int = 600_000
    """SAE training rows (about 4 passes over the PneumoniaMNIST store)."""
    random_seed: int = 1
    """Seed of the random-weight control network."""
    seed: int = 0
    """Seed of SAE training and of the analyses."""
    limit: int | None = None
    """Use only N images of each split, half of each class where there are enough (quick end-to-end tests)."""
    n_causal: int = 12
    """Pathology features whose causal effect on the pathology logit is measured."""
    train_epochs: int | None = None
    """Epochs when the CNN must be trained because its weights are missing (None: the training script's default)."""
    alpha: float = 0.05
    """q-value threshold for "significant"."""


def _log(message: str) -> None:
    print(f"[imaging demo] {message}", flush=True)


def _ensure_weights(dataset: str, cfg: ImagingDemoConfig, progress: bool) -> None:
    from workbench.registry import get_card

    from .adapter import card_weights_path

    path = card_weights_path(get_card(f"medcnn-{dataset}"))
    if path.is_file():
        return
    from .readers import bundled
    from .train import CNNTrainConfig, DEFAULT_CONFIGS, train_cnn

    config = DEFAULT_CONFIGS.get(dataset, CNNTrainConfig())
    if cfg.train_epochs is not None:
        import dataclasses

        config = dataclasses.replace(config, epochs=cfg.train_epochs)
    _log(f"{path.name} is missing: training the CNN on bundled {dataset} ({config.epochs} epochs)")
    train_cnn(bundled(dataset), out=path, config=config, progress=progress)


def _store(adapter: Any, records: list[Any], path: Path, layer: str, progress: bool, random_weights: int | None = None) -> Any:
    import workbench
    from workbench.demo_support import store_once

    what = f" (random weights, seed {random_weights})" if random_weights is not None else ""
    return store_once(path, lambda: workbench.extract(
        adapter, records, layers=[layer], out=path, progress=progress, random_weights=random_weights, tokens_per_batch=256 * 49,
    ), _log, f"{path.name}: {adapter.name}{what} {layer} on {len(records)} images")


def _sae(store: Any, out: Path, layer: int, cfg: ImagingDemoConfig, progress: bool) -> Path:
    from workbench.demo_support import topk_sae_once

    return topk_sae_once(store, out, layer=layer, width=cfg.width, k=cfg.k, n_tokens=cfg.n_tokens, seed=cfg.seed,
                         progress=progress, log=_log, unit="rows")


def _subsample(records: list[Any], limit: int | None) -> list[Any]:
    """The first ``limit`` images of each split, taking labels in turn (so both classes are there), in file order."""
    if limit is None:
        return records
    from collections import defaultdict

    groups: dict[tuple[str, Any], list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        groups[(str(r.meta.get("split")), r.meta.get("label"))].append(i)
    chosen: list[int] = []
    for split in dict.fromkeys(str(r.meta.get("split")) for r in records):
        queues = [list(v) for (s, _), v in sorted(groups.items(), key=lambda kv: str(kv[0][1])) if s == split]
        taken = 0
        while taken < limit and any(queues):
            for q in queues:
                if q and taken < limit:
                    chosen.append(q.pop(0))
                    taken += 1
    return [records[i] for i in sorted(chosen)]


def run_dataset(out: Path, dataset: str, cfg: ImagingDemoConfig, *, progress: bool = True) -> Any:
    """The demo for one data set into ``out / dataset``; returns the catalog."""
    import workbench
    from workbench.catalog import Catalog
    from workbench.demo_support import Stages
    from workbench.errors import WorkbenchError

    from .pipeline import ImageAnnotateConfig, annotate_images
    from .readers import bundled, read_medmnist

    t0 = time.perf_counter()
    root = out / dataset
    root.mkdir(parents=True, exist_ok=True)
    catalog_dir = root / "catalog"
    try:
        catalog = Catalog.open(catalog_dir)
        _log(f"reusing {catalog_dir}")
        return catalog
    except WorkbenchError:
        pass
    stage = Stages()
    seconds = stage.seconds

    if cfg.model is None:
        stage("weights", lambda: _ensure_weights(dataset, cfg, progress))
    adapter = workbench.load_adapter(cfg.model or f"medcnn-{dataset}")
    layer = adapter.layer_number(cfg.layer)
    records = _subsample(read_medmnist(bundled(dataset)), cfg.limit)
    tag = f"{dataset}_{cfg.layer}"
    store = stage("extract", lambda: _store(adapter, records, root / f"store_{tag}", cfg.layer, progress))
    control = stage("extract (random weights)", lambda: _store(
        adapter, records, root / f"store_{tag}_random{cfg.random_seed}", cfg.layer, progress, random_weights=cfg.random_seed))
    sae_dir = stage("train SAE", lambda: _sae(store, root / f"sae_{tag}_topk{cfg.k}", layer, cfg, progress))
    control_dir = stage("train SAE (random weights)", lambda: _sae(
        control, root / f"sae_{tag}_random{cfg.random_seed}_topk{cfg.k}", layer, cfg, progress))

    catalog = annotate_images(
        store, sae_dir, out=catalog_dir, control_store=control, control_sae=control_dir, adapter=adapter, records=records,
        config=ImageAnnotateConfig(n_causal=cfg.n_causal, alpha=cfg.alpha, seed=cfg.seed, layer_name=cfg.layer),
        summary_extra={"demo": f"imaging: {adapter.name} on {dataset}", "demo_seconds": seconds}, progress=progress,
    )
    _log(f"{dataset} done in {time.perf_counter() - t0:.0f} s")
    return catalog


def run(out: str | Path, *, progress: bool = True, config: ImagingDemoConfig | None = None) -> Any:
    """Run the imaging demo into ``out / "imaging"``; print each catalog's summary; return the first catalog."""
    cfg = config or ImagingDemoConfig()
    base = Path(out) / "imaging"
    t0 = time.perf_counter()
    catalogs = [run_dataset(base, ds, cfg, progress=progress) for ds in cfg.datasets]
    for ds, cat in zip(cfg.datasets, catalogs):
        _print_summary(cat, base / ds / "catalog")
    print(f"imaging demo done in {time.perf_counter() - t0:.0f} s; open a catalog with "
          f"workbench app {base / cfg.datasets[0] / 'catalog'}", flush=True)
    return catalogs[0]


def _print_summary(catalog: Any, path: Path) -> None:
    from workbench.demo_support import fmt

    s = catalog.summary
    sig, strong = s.get("pathology_significant_adjusted", {}), s.get("pathology_strong_adjusted", {})
    tested, best = s.get("pathology_features_tested", {}), s.get("best_unit_test_auroc", {})
    reps = (("SAE", "sae"), ("neurons", "neurons"), ("random-weight control", "random_sae"))
    lines = [
        f"catalog: {path}  ({s.get('n_features')} features, {s.get('n_sequences')} images, {s.get('n_tokens')} positions)",
        f"model test AUROC {s.get('model_test_auroc')}, accuracy {s.get('model_test_accuracy')} ({s.get('pathology')} vs rest)",
        f"SAE fidelity: FVE {fmt(s.get('fve'))}, L0 {fmt(s.get('l0'), 1)}, dead {fmt(s.get('dead_fraction'))}, "
        f"classifier loss recovered {fmt(s.get('loss_recovered'))}",
        f"significant for {s.get('pathology')} after confound control (q < 0.05; strong = also |AUROC - 0.5| >= 0.3): "
        + ", ".join(f"{label} {sig.get(key)}/{tested.get(key)} (strong {strong.get(key)})" for label, key in reps if key in tested),
        "best single unit, held-out test AUROC: " + ", ".join(f"{label} {best.get(key)}" for label, key in reps if key in best)
        + f" (the model: {s.get('model_test_auroc')})",
    ]
    for name, g in (s.get("causal_groups") or {}).items():
        control = (f"; the same amount along random directions {g['dlogit_random']:+.2f}: "
                   + ("beyond the control" if g.get("beyond_control") else "NOT beyond the control (no evidence of use)")
                   if "dlogit_random" in g else "")
        lines.append(f"causal: ablating {name}: {s.get('pathology')} logit change {g['dlogit_firing']:+.2f}, "
                     f"calls flipped {100 * g['flip_fraction']:.0f}% of {g['n_images']} images{control}")
    if "causal_beyond_control" in s:
        lines.append(f"causal, single features: {s['causal_beyond_control']} of {len(s.get('causal_features', [])) or '?'} move "
                     "the logit more than a random direction of the same size (paired Wilcoxon, p < 0.05)")
    errors, kinds = s.get("model_test_errors") or {}, s.get("disagreements") or {}
    if errors:
        lines.append(f"model errors on the {errors.get('images')} test images: {errors.get('model_wrong')} "
                     f"({errors.get('false_positive')} called {s.get('pathology')} wrongly, {errors.get('false_negative')} missed); "
                     + ", ".join(f"{k}: {v}" for k, v in kinds.items() if v))
    fixed = s.get("pathology_fixed_region") or {}
    if fixed.get("features"):
        lines.append(f"possible shortcuts: {len(fixed['features'])} of {fixed.get('of')} pathology features hold >= "
                     f"{100 * fixed['threshold']:.0f}% of their activation on the same {100 * fixed.get('cells_share', 0.05):.0f}% of "
                     "the frame "
                     f"({', '.join(fixed['features'][:5])}{' ...' if len(fixed['features']) > 5 else ''})")
    print("\n".join(lines), flush=True)
