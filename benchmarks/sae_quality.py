"""Quality curve of the SAE trainer on a real model: FVE against L0 for TopK and BatchTopK, with loss recovered.

Run on demand (not a test):

    .venv/bin/python benchmarks/sae_quality.py [--n-tokens 1000000] [--k 8,16,32,64] [--width 4096]

Uses (building it if missing) the AntiBERTy layer-4 store of all bundled sequences (OAS heavy chains + Thera-SAbDab
chains) under benchmarks/out/, trains one dictionary per (architecture, k) with ``workbench.sae.sweep``, and appends
a dated table to benchmarks/RESULTS.md. The quality goal from issue 3: FVE >= 0.90 at L0 <= 32 with < 5% dead.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
STORE = HERE / "out" / "antiberty_oas_thera_L4"


def build_store() -> None:
    import workbench
    from domains.sequence.readers import bundled, read_table

    records = read_table(bundled("oas_human_igg_memory_b_vh"), id_col="seq_id", seq_cols="sequence_alignment_aa")
    records += read_table(bundled("therasabdab"), id_col="Therapeutic", seq_cols={"HC": "heavy", "LC": "light"})
    workbench.extract("antiberty", records, layers=[4], out=STORE, progress=True)


def main() -> None:
    import torch

    from workbench.sae import TrainConfig, sweep

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-tokens", type=int, default=1_000_000)
    parser.add_argument("--k", default="8,16,32,64")
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--arch", default="topk,batchtopk")
    parser.add_argument("--out", default=str(HERE / "out" / "quality_sweep"))
    parser.add_argument("--no-write", action="store_true", help="print only; do not append to RESULTS.md")
    args = parser.parse_args()

    if not (STORE / "manifest.json").is_file():
        build_store()
    train = TrainConfig(n_tokens=args.n_tokens, batch_size=4096, checkpoint_every=0)
    t0 = time.perf_counter()
    table = sweep(STORE, out=args.out, layer=4, arch=args.arch.split(","), k=[int(v) for v in args.k.split(",")],
                  width=[args.width], train=train, progress=False)
    elapsed = time.perf_counter() - t0
    lines = [
        f"\n## {time.strftime('%Y-%m-%d', time.gmtime())} — sae_quality (AntiBERTy layer 4, width {args.width})\n",
        f"Machine: {os.cpu_count()} CPUs, torch {torch.__version__} with {torch.get_num_threads()} threads, Python {platform.python_version()}."
        f" Store: AntiBERTy layer 4 of all bundled sequences ({STORE.name}); {args.n_tokens:,} training tokens per run, batch 4096,"
        f" default TrainConfig otherwise (lr 1e-3, AuxK 256, normalised inputs). Metrics on held-out sequences (5% by id hash)."
        f" Sweep wall time {elapsed:.0f} s (finished runs are reused).\n",
        "| arch | k | FVE | L0 | dead | loss recovered (vs zero) | vs mean ablation | CE increase (nats) | train tokens/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in table.itertuples(index=False):
        lines.append(
            f"| {row.arch} | {row.k} | {row.fve:.3f} | {row.l0:.1f} | {row.dead_fraction:.1%} | {row.loss_recovered:.3f} |"
            f" {_vs_mean(Path(args.out) / row.run):.3f} | {row.ce_increase:.3f} | {row.train_tokens_per_s:,.0f} |"
        )
    goal = table[(table.l0 <= 32) & (table.dead_fraction < 0.05)]
    best = goal.fve.max() if len(goal) else float("nan")
    lines.append(f"\nQuality goal (FVE >= 0.90 at L0 <= 32, dead < 5%): best FVE under those limits {best:.3f}"
                 f" — {'met' if best >= 0.90 else 'not met'}.\n")
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        with open(HERE / "RESULTS.md", "a") as fh:
            fh.write(text + "\n")


def _vs_mean(run: Path) -> float:
    import json

    return float(json.loads((run / "metrics.json").read_text()).get("loss_recovered", {}).get("loss_recovered_vs_mean", float("nan")))


if __name__ == "__main__":
    main()
