"""The antibody demo end to end, timed from nothing, and the quality figures of its catalog.

Run on demand (not a test):

    .venv/bin/python benchmarks/bench_demo.py [--out benchmarks/out/demo] [--reuse] [--no-write]

Deletes ``--out`` (unless ``--reuse``), runs ``workbench demo --out DIR`` in a fresh process and times it (target:
10 minutes on a 2-core CPU), then reads the catalog and appends a dated section to ``benchmarks/RESULTS.md``: SAE
fidelity; concepts captured (test F1 > 0.5) by SAE features, neurons and the random-weight control; the best feature
per IMGT region with its test F1 beside the best neuron and the best random-control feature; probe scores on SAE
codes, raw activations (neurons) and the control, dense and k-sparse; the Jain-137 assay regressions; rediscovery
precision@20 against its base rate; causal effects; and the stage timings.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _fmt(x: float, digits: int = 3) -> str:
    return "n/a" if x != x else f"{x:.{digits}f}"


def report(catalog_dir: Path, wall: float | None) -> str:
    import pandas as pd

    from _machine import cpu_model
    from workbench.catalog import Catalog

    cat = Catalog.open(catalog_dir)
    s = cat.summary
    lines = [f"## {dt.date.today().isoformat()} — bench_demo (`workbench demo`, antibody)", ""]
    lines.append(f"Machine: {cpu_model()}, {os.cpu_count()} cores, CPU only. Catalog: {s['n_features']} features, "
                 f"{s['n_sequences']} chains, {s['n_tokens']} residues, {s['n_concepts']} token concepts.")
    lines.append("")
    if wall is not None:
        verdict = "met" if wall <= 600 else "NOT met"
        lines.append(f"**End to end from an empty folder: {wall:.0f} s** (target 600 s: {verdict}). Stages (s): "
                     + ", ".join(f"{k} {v}" for k, v in {**s.get('demo_seconds', {}), **s.get('annotate_seconds', {})}.items()))
        lines.append("")
    lines.append(f"SAE (TopK, k 32): FVE {_fmt(s.get('fve', float('nan')))}, L0 {_fmt(s.get('l0', float('nan')), 1)}, "
                 f"dead {_fmt(s.get('dead_fraction', float('nan')))}, loss recovered {_fmt(s.get('loss_recovered', float('nan')))}.")
    lines.append("")
    lines.append(f"**Concepts captured** (test F1 > 0.5, of {s['n_concepts']}): SAE **{s['concepts_captured_sae']}**, "
                 f"neurons {s['concepts_captured_neurons']}, random-weight control {s['concepts_captured_random']}.")
    lines.append("")
    best = {name: cat.table(f"best_{name}").set_index("concept") for name in ("sae", "neurons", "random") if f"best_{name}" in cat.tables}
    regions = [c for c in best["sae"].index if c.startswith(("region=", "chain_region="))]
    lines += ["| concept | best SAE feature | test F1 | best neuron | test F1 | best random-control feature | test F1 |",
              "|---|---|---|---|---|---|---|"]
    for c in sorted(regions):
        row = [c]
        for name in ("sae", "neurons", "random"):
            if name in best and c in best[name].index:
                r = best[name].loc[c]
                row += [str(r["best_feature"]), _fmt(float(r["test_f1"]))]
            else:
                row += ["", ""]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    probes = cat.table("probes")
    if len(probes):
        lines.append("Probes (cross-validated, folds grouped by antibody; balanced accuracy, chance = 1/classes): "
                     "dense = all dimensions, k = best k dimensions chosen inside each fold.")
        lines.append("")
        piv = probes.assign(col=probes["representation"] + probes["k"].map(lambda k: "" if k == 0 else f" k={k}"))
        table = piv.pivot_table(index=["level", "target"], columns="col", values="score", aggfunc="first")
        base = probes.groupby(["level", "target"])["baseline"].first()
        cols = [c for c in ("sae", "neurons", "random_sae", "sae k=1", "neurons k=1", "random_sae k=1", "sae k=8", "neurons k=8")
                if c in table.columns]
        lines += ["| level | target | chance | " + " | ".join(cols) + " |", "|---|---|---|" + "---|" * len(cols)]
        for (level, target), r in table.iterrows():
            lines.append(f"| {level} | {target} | {_fmt(float(base.loc[(level, target)]))} | "
                         + " | ".join(_fmt(float(r[c])) for c in cols) + " |")
        lines.append("")
    if "probes_jain" in cat.tables:
        jain = cat.table("probes_jain")
        dense = jain[jain["k"] == 0].pivot_table(index="target", columns="representation", values="score")
        lines.append("Jain-137 assays (137 antibodies, mean-pooled over both chains, ridge regression, 5-fold R2):")
        lines.append("")
        lines += ["| assay | " + " | ".join(dense.columns) + " |", "|---|" + "---|" * len(dense.columns)]
        for target, r in dense.iterrows():
            lines.append(f"| {target} | " + " | ".join(_fmt(float(v)) for v in r) + " |")
        lines.append("")
    if "rediscovery" in cat.tables:
        red = cat.table("rediscovery")
        lines.append(f"**Rediscovery** (half of each concept's instances withheld; precision of the top 20 candidate spans "
                     f"against the withheld ones): mean precision@20 **{_fmt(float(red['precision_at_k'].mean()))}** over "
                     f"{len(red)} concepts, mean base rate {_fmt(float(red['base_rate'].mean()), 4)}.")
        lines.append("")
        lines += ["| concept | feature | precision@20 | base rate | lift |", "|---|---|---|---|---|"]
        for r in red.sort_values("concept").itertuples():
            lines.append(f"| {r.concept} | {r.feature} | {_fmt(r.precision_at_k)} | {_fmt(r.base_rate, 4)} | {_fmt(r.lift, 1)} |")
        lines.append("")
    if "causal" in cat.tables:
        causal = cat.table("causal")
        ratio = pd.to_numeric(causal["kl_ratio"], errors="coerce")
        lines.append(f"Causal check (ablation of {len(causal)} features on their top sequences): median KL ratio firing / "
                     f"elsewhere {_fmt(float(ratio.median()), 1)}; features with ratio > 1: {int((ratio > 1).sum())}/{len(causal)}.")
        lines.append("")
    for key, title in (("top_missing_annotations", "Top candidate missing annotations"),
                       ("top_unexplained_features", "Top unexplained features")):
        if s.get(key):
            lines.append(f"{title}: " + "; ".join(map(str, s[key])) + ".")
            lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    from _machine import demo_benchmark

    demo_benchmark(__doc__.splitlines()[0], HERE / "out" / "demo", [], lambda out, wall: report(out / "catalog", wall))


if __name__ == "__main__":
    main()
