"""The imaging demo end to end, timed from nothing, and the pathology figures of its catalogs.

Run on demand (not a test):

    .venv/bin/python benchmarks/bench_imaging_demo.py [--out benchmarks/out/imaging_demo] [--reuse] [--no-write]

Deletes ``--out`` (unless ``--reuse``), runs ``workbench demo --domain imaging --out DIR`` in a fresh process and
times it (target: 10 minutes on a 2-core CPU; the shipped CNN weights are used, not retrained), then reads each data
set's catalog and appends a dated section to ``benchmarks/RESULTS.md``:

* the model's own test AUROC / accuracy (the shipped CNN, on the bundled test split);
* features significantly associated with the pathology label (q < 0.05) before and after controlling for the
  measured confounds (mean intensity, contrast, edge density, centre of mass), for SAE features, the model's neurons
  (channels) and an SAE on the random-weight copy of the network, as counts and as shares of what was tested;
* the best single SAE feature (chosen on train + val images) and its held-out test AUROC beside the model's;
* the causal check (ablating pathology features: change of the pathology logit where they fire vs elsewhere);
* SAE fidelity, token-level concepts captured, the stage timings;
* after the timed demo, the same analysis on ``layer2`` (14x14 grid, 64 channels; an SAE of 512 features), for the
  comparison of SAE features and channels at a layer that does not feed the classifier directly.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _fmt(x: object, digits: int = 3) -> str:
    try:
        v = float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if v != v else f"{v:.{digits}f}"


def extra_layer(out: Path, layer: str, datasets: list[str]) -> Path:
    """The same analysis on another layer of the shipped CNNs (SAE of 8x the layer's channels), into ``out / layer``
    (reused when there); not part of the timed demo."""
    import workbench
    from domains.imaging.demo import ImagingDemoConfig, run_dataset

    channels = workbench.load_adapter(f"medcnn-{datasets[0]}").layer_shapes([layer])
    width = 8 * int(next(iter(channels.values()))[0])
    for ds in datasets:
        run_dataset(out / layer, ds, ImagingDemoConfig(layer=layer, width=width, k=16, n_tokens=1_200_000), progress=False)
    return out / layer


def report(runs: list[tuple[str, Path]], datasets: list[str], wall: float | None) -> str:
    """``runs``: (layer, folder holding ``<dataset>/catalog``), the demo's first; details are given for the first."""
    import pandas as pd

    from _machine import cpu_model
    from workbench.catalog import Catalog

    lines = [f"## {dt.date.today().isoformat()} — bench_imaging_demo (`workbench demo --domain imaging`)", ""]
    lines.append(f"Machine: {cpu_model()}, {os.cpu_count()} cores, CPU only.")
    lines.append("")
    if wall is not None:
        verdict = "met" if wall <= 600 else "NOT met"
        lines.append(f"**End to end from an empty folder (both data sets): {wall:.0f} s** (target 600 s: {verdict}).")
        lines.append("")
    lines += ["| data set | layer | images / positions | model test AUROC / acc | significant before control (SAE / neurons / random) "
              "| **significant after control** (SAE / neurons / random) | strong after control (SAE / neurons / random) | best "
              "single unit, held-out test AUROC (SAE / neuron / random) |", "|---|---|---|---|---|---|---|---|"]
    details = []
    for (layer, base), ds in ((run, ds) for ds in datasets for run in runs):
        cat = Catalog.open(base / ds / "catalog")
        s = cat.summary
        raw, adj, strong, tested = (s.get(k, {}) for k in (
            "pathology_significant_unadjusted", "pathology_significant_adjusted", "pathology_strong_adjusted",
            "pathology_features_tested"))

        def frac(d: dict, key: str) -> str:
            n, t = d.get(key), tested.get(key)
            return f"{n}/{t} ({100 * n / t:.0f}%)" if n is not None and t else "n/a"

        def three(d: dict) -> str:
            return " / ".join(frac(d, k) for k in ("sae", "neurons", "random_sae"))

        best = s.get("best_unit_test_auroc", {})
        lines.append(
            f"| {ds} | {layer} ({s['n_features']} SAE features) | {s['n_sequences']} / {s['n_tokens']} | {_fmt(s.get('model_test_auroc'))} / {_fmt(s.get('model_test_accuracy'))} | "
            f"{three(raw)} | **{three(adj)}** | {three(strong)} | "
            + " / ".join(_fmt(best.get(k)) for k in ("sae", "neurons", "random_sae")) + " |")
        if layer != runs[0][0]:
            continue
        causal = cat.table("pathology_causal") if "pathology_causal" in cat.tables else pd.DataFrame()
        single = causal[causal["kind"] == "feature"] if len(causal) else causal
        secs = {**s.get("demo_seconds", {}), **s.get("image_annotate_seconds", {}), **s.get("annotate_seconds", {})}
        groups = "; ".join(f"{name}: logit change {g['dlogit_firing']:+.2f} on their top {g['n_images']} images, calls flipped "
                           f"{100 * g['flip_fraction']:.0f}%" for name, g in (s.get("causal_groups") or {}).items())
        details.append(
            f"- {ds}: SAE (TopK) FVE {_fmt(s.get('fve'))}, L0 {_fmt(s.get('l0'), 1)}, dead {_fmt(s.get('dead_fraction'))}, "
            f"classifier loss recovered {_fmt(s.get('loss_recovered'))}. Best single SAE feature {s.get('best_feature')} "
            f"({s.get('best_feature_direction')} in {s.get('pathology')}). Causal, one feature at a time ({len(single)} "
            f"pathology features): median |logit change| {_fmt(s.get('causal_median_abs_dlogit_firing'))} where they fire, "
            f"{_fmt(single['dlogit_other'].abs().median() if len(single) else float('nan'))} where they are silent; together: "
            f"{groups or 'n/a'}. Token concepts captured (test F1 > 0.5) of {s.get('n_concepts')}: SAE "
            f"{s.get('concepts_captured_sae')}, neurons {s.get('concepts_captured_neurons')}, random {s.get('concepts_captured_random')}. "
            "Stages (s): " + ", ".join(f"{k} {v}" for k, v in secs.items()))
    lines.append("")
    lines.append("Significant = Benjamini-Hochberg q < 0.05 over all features of that representation; before control: "
                 "Mann-Whitney test of the mean-pooled activation per image; after control: partial correlation with the "
                 "label given the five measured confounds (mean intensity, contrast, edge density, centre of mass row and "
                 "column; Frisch-Waugh residualisation, t test); strong = significant after control with |AUROC - 0.5| >= 0.3 "
                 "and the partial correlation of the same sign. Neurons are the layer's channels (128 at layer3, 64 at layer2); "
                 "the random control is an SAE of the same size on the same layer of a random-weight copy. Best single unit: "
                 "chosen by AUROC on train + val images, scored on the test images. The layer2 rows are computed after the "
                 "timed demo, with the same pipeline.")
    lines.append("")
    lines += details
    lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    from _machine import demo_benchmark

    from domains.imaging.demo import ImagingDemoConfig

    cfg = ImagingDemoConfig()
    datasets = list(cfg.datasets)
    demo_benchmark(__doc__.splitlines()[0], HERE / "out" / "imaging_demo", ["--domain", "imaging"],
                   lambda out, wall: report([(cfg.layer, out / "imaging"), ("layer2", extra_layer(out, "layer2", datasets))],
                                            datasets, wall))


if __name__ == "__main__":
    main()
