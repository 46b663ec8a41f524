"""GPU benchmark: extraction and SAE training against the bare reference loops and the peers, in one run.

On one GPU machine (about 5-8 minutes on an H200; the limit is 10)::

    python benchmarks/bench_gpu.py --out $OUT            # writes $OUT/bench_gpu.json and $OUT/bench_gpu.md

Then here, to add the section to ``benchmarks/RESULTS.md``::

    .venv/bin/python benchmarks/bench_gpu.py --record <folder>/bench_gpu.json

``--small`` runs a tiny version on the CPU (2-layer model, small SAE, few steps) to check the script itself; its
figures mean nothing.

What runs, in order (each stage is timed; a failing stage is recorded and the run goes on):

1. ``checkpoint``: an ESM-2 650M-shaped checkpoint (33 layers, d 1280, 20 heads; random weights, since speed depends
   on shape only) written in fair-esm's official format by ``domains.sequence.testing`` and loaded by the project's
   own loader.
2. ``forward``: the plain model forward, full depth, over the same sequences in batches of 64 in input order, under
   bf16 autocast and (on one copy of the data) in float32: the reference of ``../shared/bench/gpu_reference.py``; and
   the adapter's ``activations`` loop alone (the extraction's batches, early stop, no store).
3. ``extract``: ``workbench.extract`` of layer 24 at the default precision (bf16 on CUDA), and at fp32 on one copy.
4. ``train``: TopK, width 16,384, k 64, batch 4,096, 4M tokens, lr 4e-4, on that store: ours with the CUDA defaults
   (bf16 autocast, dense kernels) and the bare plain-torch loop in bf16; then ``one_pass``: 4 SAEs (k 16, 32, 64,
   128) from one pass against ours alone (k 64), both on 2M tokens; then the peers that import (SAELens,
   dictionary_learning, overcomplete) with their own bf16 autocast, and on 1M tokens ours with the sparse kernels and
   the bare loop in fp32. Every trainer reads the same batches made on the GPU; FVE, L0 and dead share on the
   held-out tokens. The order puts the figures the goals need first.

Data: the bundled OAS heavy chains and Thera-SAbDab chains, twice (956,714 residues, as the reference figures).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

GOALS = {"extract_vs_bf16_forward": 0.9, "train_vs_bare_bf16": 0.6, "one_pass_4_vs_1": 1.5}


class Bench:
    """Runs stages, keeps their results (or the failure), and rewrites the JSON and markdown after every stage, so a
    run stopped by its time limit still leaves what it measured."""

    def __init__(self, out: Path) -> None:
        self.results: dict[str, Any] = {}
        self.out = out
        self.t0 = time.perf_counter()

    def save(self) -> None:
        self.results.setdefault("facts", {})["wall_s"] = round(time.perf_counter() - self.t0, 1)
        (self.out / "bench_gpu.json").write_text(json.dumps(self.results, indent=1, default=str))
        if "date" in self.results["facts"]:
            (self.out / "bench_gpu.md").write_text(report(self.results))

    def stage(self, name: str, fn: Callable[[], Any]) -> Any:
        t = time.perf_counter()
        try:
            value = fn()
            self.results[name] = value
            print(f"[{name}] {time.perf_counter() - t:.1f}s {json.dumps(value, default=str)[:400]}", flush=True)
        except Exception as exc:  # noqa: BLE001 - a failed stage is a result; the others still run
            value = None
            self.results[name] = {"failed": f"{type(exc).__name__}: {exc}"}
            print(f"[{name}] FAILED after {time.perf_counter() - t:.1f}s", flush=True)
            traceback.print_exc()
        self.save()
        return value


def sequences(small: bool) -> list[str]:
    data = ROOT / "domains" / "sequence" / "data"
    seqs = [r["sequence_alignment_aa"] for r in csv.DictReader(open(data / "oas_human_igg_memory_b_vh.csv"))]
    for r in csv.DictReader(open(data / "therasabdab.csv")):
        for key in ("HC", "LC"):
            v = (r.get(key) or "").strip()
            if v and set(v) <= set("ACDEFGHIKLMNPQRSTVWY") and len(v) > 80:
                seqs.append(v)
    return seqs[:60] if small else seqs * 2


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/bench_gpu"), help="folder for bench_gpu.json / .md")
    ap.add_argument("--small", action="store_true", help="tiny CPU check of the script")
    ap.add_argument("--skip", default="", help="comma-separated stages or trainers to skip (e.g. saelens,one_pass)")
    ap.add_argument("--record", metavar="JSON", help="append the section of a finished run to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    if args.record:
        section = report(json.loads(Path(args.record).read_text()))
        from _machine import record

        record(section)
        return 0
    small = args.small or os.environ.get("SMALL") == "1"
    skip = {s for s in args.skip.split(",") if s}
    device = "cpu" if small else "cuda"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench_gpu_"))
    bench = Bench(out)
    bench.work = work  # type: ignore[attr-defined]
    import workbench
    from domains.sequence.records import SequenceRecord

    seqs = sequences(small)
    records = [SequenceRecord(id=f"s{i}", sequence=s) for i, s in enumerate(seqs)]
    shape = dict(num_layers=4, embed_dim=64, attention_heads=4) if small else dict(num_layers=33, embed_dim=1280, attention_heads=20)
    layer = 3 if small else 24
    width, k, n_tokens, batch = (512, 16, 40 * 256, 256) if small else (16384, 64, 4_000_000, 4096)
    facts = {
        "date": dt.date.today().isoformat(), "device": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "python": platform.python_version(), "small": small, "sequences": len(seqs),
        "residues": sum(map(len, seqs)), "layer": layer, "model_shape": shape,
        "sae": {"arch": "topk", "width": width, "k": k, "n_tokens": n_tokens, "batch": batch, "lr": 4e-4},
    }
    bench.results["facts"] = facts
    ckpt = work / "esm2_t33_650M_UR50D.pt"

    def write_checkpoint() -> dict[str, Any]:
        from domains.sequence.testing import write_esm2_checkpoint

        write_esm2_checkpoint(ckpt, **shape)  # type: ignore[arg-type]
        return {"gb": round(ckpt.stat().st_size / 1e9, 2)}

    bench.stage("checkpoint", write_checkpoint)
    adapter = bench.stage("load", lambda: workbench.load_adapter(str(ckpt), device=device))

    def plain_forward() -> dict[str, Any]:
        import esm

        conv = esm.data.Alphabet.from_architecture("ESM-1b").get_batch_converter()
        res = {}
        for name, dtype in (("bf16", torch.bfloat16), ("fp32", None)):
            part = seqs if dtype is not None else seqs[: len(seqs) // 2]  # fp32: one copy of the data (time)
            n = 0
            sync(device)
            t = time.perf_counter()
            for i in range(0, len(part), 64):
                _, _, toks = conv([(str(j), s) for j, s in enumerate(part[i : i + 64])])
                with torch.no_grad(), torch.autocast(torch.device(device).type, dtype=dtype or torch.float32, enabled=dtype is not None):
                    adapter.model(toks.to(device), repr_layers=[layer])
                n += sum(len(s) for s in part[i : i + 64])
            sync(device)
            res[f"{name}_tok_per_s"] = round(n / (time.perf_counter() - t))
        return res

    if "forward" not in skip:
        bench.stage("forward", plain_forward)

    def activations_only() -> dict[str, Any]:
        from workbench._extract import auto_tokens_per_batch  # the extraction's own default budget

        budget = auto_tokens_per_batch(adapter)
        valid = adapter.validate(records)
        n = 0
        sync(device)
        t = time.perf_counter()
        for b in adapter.batches(valid, tokens_per_batch=budget):
            acts = adapter.activations(b, [layer], precision="bf16" if device == "cuda" else "fp32")
            n += b.n_tokens
        sync(device)
        return {"tok_per_s": round(n / (time.perf_counter() - t)), "tokens_per_batch": budget, "last_dtype": str(acts.layers[layer].dtype)}

    if "forward" not in skip:
        bench.stage("activations_loop", activations_only)

    store_path = work / "store"

    def extract(precision: str, path: Path, recs: list[Any]) -> Callable[[], dict[str, Any]]:
        def run() -> dict[str, Any]:
            sync(device)
            t = time.perf_counter()
            st = workbench.extract(adapter, recs, layers=[layer], out=path, device=device, precision=precision,
                                   progress=False, overwrite=True)
            sync(device)
            dt_ = time.perf_counter() - t
            return {"tokens": st.n_tokens, "s": round(dt_, 1), "tok_per_s": round(st.n_tokens / dt_),
                    "precision": st.manifest.get("precision"), "shards": len(st.shards)}
        return run

    bench.stage("extract_auto", extract("auto", store_path, records))
    if "extract_fp32" not in skip:  # one copy of the data (time)
        bench.stage("extract_fp32", extract("fp32", work / "store_fp32", records[: len(records) // 2]))
        shutil.rmtree(work / "store_fp32", ignore_errors=True)
    adapter = None  # the model's memory goes back to the GPU before training
    if device == "cuda":
        torch.cuda.empty_cache()
    if not (store_path / "manifest.json").is_file():
        print("no store: training stages skipped", flush=True)
        return finish(bench)

    import sae_peers
    from bench_sae import evaluate, held_out_tokens

    store = workbench.open_store(store_path)
    x_eval = held_out_tokens(store, 50_000, 0.05, layer=layer)
    steps = n_tokens // batch
    base = dict(store=store, layer=layer, width=width, k=k, batch_size=batch, steps=steps, lr=4e-4,
                warmup_steps=max(1, steps // 5), device=device)

    def trainer(name: str, fn: Callable[[sae_peers.Setup], sae_peers.Run], **setup_kw: Any) -> Callable[[], dict[str, Any]]:
        def run() -> dict[str, Any]:
            setup = sae_peers.Setup(**{**base, **setup_kw})  # type: ignore[arg-type]
            r = fn(setup)
            ev = evaluate(r, x_eval, width, device=device)
            return {"name": r.name, "version": r.version, "tokens": setup.n_tokens, "tok_per_s": round(r.tokens_per_s), "call_s": round(r.call_seconds, 1),
                    "fve": round(ev["fve"], 4), "l0": round(ev["l0"], 1), "dead": round(ev["dead"], 4),
                    "precision": setup.precision, "notes": r.notes}
        return run

    def one_pass() -> dict[str, Any]:
        from workbench.sae import RunSpec, TrainConfig, train_sae, train_saes

        half = n_tokens // 2 // batch * batch  # half the tokens: the ratio is what is measured
        cfg = TrainConfig(n_tokens=half, batch_size=batch, lr=4e-4, warmup_steps=max(1, half // batch // 5), checkpoint_every=0,
                          loss_recovered_sequences=0)
        sync(device)
        t = time.perf_counter()
        train_sae(store, out=work / "one", layer=layer, width=width, k=k, train=cfg, device=device, progress=False, metrics=False)
        sync(device)
        one = time.perf_counter() - t
        ks = [max(1, k // 4), max(1, k // 2), k, 2 * k]
        t = time.perf_counter()
        results = train_saes(store, [RunSpec(work / f"k{kk}", width=width, k=kk) for kk in ks], layer=layer, train=cfg,
                             device=device, progress=False, metrics=False)
        sync(device)
        four = time.perf_counter() - t
        fves = {}
        for kk, res in zip(ks, results):
            sae = res.sae

            class _R:  # what bench_sae.evaluate needs
                @staticmethod
                @torch.no_grad()
                def reconstruct(x: torch.Tensor, sae: Any = sae) -> tuple[torch.Tensor, torch.Tensor]:
                    codes = sae.encode(x)
                    return sae.decode(codes), codes

            fves[f"k{kk}"] = round(evaluate(_R(), x_eval, width, device=device)["fve"], 4)  # type: ignore[arg-type]
        return {"one_s": round(one, 1), "four_s": round(four, 1), "ratio": round(four / one, 2), "ks": ks, "fve": fves}

    precision = "bf16" if device == "cuda" else "fp32"
    quarter = dict(steps=max(2, steps // 4), warmup_steps=max(1, steps // 20))  # slower variants: a quarter of the tokens
    plan = [  # the figures the goals need first, then the rest, in case the run meets its time limit
        ("train_ours", sae_peers.run_ours, dict(precision=precision)),
        ("bare_bf16", sae_peers.run_bare, dict(precision="bf16")),
        ("one_pass", None, {}),
        ("saelens", sae_peers.run_saelens, dict(precision=precision)),
        ("dictionary_learning", sae_peers.run_dictionary_learning, dict(precision=precision)),
        ("overcomplete", sae_peers.run_overcomplete, dict(precision=precision)),
        ("train_ours_sparse", sae_peers.run_ours, dict(precision=precision, kernels="sparse", **quarter)),
        ("bare_fp32", sae_peers.run_bare, dict(precision="fp32", **quarter)),
    ]
    for name, fn, kw in plan:
        if name in skip:
            continue
        if fn is None:
            bench.stage(name, one_pass)
            continue
        peer = name if name in sae_peers.PEER_IMPORTS else None
        why = sae_peers.peer_available(peer) if peer else None
        if why:
            bench.results[name] = {"skipped": why}
            print(f"[{name}] skipped: {why}", flush=True)
            continue
        bench.stage(name, trainer(name, fn, **kw))

    return finish(bench)


def finish(bench: Bench) -> int:
    bench.save()
    print(report(bench.results), flush=True)
    shutil.rmtree(bench.work, ignore_errors=True)
    return 0


def _get(res: dict[str, Any], *path: str) -> Any:
    for p in path:
        if not isinstance(res, dict) or p not in res:
            return None
        res = res[p]
    return res


def _ratio(a: Any, b: Any) -> str:
    return f"{a / b:.2f}" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else "—"


def report(res: dict[str, Any]) -> str:
    """The markdown section for RESULTS.md."""
    f = res["facts"]
    lines = [f"## {f['date']} — bench_gpu ({f['device']}{', SMALL check: figures mean nothing' if f['small'] else ''})", "",
             f"torch {f['torch']}, Python {f['python']}; whole run {f.get('wall_s')} s. ESM-2 shape {f['model_shape']} (random "
             f"weights), layer {f['layer']}; {f['sequences']:,} sequences, {f['residues']:,} residues. SAE: {f['sae']}.", ""]
    fwd = res.get("forward", {})
    bf16 = _get(res, "forward", "bf16_tok_per_s")
    lines += ["### Extraction", "", "| what | tokens/s | ÷ plain bf16 forward |", "|---|---:|---:|"]
    for label, value in (("plain forward fp32 (64 per batch, input order)", fwd.get("fp32_tok_per_s")),
                         ("plain forward bf16 autocast", bf16),
                         ("adapter.activations loop (no store)", _get(res, "activations_loop", "tok_per_s")),
                         ("workbench.extract, default (bf16)", _get(res, "extract_auto", "tok_per_s")),
                         ("workbench.extract, fp32", _get(res, "extract_fp32", "tok_per_s"))):
        lines.append(f"| {label} | {value if value is not None else '—'} | {_ratio(value, bf16)} |")
    lines += ["", f"Goal: extraction ÷ bf16 forward ≥ {GOALS['extract_vs_bf16_forward']}.", ""]
    bare = _get(res, "bare_bf16", "tok_per_s")
    lines += ["### SAE training (same batches, made on the device)", "",
              "| trainer | precision | tokens | tokens/s | ÷ bare bf16 | FVE | L0 | dead |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for key in ("train_ours", "train_ours_sparse", "bare_fp32", "bare_bf16", "saelens", "dictionary_learning", "overcomplete"):
        r = res.get(key)
        if not isinstance(r, dict):
            continue
        if "tok_per_s" not in r:
            lines.append(f"| {key} | | | {r.get('skipped') or r.get('failed')} | | | | |")
            continue
        lines.append(f"| {r['name']}{' (sparse kernels)' if key == 'train_ours_sparse' else ''} | {r['precision']} | "
                     f"{r.get('tokens', 0):,} | {r['tok_per_s']:,} | {_ratio(r['tok_per_s'], bare)} | {r['fve']} | {r['l0']} | {r['dead']} |")
    lines += ["", f"Goal: ours ÷ bare bf16 ≥ {GOALS['train_vs_bare_bf16']}, and ≥ the fastest peer at equal or better FVE.", ""]
    op = res.get("one_pass")
    if isinstance(op, dict) and "ratio" in op:
        lines += ["### Several SAEs from one pass", "",
                  f"k {op['ks']} together: {op['four_s']} s; k {f['sae']['k']} alone: {op['one_s']} s; ratio **{op['ratio']}** "
                  f"(goal ≤ {GOALS['one_pass_4_vs_1']}). Held-out FVE: {op['fve']}.", ""]
    elif op is not None:
        lines += ["### Several SAEs from one pass", "", f"{op}", ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
