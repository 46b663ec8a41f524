"""SAE training benchmark: our trainer against SAELens, dictionary_learning and overcomplete, in one process.

Run on demand from the benchmark environment (this is not a test; the peers are never installed in ``.venv``)::

    make bench-venv                                            # .venv-bench: torch 2.13.0 CPU, the package, the peers
    .venv-bench/bin/python benchmarks/bench_sae.py               # full run, appends a section to benchmarks/RESULTS.md
    .venv-bench/bin/python benchmarks/bench_sae.py --quick       # 40 steps, prints only
    .venv-bench/bin/python benchmarks/bench_sae.py --n-tokens 2000000 --only ours,saelens

Same activations (AntiBERTy layer 4 of the bundled OAS heavy chains and Thera-SAbDab chains, extracted once and cached
under ``benchmarks/out/``), same architecture (TopK, k=32, 4096 latents), same token budget, batch size, Adam learning
rate and schedule (linear warm-up, constant, linear decay over the last 20%) for every trainer. Each trainer reads
the store's training split (sequences outside the 5% hold-out) in the same order; see ``sae_peers.py`` for how each
library is driven and what it does about normalisation.

Reported per trainer: training tokens/s of the loop (first step excluded as warm-up; data loading included), the
whole training call's tokens/s, and on the held-out tokens (``split="test"``, up to 50,000) in model units: the
fraction of variance explained FVE = 1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2, the mean number of active
latents L0, and the share of latents never active there. The machine's float32 matmul throughput is measured in the
same process (the three dense matmul shapes of a 4096-token step, best of several runs) and compared with a dense TopK
step's nominal 6 * batch * d * width FLOPs.

Before each timed part the script waits while another process keeps a core busy (timings on 2 shared cores would be
meaningless), and records the load average.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

os.environ.setdefault("TQDM_DISABLE", "1")  # the libraries' progress bars read it when tqdm is first imported

import torch  # noqa: E402

import sae_peers  # noqa: E402
from sae_peers import Run, Setup  # noqa: E402

RESULTS = HERE / "RESULTS.md"
STORE_DIR = HERE / "out" / "antiberty_oas_thera_L4"
LAYER = 4
WIDTH, K, BATCH = 4096, 32, 4096
DEFAULT_TOKENS = 1_000_000
EVAL_TOKENS = 50_000
SPEEDUP_TARGET = 2.0
SAELENS_SPEEDUP = 3.0
CONTENDED = 0.05


# ----------------------------------------------------------------------------------------------------------- inputs


def open_or_build_store(path: Path) -> Any:
    """The AntiBERTy layer-4 store of all bundled OAS heavy chains and Thera-SAbDab chains (built once, ~1-2 min)."""
    import workbench

    if (path / "manifest.json").is_file():
        return workbench.open_store(path)
    from domains.sequence.readers import bundled, read_table

    records = read_table(bundled("oas_human_igg_memory_b_vh"), id_col="seq_id", seq_cols="sequence_alignment_aa")
    records += read_table(bundled("therasabdab"), id_col="Therapeutic", seq_cols={"HC": "heavy", "LC": "light"})
    print(f"extracting AntiBERTy layer {LAYER} of {len(records)} sequences to {path} ...", flush=True)
    t0 = time.perf_counter()
    store = workbench.extract("antiberty", records, layers=[LAYER], out=path, progress=False, overwrite=True)
    print(f"  {store.n_tokens:,} tokens in {time.perf_counter() - t0:.0f} s", flush=True)
    return store


def held_out_tokens(store: Any, n: int, holdout_fraction: float, *, layer: int = LAYER) -> torch.Tensor:
    parts, total = [], 0
    for batch in store.iter_batches(layer, 8192, shuffle=False, split="test", holdout_fraction=holdout_fraction):
        parts.append(batch)
        total += len(batch)
        if total >= n:
            break
    return torch.cat(parts)[:n].float()


# ----------------------------------------------------------------------------------------------------------- machine


def other_busy_processes(threshold: float = 40.0) -> list[str]:
    """Processes other than this one using more than ``threshold`` % of a core over one second."""
    import psutil

    me = os.getpid()
    procs = [p for p in psutil.process_iter(["pid", "name", "cmdline"]) if p.info["pid"] != me]
    for p in procs:
        try:
            p.cpu_percent(None)
        except psutil.Error:
            pass
    time.sleep(1.0)
    busy = []
    for p in procs:
        try:
            pct = p.cpu_percent(None)
        except psutil.Error:
            continue
        if pct > threshold:
            cmd = " ".join(" ".join(p.info.get("cmdline") or [p.info.get("name") or "?"]).split())
            busy.append(f"pid {p.info['pid']} {pct:.0f}% {cmd[:80]}")
    return busy


def wait_for_quiet(label: str, max_wait_s: float, log: list[str]) -> None:
    waited = 0.0
    while True:
        busy = other_busy_processes()
        if not busy:
            if waited:
                log.append(f"{label}: waited {waited:.0f} s for other processes to finish")
            return
        if waited >= max_wait_s:
            msg = f"{label}: still busy after {waited:.0f} s, timing anyway: {'; '.join(busy)}"
            print("WARNING " + msg, flush=True)
            log.append(msg)
            return
        print(f"{label}: other processes busy ({'; '.join(busy)}); waiting 30 s", flush=True)
        time.sleep(30)
        waited += 30


class CpuWatch:
    """Share of the machine's CPU time used by other processes between ``start()`` and ``stop()``.

    System-wide busy time (``/proc/stat`` through psutil) minus this process's own CPU time, over wall time x CPUs;
    it counts short-lived processes too. A timed run where others took more than a few percent was contended.
    """

    def start(self) -> None:
        import psutil

        self._proc = psutil.Process()
        self._t = time.perf_counter()
        self._busy = self._system_busy()
        self._own = self._own_cpu()

    @staticmethod
    def _system_busy() -> float:
        import psutil

        c = psutil.cpu_times()
        return sum(getattr(c, f) for f in ("user", "nice", "system", "irq", "softirq", "steal") if hasattr(c, f))

    def _own_cpu(self) -> float:
        """This process and its children, live or finished (a trainer may start helper processes)."""
        import psutil

        c = self._proc.cpu_times()
        total = c.user + c.system + c.children_user + c.children_system
        for child in self._proc.children(recursive=True):
            try:
                cc = child.cpu_times()
                total += cc.user + cc.system
            except psutil.Error:
                pass
        return total

    def stop(self) -> float:
        wall = time.perf_counter() - self._t
        other = (self._system_busy() - self._busy) - (self._own_cpu() - self._own)
        return max(0.0, other) / max(wall * (os.cpu_count() or 1), 1e-9)


def matmul_gflops(repeats: int = 8) -> dict[str, float]:
    """Best float32 GFLOP/s of the dense matmul shapes in a TopK SAE step on a 4096-token batch (d=512, width 4096)."""
    d = 512
    g = torch.Generator().manual_seed(0)
    shapes = {
        "x @ W_enc (4096x512 @ 512x4096)": (torch.randn(BATCH, d, generator=g), torch.randn(d, WIDTH, generator=g)),
        "z @ W_dec (4096x4096 @ 4096x512)": (torch.randn(BATCH, WIDTH, generator=g), torch.randn(WIDTH, d, generator=g)),
        "x^T @ dz (512x4096 @ 4096x4096)": (torch.randn(d, BATCH, generator=g), torch.randn(BATCH, WIDTH, generator=g)),
    }
    out = {}
    for name, (a, b) in shapes.items():
        flops = 2.0 * a.shape[0] * a.shape[1] * b.shape[1]
        for _ in range(2):
            torch.mm(a, b)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - t0)
        out[name] = flops / best / 1e9
    return out


def machine_facts() -> dict[str, str]:
    from _machine import cpu_model

    cpu = cpu_model()
    import transformers

    return {
        "cpus": str(os.cpu_count()),
        "cpu": cpu,
        "torch": f"{torch.__version__} with {torch.get_num_threads()} threads",
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


# --------------------------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(run: Run, x: torch.Tensor, width: int, device: str = "cpu") -> dict[str, float]:
    """FVE, L0 and never-active share on ``x`` in model units (batches reconstructed on ``device``)."""
    sse, l0_sum, n = 0.0, 0.0, 0
    fired = torch.zeros(width, dtype=torch.bool)
    mean = x.double().mean(0)
    sst = float((x.double() - mean).pow(2).sum())
    for start in range(0, len(x), 4096):
        xb = x[start : start + 4096]
        x_hat, codes = run.reconstruct(xb.to(device))
        if codes.is_sparse:
            codes = codes.to_dense()
        codes = codes.reshape(len(xb), -1)
        sse += float((xb.double() - x_hat.double().cpu()).pow(2).sum())
        active = codes != 0
        l0_sum += float(active.sum())
        fired[: codes.shape[1]] |= active.any(0).cpu()
        n += len(xb)
    return {"fve": 1.0 - sse / sst, "l0": l0_sum / n, "dead": 1.0 - float(fired.float().mean())}


# ------------------------------------------------------------------------------------------------------------ report


def fmt_int(v: float) -> str:
    return f"{v:,.0f}"


def report(runs: list[Run], evals: dict[str, dict[str, float]], skipped: dict[str, str], failed: dict[str, str],
           setup: Setup, peak_gflops: float, mm_before: dict[str, float], mm_after: dict[str, float],
           facts: dict[str, str], log: list[str], store: Any, n_eval: int, load_start: str, total_s: float) -> str:
    d = store.d_model
    flops_per_token = 6.0 * d * setup.width
    ours = next((r for r in runs if r.name.startswith("ours")), None)
    lines = [
        f"## {dt.datetime.now(dt.timezone.utc).date().isoformat()} — bench_sae ({setup.n_tokens:,} training tokens)",
        "",
        f"Machine: {facts['cpus']} CPUs ({facts['cpu']}), torch {facts['torch']}, transformers {facts['transformers']}, "
        f"Python {facts['python']}; load average at start {load_start}. Whole run {total_s:.0f} s.",
        "",
        f"Data: AntiBERTy layer {LAYER} of the bundled OAS heavy chains + Thera-SAbDab chains ({store.n_sequences:,} "
        f"sequences, {store.n_tokens:,} tokens, d_model {d}), float16 store; training split = sequences outside the "
        f"{setup.holdout_fraction:.0%} hold-out, evaluation on {n_eval:,} held-out tokens (split=\"test\").",
        "",
        f"Setup, same for all: TopK, k={setup.k}, width {setup.width}, batch {setup.batch_size}, {setup.steps} steps "
        f"({setup.n_tokens:,} tokens), Adam lr {setup.lr:g} (betas 0.9/0.999), linear warm-up {setup.warmup_steps} "
        f"steps, linear decay to 0 over the last {1 - setup.decay_start:.0%}, gradient-norm clip 1.0, float32, "
        f"one process, batches read from the store in the same order inside every loop.",
        "",
        "| trainer | version | loop tokens/s | ours ÷ this | whole call tokens/s | FVE | L0 | dead % | fraction of matmul peak |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        e = evals[r.name]
        ratio = (ours.tokens_per_s / r.tokens_per_s) if ours else float("nan")
        frac = r.tokens_per_s * flops_per_token / (peak_gflops * 1e9)
        mark = " (contended)" if r.extra.get("other_cpu", 0.0) > CONTENDED else ""
        lines.append(
            f"| {r.name}{mark} | {r.version} | {fmt_int(r.tokens_per_s)} | {'1.00' if r is ours else f'{ratio:.2f}x'} | "
            f"{fmt_int(setup.n_tokens / r.call_seconds)} | {e['fve']:.4f} | {e['l0']:.1f} | {100 * e['dead']:.1f} | "
            f"{frac:.2f} |"
        )
    for name, why in {**skipped, **failed}.items():
        lines.append(f"| {name} | — | not run | | | | | | |")
    lines.append("")
    lines.append(
        "- Other processes' share of the machine's CPU while each trainer ran (system-wide busy time minus this "
        "process's own): " + ", ".join(f"{r.name} {100 * r.extra.get('other_cpu', 0.0):.1f}%" for r in runs)
        + f"; a row above {100 * CONTENDED:.0f}% is marked contended and its speed is not comparable."
    )
    lines.append(
        "- *loop tokens/s*: (steps - 1) x batch / time from the request of the second training batch to the end of "
        "the training call (the first step is the warm-up; reading and converting store batches is inside every "
        "loop). *ours ÷ this*: how many times faster ours is. *whole call*: all training tokens / wall time of the "
        "training call, including setup and each library's normalisation estimate."
    )
    lines.append(
        f"- *fraction of matmul peak*: loop tokens/s x 6 x d x width ({flops_per_token / 1e6:.1f} MFLOP per token, "
        f"the forward and backward matmuls of a dense TopK SAE) / the best measured float32 matmul rate, "
        f"{peak_gflops:.0f} GFLOP/s. Measured before the trainers: "
        + ", ".join(f"{k} {v:.0f}" for k, v in mm_before.items())
        + "; after: " + ", ".join(f"{k} {v:.0f}" for k, v in mm_after.items()) + " GFLOP/s."
    )
    if ours is not None:
        lines.append(
            "- The FLOP count is that of a dense step. A trainer that works on the k selected latents only (ours "
            "computes the dense encoder pre-activations, 2 x d x width per token, then decodes and backpropagates "
            "through the selected entries) executes fewer FLOPs, so for it the fraction is a dense-equivalent rate."
        )
        internal = ours.extra.get("internal_tokens_per_s")
        if internal:
            lines.append(f"- Ours, as measured inside `train_sae` (all steps, from before the first batch): "
                         f"{fmt_int(internal)} tokens/s.")
    peers = [r for r in runs if r is not ours and not r.name.startswith("bare")]
    if ours is not None and peers:
        fastest = max(peers, key=lambda r: r.tokens_per_s)
        best = max(peers, key=lambda r: evals[r.name]["fve"])
        our_fve = evals[ours.name]["fve"]
        speedup = ours.tokens_per_s / fastest.tokens_per_s
        met = speedup >= SPEEDUP_TARGET and our_fve >= evals[fastest.name]["fve"]
        lines.append(
            f"- Target, >= {SPEEDUP_TARGET:.0f}x the fastest peer at equal or better FVE: the fastest peer is "
            f"{fastest.name} ({fmt_int(fastest.tokens_per_s)} tokens/s, FVE {evals[fastest.name]['fve']:.4f}); ours is "
            f"{speedup:.2f}x faster at FVE {our_fve:.4f} — **{'met' if met else 'missed'}**."
        )
        if evals[best.name]["fve"] > our_fve:
            lines.append(
                f"- FVE against every peer: **behind {best.name}** ({evals[best.name]['fve']:.4f} vs {our_fve:.4f}, "
                f"{ours.tokens_per_s / best.tokens_per_s:.2f}x slower than ours; its dead latents: "
                f"{100 * evals[best.name]['dead']:.1f}% vs ours {100 * evals[ours.name]['dead']:.1f}%)."
            )
        else:
            lines.append(f"- FVE against every peer: ours is highest ({our_fve:.4f}; best peer {best.name} "
                         f"{evals[best.name]['fve']:.4f}).")
        saelens = next((r for r in peers if r.name == "SAELens"), None)
        if saelens is not None:
            ratio = ours.tokens_per_s / saelens.tokens_per_s
            met = our_fve >= evals[saelens.name]["fve"] and ratio >= SAELENS_SPEEDUP
            lines.append(
                f"- Against SAELens at equal settings (held-out FVE >= its, at >= {SAELENS_SPEEDUP:.0f}x its speed): "
                f"FVE {our_fve:.4f} vs {evals[saelens.name]['fve']:.4f}, {ratio:.2f}x faster — "
                f"**{'met' if met else 'missed'}**.")
    bare = next((r for r in runs if r.name.startswith("bare")), None)
    if ours is not None and bare is not None:
        lines.append(f"- Bare PyTorch reference loop: FVE {evals[bare.name]['fve']:.4f}; ours is "
                     f"{ours.tokens_per_s / bare.tokens_per_s:.2f}x its speed.")
    lines.append("")
    lines.append("How each trainer is driven and what it does to the inputs:")
    lines.append("")
    for r in runs:
        lines.append(f"- **{r.name}**: `{r.api}`. Normalisation: {r.normalisation}." +
                     (" " + " ".join(n.rstrip(".") + "." for n in r.notes) if r.notes else ""))
    for name, why in skipped.items():
        lines.append(f"- **{name}**: not run: {why}")
    for name, why in failed.items():
        lines.append(f"- **{name}**: failed: {why}")
    for entry in log:
        lines.append(f"- {entry}")
    return "\n".join(lines) + "\n"


def append_results(section: str) -> None:
    if not RESULTS.exists():
        RESULTS.write_text("# Benchmark results\n\nNewest last.\n")
    text = RESULTS.read_text()
    with RESULTS.open("a") as fh:
        fh.write(("\n" if text.endswith("\n") else "\n\n") + section)


# -------------------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-tokens", type=int, default=None, help=f"training tokens per trainer (default {DEFAULT_TOKENS:,})")
    ap.add_argument("--quick", action="store_true", help="40 steps, print only (no RESULTS.md section)")
    ap.add_argument("--only", default="", help="comma-separated subset of: " + ",".join(sae_peers.TRAINERS))
    ap.add_argument("--store", type=Path, default=STORE_DIR, help="activation store (built there when missing)")
    ap.add_argument("--lr", type=float, default=4e-4)
    ap.add_argument("--no-write", action="store_true", help="do not append to benchmarks/RESULTS.md")
    ap.add_argument("--retries", type=int, default=2, help="train a trainer again when its run was contended")
    ap.add_argument("--max-wait", type=float, default=900.0, help="seconds to wait for other busy processes per part")
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    load_start = " ".join(f"{v:.2f}" for v in os.getloadavg())
    n_tokens = args.n_tokens or (40 * BATCH if args.quick else DEFAULT_TOKENS)
    steps = n_tokens // BATCH
    if steps < 10:
        ap.error("need at least 10 steps (n_tokens >= 40960)")
    write = not (args.quick or args.no_write)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(sae_peers.TRAINERS)
    unknown = set(names) - set(sae_peers.TRAINERS)
    if unknown:
        ap.error(f"unknown trainers {sorted(unknown)}")

    store = open_or_build_store(args.store)
    setup = Setup(store=store, layer=LAYER, width=WIDTH, k=K, batch_size=BATCH, steps=steps, lr=args.lr,
                  warmup_steps=min(100, steps // 5), decay_start=0.8)
    x_eval = held_out_tokens(store, EVAL_TOKENS, setup.holdout_fraction)
    facts = machine_facts()
    print(f"store {args.store}: {store.n_tokens:,} tokens, d_model {store.d_model}; {len(x_eval):,} held-out tokens; "
          f"{steps} steps of {BATCH}; torch {facts['torch']}", flush=True)

    skipped: dict[str, str] = {}
    for name in names:
        if name in sae_peers.PEER_IMPORTS:
            why = sae_peers.peer_available(name)
            if why:
                skipped[name] = why
                print(f"skipping {name}: {why}", flush=True)

    log: list[str] = []
    wait_for_quiet("matmul", args.max_wait, log)
    watch = CpuWatch()
    watch.start()
    mm_before = matmul_gflops()
    mm_other = [watch.stop()]
    print("matmul GFLOP/s: " + ", ".join(f"{k} {v:.0f}" for k, v in mm_before.items()), flush=True)

    runs: list[Run] = []
    evals: dict[str, dict[str, float]] = {}
    failed: dict[str, str] = {}
    for name in names:
        if name in skipped:
            continue
        run = None
        for attempt in range(1 + max(0, args.retries)):
            wait_for_quiet(name, args.max_wait, log)
            load = " ".join(f"{v:.2f}" for v in os.getloadavg())
            print(f"training {name} (load {load}) ...", flush=True)
            watch = CpuWatch()
            watch.start()
            try:
                this = sae_peers.TRAINERS[name](setup)
            except Exception as exc:  # noqa: BLE001 - one failing peer must not lose the others' numbers
                traceback.print_exc()
                if run is None:
                    failed[name] = f"{type(exc).__name__}: {exc}"
                else:
                    log.append(f"{name}: the repeat run failed ({type(exc).__name__}: {exc}); the first run is kept")
                break
            this.extra["other_cpu"] = watch.stop()
            print(f"  {this.name}: loop {this.tokens_per_s:,.0f} tokens/s ({this.loop_seconds:.1f} s for "
                  f"{this.loop_steps} steps), call {this.call_seconds:.1f} s; other processes used "
                  f"{100 * this.extra['other_cpu']:.1f}% of the CPU meanwhile", flush=True)
            if run is None or this.extra["other_cpu"] < run.extra["other_cpu"]:
                run = this
            if this.extra["other_cpu"] <= CONTENDED:
                break
            if attempt < args.retries:
                log.append(f"{name}: run {attempt + 1} contended (other processes "
                           f"{100 * this.extra['other_cpu']:.1f}% of the CPU); trained again, least contended run kept")
        if run is None:
            continue
        runs.append(run)
        evals[run.name] = evaluate(run, x_eval, setup.width)
        e = evals[run.name]
        print(f"  {run.name}: FVE {e['fve']:.4f}, L0 {e['l0']:.1f}, dead {100 * e['dead']:.1f}%", flush=True)

    wait_for_quiet("matmul (after)", args.max_wait, log)
    watch.start()
    mm_after = matmul_gflops()
    mm_other.append(watch.stop())
    if max(mm_other) > CONTENDED:
        log.append(f"matmul measurements: other processes used {100 * mm_other[0]:.1f}% (before) and "
                   f"{100 * mm_other[1]:.1f}% (after) of the CPU; the peak is the best of both")
    peak = max(max(mm_before.values()), max(mm_after.values()))
    section = report(runs, evals, skipped, failed, setup, peak, mm_before, mm_after, facts, log, store, len(x_eval),
                     load_start, time.perf_counter() - t_start)
    print()
    print(section)
    if write:
        append_results(section)
        print(f"appended to {RESULTS}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
