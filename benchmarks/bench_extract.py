"""Extraction benchmark with the real AntiBERTy model (antiberty==0.1.3 weights) on the bundled antibody data.

Run on demand (this is not a test)::

    .venv/bin/python benchmarks/bench_extract.py            # full run, about 5 minutes on 2 CPU cores
    .venv/bin/python benchmarks/bench_extract.py --quick    # N=150, skips the two whole-data memory runs
    .venv/bin/python benchmarks/bench_extract.py --n 1000 --repeats 3

It prints markdown tables and appends a dated section to ``benchmarks/RESULTS.md``. Three parts:

1. Overhead: ``workbench.extract`` (validation, hooks, early stop, float16 conversion, shards written to disk) against
   the bare ``adapter.model.bert`` forward on the adapter's own batches, at layer 8 (all blocks) and layer 4
   (early stop after block 4; compared with the full bare forward and with a bare forward cut after block 4).
2. Against ``antiberty.AntiBERTyRunner().embed`` called in chunks of 32 sequences in input order, plus a check that
   the stored numbers are the same as embed's (float16 store and a float32 extraction).
3. Peak resident memory of fresh processes: model only; 300 sequences; all 4,236 bundled sequences with the default
   shard size and with ``shard_tokens=8192``.

Timing: ``time.perf_counter``, torch's default thread count, one warm-up batch before each timed method, all timed
methods in one process (the memory runs each in their own). With ``--repeats R`` each part-1 method is timed R times
(interleaved) and the fastest run is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
TOKENS_PER_BATCH = 8192
EMBED_CHUNK = 32
N_COMPARE = 50
OVERHEAD_TARGET = 0.95
SPEEDUP_TARGET = 2.0


# ----------------------------------------------------------------------------------------------------- inputs


def all_records() -> tuple[list[Any], list[Any]]:
    """The bundled OAS heavy chains (1,999) and Thera-SAbDab chains (2,237), as read by the project's reader."""
    from domains.sequence.readers import bundled, read_table

    oas = read_table(bundled("oas_human_igg_memory_b_vh"), id_col="seq_id", seq_cols="sequence_alignment_aa")
    thera = read_table(bundled("therasabdab"), id_col="Therapeutic", seq_cols={"HC": "heavy", "LC": "light"})
    return oas, thera


