"""Streamed association against the in-memory one: same tables, time and peak memory, on the demo's real data.

Run on demand (not a test)::

    .venv/bin/python benchmarks/bench_stream_associate.py [--permutations 0,20] [--counts-only] [--no-write]

Needs the antibody demo's outputs in ``benchmarks/out/demo`` (``make demo`` or ``benchmarks/bench_demo.py``): the
AntiBERTy layer-4 store of the Thera-SAbDab chains and its TopK SAE. Concept labels: ANARCI regions, IMGT positions
and residues plus motifs (``--source anarci --source motif``, as the demo annotates). Each mode runs in a fresh
process (peak resident memory is that process's ``VmHWM``): ``workbench.associate.associate_store`` (feature matrix
in memory) and ``workbench.stream_associate.associate_streaming`` (shard by shard), with and without the permutation
null; the parent checks that both give the same tables and appends a dated section to ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
DEMO = HERE / "out" / "demo"
STORE = DEMO / "thera_antiberty_L4"
SAE = DEMO / "sae_thera_antiberty_L4_topk32"

CHILD = r"""
import json, pickle, sys, time
import workbench
from workbench.sae import load_sae
mode, perms, labels_path, out_path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
store = workbench.open_store({store!r})
labels = pickle.load(open(labels_path, "rb"))
sae = load_sae({sae!r})
t = time.perf_counter()
if mode == "memory":
    from workbench.associate import associate_store
    res = associate_store(store, labels, layer=4, sae=sae, n_permutations=perms)
elif mode == "stream":
    from workbench.stream_associate import associate_streaming
    res = associate_streaming(store, labels, layer=4, sae=sae, n_permutations=perms)
elif mode == "memory-counts":  # the association alone: the feature matrix is built first, not timed
    from workbench.associate import associate, feature_matrix
    features = feature_matrix(store, sae, layer=4)
    ids = store.sequences["sequence_id"].astype(str).tolist()
    token_sequence = store.token_sequence()
    t = time.perf_counter()
    res = associate(features, labels, ids, token_sequence, n_permutations=perms)
else:  # stream-counts: the maxima pass fills the code cache first, not timed; then the counts from the cache
    import tempfile
    from pathlib import Path
    from workbench.stream_associate import associate_streaming, feature_maxima
    cache = Path(tempfile.mkdtemp(prefix="bench_codes_"))
    maxima = feature_maxima(store, layer=4, sae=sae, cache=cache)
    t = time.perf_counter()
    res = associate_streaming(store, labels, layer=4, sae=sae, n_permutations=perms, maxima=maxima, code_cache=cache)
seconds = time.perf_counter() - t
pickle.dump(res, open(out_path, "wb"))
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({{"seconds": seconds, "peak_mib": hwm / 1024}}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--permutations", default="0,20", help="comma-separated permutation counts")
    ap.add_argument("--counts-only", action="store_true",
                    help="time the association alone (the in-memory feature matrix and the streamed code cache built "
                         "first, untimed), as bench_associate's tokens x features / s does")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args()
    modes = ("memory-counts", "stream-counts") if args.counts_only else ("memory", "stream")
    if not (STORE / "manifest.json").is_file() or not (SAE / "sae.safetensors").is_file():
        print(f"needs the demo outputs in {DEMO} (make demo)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT))
    import workbench
    from workbench.registry import labels_for

    store = workbench.open_store(STORE)
    t0 = time.perf_counter()
    labels = labels_for(store, ["anarci", "motif"], domain="sequence")
    t_labels = time.perf_counter() - t0
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_stream_") as tmp:
        labels_path = Path(tmp) / "labels.pkl"
        with open(labels_path, "wb") as fh:
            pickle.dump(labels, fh)
        script = CHILD.format(store=str(STORE), sae=str(SAE))
        for perms in [int(p) for p in args.permutations.split(",") if p.strip()]:
            results = {}
            for mode in modes:
                out = Path(tmp) / f"{mode}_{perms}.pkl"
                proc = subprocess.run([sys.executable, "-c", script, mode, str(perms), str(labels_path), str(out)],
                                      capture_output=True, text=True, cwd=ROOT, timeout=3600)
                if proc.returncode:
                    print(proc.stderr[-3000:], file=sys.stderr)
                    return 1
                m = json.loads(proc.stdout.strip().splitlines()[-1])
                with open(out, "rb") as fh:
                    results[mode] = pickle.load(fh)
                rows.append({"mode": mode, "permutations": perms, **m})
                print(rows[-1], flush=True)
            a, b = results[modes[0]], results[modes[1]]
            rows[-1]["identical"] = all(getattr(a, f).equals(getattr(b, f)) for f in ("pairs", "best", "thresholds"))
    width = int(json.loads((SAE / "cfg.json").read_text())["sae"]["width"])
    lines = [
        f"## {time.strftime('%Y-%m-%d')} — bench_stream_associate (demo store, streamed vs in-memory association)", "",
        f"Machine: {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), Python {platform.python_version()}; "
        f"load average at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}. Store: {STORE.name} ({store.n_tokens:,} tokens, "
        f"{len(store.shards)} shards), SAE {SAE.name} (width {width}); labels anarci + motif "
        f"({labels.tokens.shape[1]} token concepts, built in {t_labels:.0f} s). Each row a fresh process; "
        + ("seconds are the association alone: the in-memory feature matrix and the streamed path's code cache "
           "(the maxima pass) are built first and not timed; the streamed path reads the cached codes of each shard."
           if args.counts_only else
           "seconds include encoding every token with the SAE (the streamed path encodes once for the maxima, once "
           "for the counts, and once per group of permutations)."), "",
        "| path | permutations | seconds | tokens x features / s | peak RSS (MiB) | tables identical |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        rate = store.n_tokens * width / r["seconds"]
        memory = r["mode"].startswith("memory")
        same = "" if memory else ("yes" if r.get("identical") else "**no**")
        lines.append(f"| {'in memory' if memory else 'streamed'} | {r['permutations']} | {r['seconds']:.1f} | "
                     f"{rate:.3g} | {r['peak_mib']:,.0f} | {same} |")
    for perms in sorted({r["permutations"] for r in rows}):
        pair = [r for r in rows if r["permutations"] == perms]
        if len(pair) == 2:
            lines.append(f"\nStreamed / in-memory throughput, {perms} permutations: "
                         f"**{pair[0]['seconds'] / pair[1]['seconds']:.2f}**.")
    section = "\n".join(lines) + "\n"
    from _machine import record

    record(section, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
