"""Where the FVE gap to SAELens comes from: our TopK trainer at bench_sae's equal settings, one knob at a time.

Run on demand (not a test)::

    .venv/bin/python benchmarks/sae_ablation.py                  # every variant, appends a section to RESULTS.md
    .venv/bin/python benchmarks/sae_ablation.py --only base,unit_0.3 --no-write

Same store, split, width (4096), k (32), batch (4096), 244 steps (999,424 tokens), Adam lr 4e-4, warm-up 48 steps
and decay over the last 20% as ``bench_sae.py``; held-out FVE in model units on up to 50,000 tokens of the test split.
The knobs are the :class:`~workbench.sae.TrainConfig` fields that differ from SAELens's TopK recipe: the encoder's
initial norm (``init_norm``), free decoder row norms with codes rescaled by them (``decoder_norm="free"``, SAELens's
``rescale_acts_by_decoder_norm``), the pre-encoder bias initialisation, AuxK, and the warm-up length.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import torch  # noqa: E402

RESULTS = HERE / "RESULTS.md"
STORE_DIR = HERE / "out" / "antiberty_oas_thera_L4"
LAYER, WIDTH, K, BATCH, STEPS, LR = 4, 4096, 32, 4096, 244, 4e-4

VARIANTS: dict[str, dict[str, Any]] = {
    "base": {"init_norm": 1.0},
    "unit_0.5": {"init_norm": 0.5},
    "unit_0.3": {"init_norm": 0.3},
    "unit_0.2": {"init_norm": 0.2},
    "unit_0.1": {"init_norm": 0.1},
    "unit_0.03": {"init_norm": 0.03},
    "base_warmup_100": {"init_norm": 1.0, "warmup_steps": 100},
    "unit_0.1_warmup_100": {"init_norm": 0.1, "warmup_steps": 100},
    "free_0.1_warmup_100": {"decoder_norm": "free", "init_norm": 0.1, "warmup_steps": 100},
}
"""Name -> TrainConfig fields changed from the shared settings (``base`` is the trainer before this ablation)."""


def held_out(store: Any, n: int = 50_000) -> torch.Tensor:
    parts, total = [], 0
    for batch in store.iter_batches(LAYER, 8192, shuffle=False, split="test", holdout_fraction=0.05):
        parts.append(batch)
        total += len(batch)
        if total >= n:
            break
    return torch.cat(parts)[:n].float()


def run(store: Any, x: torch.Tensor, name: str, knobs: dict[str, Any]) -> dict[str, Any]:
    from workbench.sae import TrainConfig, train_sae

    options = {"warmup_steps": 48, **knobs}
    cfg = TrainConfig(n_tokens=STEPS * BATCH, batch_size=BATCH, lr=LR, decay_start=0.8, seed=0,
                      loss_recovered_sequences=0, checkpoint_every=0, **options)
    with tempfile.TemporaryDirectory(prefix="sae_ablation_") as tmp:
        t0 = time.perf_counter()
        result = train_sae(store, out=Path(tmp) / "sae", layer=LAYER, arch="topk", width=WIDTH, k=K, train=cfg,
                           progress=False, metrics=False, overwrite=True)
        seconds = time.perf_counter() - t0
    sae = result.sae.eval()
    with torch.no_grad():
        codes = sae.encode(x)
        x_hat = sae.decode(codes)
    fve = 1 - float((x - x_hat).double().pow(2).sum()) / float((x.double() - x.double().mean(0)).pow(2).sum())
    dead = 1 - float((codes > 0).any(0).float().mean())
    row = {"variant": name, **{k: v for k, v in options.items()}, "fve": round(fve, 4), "dead": round(dead, 4),
           "seconds": round(seconds, 1)}
    print(json.dumps(row), flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="", help="comma-separated variants of: " + ",".join(VARIANTS))
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args(argv)
    import workbench
    from bench_sae import open_or_build_store

    names = [n for n in args.only.split(",") if n] or list(VARIANTS)
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        ap.error(f"unknown variants {unknown}")
    store = open_or_build_store(STORE_DIR)
    x = held_out(store)
    rows = [run(store, x, n, VARIANTS[n]) for n in names]
    if args.no_write:
        return 0
    base = next((r["fve"] for r in rows if r["variant"] == "base"), None)
    lines = [f"## {dt.date.today().isoformat()} — sae_ablation (TopK at bench_sae's settings, one knob at a time)", "",
             f"Store {STORE_DIR.name} ({store.n_tokens:,} tokens), workbench {workbench.__version__}, torch "
             f"{torch.__version__}; {STEPS} steps of {BATCH} (999,424 tokens), lr {LR:g}, warm-up 48 unless stated, "
             f"held-out FVE on {len(x):,} test-split tokens. Seconds are wall time on a shared machine (not a speed "
             "measure; bench_sae.py times the trainers).", "",
             "| variant | changed | FVE | vs base | dead % | seconds |", "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        changed = ", ".join(f"{k}={v}" for k, v in VARIANTS[r["variant"]].items()) or "—"
        delta = f"{r['fve'] - base:+.4f}" if base is not None else ""
        lines.append(f"| {r['variant']} | {changed} | {r['fve']:.4f} | {delta} | {100 * r['dead']:.1f} | {r['seconds']:.0f} |")
    with RESULTS.open("a") as fh:
        fh.write("\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