def mixed_records(n: int, seed: int = 0) -> list[Any]:
    """``n`` sequences, half OAS and half Thera-SAbDab, sampled and shuffled with a fixed seed."""
    oas, thera = all_records()
    rng = random.Random(seed)
    n_oas = min(n // 2, len(oas))
    n_thera = min(n - n_oas, len(thera))
    picked = rng.sample(oas, n_oas) + rng.sample(thera, n_thera)
    rng.shuffle(picked)
    return picked


def n_residues(records: list[Any]) -> int:
    return sum(len(r.sequence) for r in records)


# ----------------------------------------------------------------------------------------------------- timing


def timed(fn: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def bare_forward(bert: Any, inputs: list[tuple[Any, Any]]) -> None:
    import torch

    with torch.no_grad():
        for ids, mask in inputs:
            bert(input_ids=ids, attention_mask=mask)


def truncated_forward(bert: Any, inputs: list[tuple[Any, Any]], n_blocks: int) -> list[Any]:
    """Embeddings + the first ``n_blocks`` encoder blocks, with the mask BertModel itself builds for SDPA."""
    import torch
    from transformers.modeling_attn_mask_utils import _prepare_4d_attention_mask_for_sdpa

    outs = []
    with torch.no_grad():
        for ids, mask in inputs:
            h = bert.embeddings(input_ids=ids)
            if bert.attn_implementation == "sdpa":
                ext = _prepare_4d_attention_mask_for_sdpa(mask, h.dtype, tgt_len=ids.shape[1])
            else:
                ext = bert.get_extended_attention_mask(mask, ids.shape)
            for block in bert.encoder.layer[:n_blocks]:
                h = block(h, attention_mask=ext)[0]
            outs.append(h)
    return outs


def fresh_dir(parent: Path, name: str) -> Path:
    path = parent / name
    if path.exists():
        shutil.rmtree(path)
    return path


def run_extract(adapter: Any, records: list[Any], layers: list[int], out: Path, **kw: Any) -> tuple[float, Any]:
    import workbench

    if out.exists():
        shutil.rmtree(out)
    return timed(lambda: workbench.extract(adapter, records, layers=layers, out=out, progress=False, tokens_per_batch=TOKENS_PER_BATCH, **kw))


# ----------------------------------------------------------------------------------------------------- part 1


def part_overhead(adapter: Any, records: list[Any], tmp: Path, repeats: int) -> dict[str, Any]:
    bert = adapter.model.bert
    tokens = n_residues(records)
    batches = list(adapter.batches(adapter.validate(records), tokens_per_batch=TOKENS_PER_BATCH))
    inputs = [(b.inputs["input_ids"], b.inputs["attention_mask"]) for b in batches]
    padded = sum(int(ids.numel()) for ids, _ in inputs)
    warm_recs = [records[i] for i in batches[0].index]

    # Cut-after-block-4 forward: check it is the layer-4 representation the adapter captures, before timing it.
    check = adapter.activations(batches[0], [4]).layers[4]
    trunc = truncated_forward(bert, inputs[:1], 4)[0][batches[0].keep]
    trunc_diff = float((check - trunc).abs().max())
    trunc_ok = trunc_diff < 1e-4

    # Warm-ups: one batch per method.
    bare_forward(bert, inputs[:1])
    truncated_forward(bert, inputs[:1], 4)
    run_extract(adapter, warm_recs, [8], tmp / "warm8")
    run_extract(adapter, warm_recs, [4], tmp / "warm4")

    times: dict[str, list[float]] = {"bare8": [], "ext8": [], "bare4": [], "ext4": []}
    loop: dict[str, list[float]] = {"ext8": [], "ext4": []}
    for _ in range(repeats):
        times["bare8"].append(timed(lambda: bare_forward(bert, inputs))[0])
        dt, store = run_extract(adapter, records, [8], tmp / "ext8")
        times["ext8"].append(dt)
        loop["ext8"].append(float(store.manifest["extract_seconds_last_run"]))
        if trunc_ok:
            times["bare4"].append(timed(lambda: truncated_forward(bert, inputs, 4))[0])
        dt, store = run_extract(adapter, records, [4], tmp / "ext4")
        times["ext4"].append(dt)
        loop["ext4"].append(float(store.manifest["extract_seconds_last_run"]))
    best = {k: min(v) for k, v in times.items() if v}
    return {
        "n": len(records),
        "tokens": tokens,
        "padded": padded,
        "n_batches": len(batches),
        "times": times,
        "best": best,
        "loop": {k: min(v) for k, v in loop.items()},
        "trunc_ok": trunc_ok,
        "trunc_diff": trunc_diff,
        "store8": tmp / "ext8",
        "store4": tmp / "ext4",
    }


# ----------------------------------------------------------------------------------------------------- part 2


def part_embed(adapter: Any, records: list[Any], tmp: Path, p1: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    from antiberty import AntiBERTyRunner

    import workbench

    runner = AntiBERTyRunner()
    seqs = [r.sequence for r in records]
    chunks = [seqs[i : i + EMBED_CHUNK] for i in range(0, len(seqs), EMBED_CHUNK)]
    runner.embed(chunks[0], hidden_layer=8)  # warm-up

    kept: list[Any] = []

    def go() -> None:
        for k, chunk in enumerate(chunks):
            out = runner.embed(chunk, hidden_layer=8)
            if len(kept) < N_COMPARE:
                kept.extend(out[: N_COMPARE - len(kept)])

    dt, _ = timed(go)

    # Same numbers out: embed (strip [CLS] and [SEP]) vs the float16 stores of part 1 and a float32 extraction.
    first = records[:N_COMPARE]
    emb8 = [e[1:-1].numpy() for e in kept]
    emb4 = []
    for i in range(0, len(first), EMBED_CHUNK):
        emb4 += [e[1:-1].numpy() for e in runner.embed([r.sequence for r in first[i : i + EMBED_CHUNK]], hidden_layer=4)]
    _, s32 = run_extract(adapter, first, [4, 8], tmp / "f32", dtype="float32")
    s16 = {8: workbench.open_store(p1["store8"]), 4: workbench.open_store(p1["store4"])}
    diffs: dict[str, float] = {}
    scale: dict[int, float] = {}
    for layer, emb in ((4, emb4), (8, emb8)):
        d16 = d32 = big = 0.0
        for rec, e in zip(first, emb):
            a16 = s16[layer].get_sequence(rec.id, layer)
            a32 = s32.get_sequence(rec.id, layer)
            assert a16.shape == e.shape == a32.shape, (rec.id, a16.shape, e.shape)
            d16 = max(d16, float(np.abs(a16 - e).max()))
            d32 = max(d32, float(np.abs(a32 - e).max()))
            big = max(big, float(np.abs(e).max()))
        diffs[f"f16_L{layer}"] = d16
        diffs[f"f32_L{layer}"] = d32
        scale[layer] = big
    del runner
    return {"time": dt, "tokens": n_residues(records), "diffs": diffs, "scale": scale, "n_compare": len(first)}


# ----------------------------------------------------------------------------------------------------- part 3

_CHILD = textwrap.dedent(
    """
    import json, re, resource, sys, time

    def status(key):
        return int(re.search(key + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1))

    sys.path.insert(0, {root!r})
    sys.path.insert(0, {bench!r})
    import workbench
    from bench_extract import all_records, mixed_records, n_residues
    mode, out, shard_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
    adapter = workbench.load_adapter("antiberty")
    res = {{"rss_after_load_kib": status("VmRSS"), "tokens": 0, "n": 0, "seconds": 0.0, "n_shards": 0}}
    if mode == "bare300":  # reference: the model's own forward over the same batches, nothing extracted
        import torch
        records = adapter.validate(mixed_records(300))
        with torch.no_grad():
            for batch in adapter.batches(records, tokens_per_batch=8192):
                adapter.model.bert(**batch.inputs)
        res.update(tokens=n_residues(records), n=len(records))
    elif mode != "model":
        if mode == "all":
            oas, thera = all_records()
            records = oas + thera
        else:
            records = mixed_records(int(mode))
        t0 = time.perf_counter()
        store = workbench.extract(adapter, records, layers=[4], out=out, progress=False,
                                  shard_tokens=shard_tokens or None)
        res.update(seconds=time.perf_counter() - t0, tokens=store.n_tokens, n=store.n_sequences,
                   n_shards=len(store.shards), shard_tokens=store.manifest["shard_tokens"])
    res["peak_kib"] = status("VmHWM")  # this process's own high-water mark
    res["ru_maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(res))
    """
)


def child(mode: str, out: Path, shard_tokens: int = 0) -> dict[str, Any]:
    code = _CHILD.format(root=str(ROOT), bench=str(Path(__file__).resolve().parent))
    proc = subprocess.run([sys.executable, "-c", code, mode, str(out), str(shard_tokens)], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child {mode!r} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def part_memory(tmp: Path, quick: bool) -> list[tuple[str, dict[str, Any]]]:
    runs = [("model only (load adapter)", child("model", tmp / "m0"))]
    runs.append(("300 sequences, bare `model.bert` forward only (reference, nothing stored)", child("bare300", tmp / "m0")))
    runs.append(("300 sequences, default shards", child("300", fresh_dir(tmp, "m1"))))
    if not quick:
        runs.append(("all 4,236 sequences, default shards", child("all", fresh_dir(tmp, "m2"))))
        runs.append(("all 4,236 sequences, shard_tokens=8192", child("all", fresh_dir(tmp, "m3"), 8192)))
    for d in ("m1", "m2", "m3"):
        shutil.rmtree(tmp / d, ignore_errors=True)
    return runs


# ----------------------------------------------------------------------------------------------------- report


def machine() -> dict[str, str]:
    import torch
    import transformers

    from _machine import cpu_model

    cpu = cpu_model()
    return {
        "cpu_count": str(os.cpu_count()),
        "cpu": cpu,
        "torch": torch.__version__,
        "torch_threads": str(torch.get_num_threads()),
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "load_avg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def today() -> str:
    try:
        return subprocess.run(["date", "-u", "+%F"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return time.strftime("%Y-%m-%d", time.gmtime())


def mark(ok: bool) -> str:
    return "met" if ok else "**missed**"


def render(args: argparse.Namespace, mach: dict[str, str], p1: dict[str, Any], p2: dict[str, Any], mem: list[tuple[str, dict[str, Any]]], total: float) -> str:
    tok = p1["tokens"]
    b = p1["best"]
    rate = {k: tok / v for k, v in b.items()}
    lines = [
        f"## {today()} — bench_extract (N={p1['n']}{', quick' if args.quick else ''})",
        "",
        f"Machine: {mach['cpu_count']} CPUs ({mach['cpu']}), torch {mach['torch']} with {mach['torch_threads']} threads, "
        f"transformers {mach['transformers']}, Python {mach['python']}; load average (1/5/15 min) at start {mach['load_avg']}, "
        f"at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}. "
        f"Model: AntiBERTy (antiberty==0.1.3 weights). Whole run {total:.0f} s.",
        "",
        f"Inputs: {p1['n']} sequences (half OAS heavy chains, half Thera-SAbDab chains, seeded sample), "
        f"{tok:,} residue tokens, {p1['n_batches']} batches of at most {TOKENS_PER_BATCH} padded tokens "
        f"({p1['padded']:,} padded tokens). Tokens/s counts residue tokens; best of {args.repeats} interleaved run(s).",
        "",
        "### 1. Extraction vs the bare model forward (same batches)",
        "",
        "| method | seconds | tokens/s | vs bare forward |",
        "|---|---:|---:|---:|",
        f"| (a) bare `model.bert` forward, all 8 blocks | {b['bare8']:.2f} | {rate['bare8']:,.0f} | 1.00 |",
        f"| (b) `extract(layers=[8])` (validation, hooks, float16, shards on disk) | {b['ext8']:.2f} | {rate['ext8']:,.0f} | {rate['ext8'] / rate['bare8']:.3f} |",
        f"| (c) `extract(layers=[4])` (early stop after block 4) | {b['ext4']:.2f} | {rate['ext4']:,.0f} | {rate['ext4'] / rate['bare8']:.2f} |",
    ]
    if "bare4" in b:
        lines.append(f"| (d) bare forward cut after block 4 (embeddings + 4 blocks) | {b['bare4']:.2f} | {rate['bare4']:,.0f} | {rate['bare4'] / rate['bare8']:.2f} |")
    lines += [""]
    ratio8 = rate["ext8"] / rate["bare8"]
    lines.append(f"- Throughput ratio (b)/(a) = {ratio8:.3f} (target >= {OVERHEAD_TARGET}: {mark(ratio8 >= OVERHEAD_TARGET)}).")
    if "bare4" in b:
        ratio4 = rate["ext4"] / rate["bare4"]
        lines.append(f"- Throughput ratio (c)/(d) = {ratio4:.3f} (layer-4 extraction vs the bare forward cut at the same block).")
        lines.append(f"- The cut forward (d) matches the adapter's hooked layer-4 capture to {p1['trunc_diff']:.1e} (max abs).")
    else:
        lines.append(f"- Cut-after-block-4 forward skipped: it did not match the hooked capture (max abs diff {p1['trunc_diff']:.1e}).")
    for key, label in (("ext8", "(b)"), ("ext4", "(c)")):
        loop_s = p1["loop"][key]
        lines.append(
            f"- {label}: {loop_s:.2f} s of {b[key]:.2f} s in the shard loop (forward, copy-out, float16, writing); "
            f"{b[key] - loop_s:.2f} s in validation, weights hash lookup, planning and the final manifest."
        )
    spread = max(max(v) / min(v) for v in p1["times"].values() if v)
    if spread > 1.10:
        lines.append(
            f"- Timed runs of one method differ by up to {100 * (spread - 1):.0f}%: something else was using the CPUs "
            "during part of the run; the fastest run of each method is reported."
        )
    lines.append("- All runs (s): " + "; ".join(f"{k} " + ", ".join(f"{t:.2f}" for t in v) for k, v in p1["times"].items() if v) + ".")

    e_rate = p2["tokens"] / p2["time"]
    lines += [
        "",
        f"### 2. Against `AntiBERTyRunner().embed` (chunks of {EMBED_CHUNK}, input order)",
        "",
        "| method | seconds | tokens/s | our speed-up |",
        "|---|---:|---:|---:|",
        f"| `embed(chunk, hidden_layer=8)` (full model, LM heads, all hidden states) | {p2['time']:.2f} | {e_rate:,.0f} | |",
        f"| `extract(layers=[8])` | {b['ext8']:.2f} | {rate['ext8']:,.0f} | {rate['ext8'] / e_rate:.2f}x |",
        f"| `extract(layers=[4])` | {b['ext4']:.2f} | {rate['ext4']:,.0f} | {rate['ext4'] / e_rate:.2f}x |",
        "",
        f"- embed computes the same forward whatever `hidden_layer` is (it stacks every hidden state, then indexes), so one "
        f"timing serves both layers. Speed-up target >= {SPEEDUP_TARGET:.0f}x: layer 4 {mark(rate['ext4'] / e_rate >= SPEEDUP_TARGET)}, "
        f"layer 8 {mark(rate['ext8'] / e_rate >= SPEEDUP_TARGET)}.",
        "",
        f"Same numbers out (first {p2['n_compare']} sequences; embed output with [CLS] and [SEP] stripped; max abs difference):",
        "",
        "| layer | largest abs value (embed) | float16 store vs embed | float32 extraction vs embed |",
        "|---|---:|---:|---:|",
    ]
    for layer in (4, 8):
        lines.append(f"| {layer} | {p2['scale'][layer]:.2f} | {p2['diffs'][f'f16_L{layer}']:.2e} | {p2['diffs'][f'f32_L{layer}']:.2e} |")

    lines += [
        "",
        "### 3. Peak resident memory (fresh process each, layer 4, default tokens_per_batch=8192; seconds are single runs)",
        "",
        "| run | sequences | tokens | shards (shard_tokens) | seconds | RSS after model load (MiB) | peak RSS (MiB) | peak above model-only peak (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = mem[0][1]["peak_kib"]
    for label, r in mem:
        shards = f"{r['n_shards']} ({r['shard_tokens']:,})" if r.get("shard_tokens") else "—"
        secs = f"{r['seconds']:.1f}" if r["seconds"] else "—"
        lines.append(
            f"| {label} | {r['n']:,} | {r['tokens']:,} | {shards} | {secs} | {r['rss_after_load_kib'] / 1024:.0f} "
            f"| {r['peak_kib'] / 1024:.0f} | {(r['peak_kib'] - base) / 1024:+.0f} |"
        )
    maxrss = sorted({round(r["ru_maxrss_kib"] / 1024) for _, r in mem})
    lines += [
        "",
        "- Peak RSS is the child's `VmHWM` (/proc/self/status). `ru_maxrss` read in the same children is "
        f"{', '.join(map(str, maxrss))} MiB: Linux carries the spawning process's high-water mark through fork/exec "
        "into `ru_maxrss`, so there it measures this benchmark's parent process, not the child.",
    ]
    if len(mem) >= 5:
        bare, small, big, big_small_shards = mem[1][1], mem[2][1], mem[3][1], mem[4][1]
        lines += [
            f"- Input grows {big['tokens'] / small['tokens']:.1f}x ({small['tokens']:,} to {big['tokens']:,} tokens); "
            f"peak above model-only goes from {(small['peak_kib'] - base) / 1024:+.0f} to {(big['peak_kib'] - base) / 1024:+.0f} MiB "
            f"with default shards and is {(big_small_shards['peak_kib'] - base) / 1024:+.0f} MiB with shard_tokens=8192; "
            f"the bare forward alone on 300 sequences peaks at {(bare['peak_kib'] - base) / 1024:+.0f} MiB.",
        ]
    elif args.quick:
        lines += ["- `--quick`: the two whole-data runs were skipped."]
    lines.append("")
    return "\n".join(lines)


def append_results(text: str, path: Path) -> None:
    if not path.exists():
        path.write_text(
            "# Benchmark results\n\n"
            "Dated sections appended by the benchmark scripts in `benchmarks/` (see `benchmarks/README.md`); newest last.\n\n"
        )
    with path.open("a") as fh:
        fh.write("\n" + text)


# ----------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=None, help="sequences for parts 1 and 2 (default 600; 150 with --quick)")
    parser.add_argument("--quick", action="store_true", help="N=150 and skip the two whole-data memory runs")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per part-1 method, fastest kept (default 2)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="markdown file the dated section is appended to")
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to the results file")
    args = parser.parse_args(argv)
    args.n = args.n or (150 if args.quick else 600)
    args.repeats = args.repeats or 2

    t_start = time.perf_counter()
    import workbench

    mach = machine()
    print(f"machine: {mach}", flush=True)
    if os.getloadavg()[0] > 0.5 * (os.cpu_count() or 1):
        print(f"warning: load average {mach['load_avg']} -- other processes are using the CPUs; timings may be disturbed", flush=True)
    records = mixed_records(args.n)
    adapter = workbench.load_adapter("antiberty")
    with tempfile.TemporaryDirectory(prefix="bench_extract_") as tmpname:
        tmp = Path(tmpname)
        print(f"part 1: overhead on {len(records)} sequences ({n_residues(records):,} tokens), {args.repeats} repeat(s)...", flush=True)
        p1 = part_overhead(adapter, records, tmp, args.repeats)
        print("part 2: AntiBERTyRunner.embed...", flush=True)
        p2 = part_embed(adapter, records, tmp, p1)
        print("part 3: peak memory in fresh processes...", flush=True)
        mem = part_memory(tmp, args.quick)
    text = render(args, mach, p1, p2, mem, time.perf_counter() - t_start)
    print()
    print(text)
    if not args.no_record:
        append_results(text, args.results)
        print(f"appended to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
