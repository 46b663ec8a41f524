"""The annotation stage at scale: streamed ``annotate`` on the demo store and on a store ten times its size, with a
16,384-feature SAE; peak resident memory and wall time on 1 and 2 processes.

Run on demand (not a test)::

    .venv/bin/python benchmarks/bench_stream_annotate.py [--repeat 10] [--no-write]

Needs the antibody demo's outputs in ``benchmarks/out/demo`` (``make demo`` or ``benchmarks/bench_demo.py``): the
real AntiBERTy layer-4 activations of the Thera-SAbDab chains (255,683 residues). The script builds, in
``benchmarks/out/scale`` (kept between runs):

* ``store_x10``: the demo store repeated ``--repeat`` times with new sequence ids (``<id>~r``): the activation files
  are hard links to the demo's, the token tables are rewritten with the new ids, every shard is hashed;
* ``labels``: ANARCI regions, IMGT positions and motifs of the demo store (``--source anarci --source motif``),
  tiled for the large store (the same chains, so the same labels; ANARCI is not run ten times). With ``--labels
  shards`` (the default) they are held per shard (:mod:`workbench.label_shards`), as ``workbench annotate --stream``
  builds them: the demo store's by running ANARCI on each shard (timed, and checked equal to the whole-store labels),
  the large store's by cutting the tiled labels shard by shard; ``--labels whole`` passes one whole-store
  ``ConceptLabels`` instead (the earlier runs);
* ``sae_16k``: a TopK SAE (width 16,384, k 32) trained on the demo store's layer 4 (real activations).

Each run is a fresh process (``torchrun`` for 2 processes) calling ``workbench.annotate(..., stream=True)`` as
``workbench annotate --stream`` does, with the same options on both stores (the sample of the matrix analyses is
capped at 262,144 tokens, about the demo store); it reports its wall time and peak resident memory (``VmHWM``; for 2
processes the larger rank's and the sum). The 1- and 2-process catalogs of the large store are compared table by
table. A dated section goes to ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
DEMO = HERE / "out" / "demo" / "thera_antiberty_L4"
SCALE = HERE / "out" / "scale"
LAYER = 4

CHILD = r"""
import json, os, pickle, sys, time
import workbench
from workbench._pipeline import AnnotateConfig
store, sae, labels_path, out, options = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], json.loads(sys.argv[5])
if os.path.isdir(labels_path):  # labels held per shard
    from workbench.label_shards import LabelShards
    labels = LabelShards(labels_path)
else:
    labels = pickle.load(open(labels_path, "rb"))
t = time.perf_counter()
workbench.annotate(store, sae, labels, layer=4, out=out, config=AnnotateConfig(**options), stream=True,
                   progress=os.environ.get("RANK", "0") == "0", overwrite=True)
seconds = time.perf_counter() - t
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
rank = os.environ.get("RANK", "0")
with open(out + f".rank{rank}.json", "w") as fh:
    json.dump({"seconds": seconds, "peak_mib": hwm / 1024}, fh)
"""

OPTIONS = {"n_permutations": 4, "n_bootstrap": 200, "n_causal": 4, "causal_sequences": 4, "probe_cv": 3,
           "sample_tokens": 262_144}


def tiled_labels(labels, repeat: int):  # type: ignore[no-untyped-def]
    """``labels`` of a store repeated ``repeat`` times: rows tiled, span ids kept apart per copy."""
    import numpy as np
    import scipy.sparse as sp

    from workbench.concepts import ConceptLabels

    inst = labels.instances.tocsr()
    step = int(inst.data.max(initial=0)) + 1
    copies = []
    for r in range(repeat):
        c = inst.copy()
        c.data = c.data + np.int32(r * step) * (c.data > 0)
        copies.append(c)
    tc = labels.token_concepts.copy()
    for col in ("n_tokens", "n_instances", "n_sequences"):
        if col in tc:
            tc[col] = tc[col] * repeat
    sc = labels.sequence_concepts.copy()
    if "n_sequences" in sc:
        sc["n_sequences"] = sc["n_sequences"] * repeat
    import pandas as pd

    measures = None if labels.measures is None else pd.concat([labels.measures] * repeat, ignore_index=True)
    return ConceptLabels(sp.vstack([labels.tokens] * repeat, format="csr"), sp.vstack(copies, format="csr"), tc,
                         sp.vstack([labels.sequences] * repeat, format="csr"), sc,
                         {k: np.tile(v, repeat) for k, v in labels.scopes.items()},
                         {k: np.tile(v, repeat) for k, v in labels.sequence_scopes.items()}, measures)


def repeated_store(source: Path, out: Path, repeat: int) -> None:
    """``source`` repeated ``repeat`` times with new sequence ids; activations hard-linked."""
    import pandas as pd

    from workbench.store import MANIFEST, OBS_FILE, file_sha256, open_store, write_json_atomic

    store = open_store(source)
    work = out.with_name(out.name + ".tmp")
    shutil.rmtree(work, ignore_errors=True)
    (work / "shards").mkdir(parents=True)
    seqs, shards = [], []
    n = len(store.shards)
    for r in range(repeat):
        for i, info in enumerate(store.shards):
            name = f"shard-{r * n + i:05d}"
            folder = work / "shards" / name
            folder.mkdir()
            os.link(store.shard_dir(i) / f"layer_{LAYER}.npy", folder / f"layer_{LAYER}.npy")
            obs = store.shard_obs(i)
            obs["sequence_id"] = obs["sequence_id"].astype(str) + f"~{r}"
            obs.to_parquet(folder / OBS_FILE, index=False)
            shards.append({"name": name, "n_tokens": info.n_tokens, "n_sequences": info.n_sequences,
                           "first_sequence": r * store.n_sequences + info.first_sequence,
                           "sha256": {f.name: file_sha256(f) for f in sorted(folder.iterdir())}})
        part = store.sequences.copy()
        part["sequence_id"] = part["sequence_id"].astype(str) + f"~{r}"
        part["shard"] = part["shard"] + r * n
        seqs.append(part)
    pd.concat(seqs, ignore_index=True).to_parquet(work / "sequences.parquet", index=False)
    manifest = dict(store.manifest)
    manifest.update({"n_tokens": store.n_tokens * repeat, "n_sequences": store.n_sequences * repeat, "shards": shards,
                     "repeated_from": {"path": str(source), "repeat": repeat}})
    write_json_atomic(work / MANIFEST, manifest)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(work, out)


def label_shards(repeat: int, demo_labels: Path, big_labels: Path, info: dict) -> tuple[Path, Path]:  # type: ignore[type-arg]
    """The demo's and the large store's labels held per shard (module docstring)."""
    import numpy as np

    import workbench
    from workbench._subset import labels_of_tokens
    from workbench.label_shards import build_label_shards, token_block
    from workbench.registry import labels_for

    demo_dir, big_dir = SCALE / "label_shards_demo", SCALE / f"label_shards_x{repeat}"
    demo = workbench.open_store(DEMO)
    if not (demo_dir / "labels.json").is_file():
        t = time.perf_counter()
        shards = build_label_shards(demo, lambda view: labels_for(view, ["anarci", "motif"], domain="sequence"),
                                    demo_dir, key="anarci,motif")
        info["label_shards_demo_s"] = round(time.perf_counter() - t, 1)
        with open(demo_labels, "rb") as fh:
            whole = pickle.load(fh)
        block = token_block(shards, 0, shards.n_tokens)
        info["label_shards_equal_whole"] = bool(
            shards.token_concepts.equals(whole.token_concepts) and (block.tokens != whole.tokens.tocsr()).nnz == 0
            and (block.instances != whole.instances.tocsr()).nnz == 0)
    if not (big_dir / "labels.json").is_file():
        big = workbench.open_store(SCALE / f"store_x{repeat}")
        with open(big_labels, "rb") as fh:
            tiled = pickle.load(fh)
        starts = np.concatenate([[0], np.cumsum([s.n_tokens for s in big.shards])])
        token_seq = big.token_sequence()

        def cut(view):  # type: ignore[no-untyped-def]
            i = view.manifest["view_of_shard"]
            rows = np.flatnonzero(big.sequences["shard"].to_numpy() == i)
            local = np.searchsorted(rows, token_seq[starts[i]: starts[i + 1]])
            return labels_of_tokens(tiled, np.arange(starts[i], starts[i + 1]), rows, local)

        t = time.perf_counter()
        build_label_shards(big, cut, big_dir, key="anarci,motif (tiled)")
        info["label_shards_big_s"] = round(time.perf_counter() - t, 1)
    return demo_dir, big_dir


def prepare(repeat: int) -> tuple[Path, Path, Path, Path, dict]:  # type: ignore[type-arg]
    import workbench
    from workbench.registry import labels_for
    from workbench.sae import TrainConfig, train_sae

    SCALE.mkdir(parents=True, exist_ok=True)
    info: dict = {}  # type: ignore[type-arg]
    big = SCALE / f"store_x{repeat}"
    if not (big / "manifest.json").is_file():
        t = time.perf_counter()
        repeated_store(DEMO, big, repeat)
        info["build_store_s"] = round(time.perf_counter() - t, 1)
    demo_labels, big_labels = SCALE / "labels_demo.pkl", SCALE / f"labels_x{repeat}.pkl"
    if not demo_labels.is_file():
        t = time.perf_counter()
        labels = labels_for(workbench.open_store(DEMO), ["anarci", "motif"], domain="sequence")
        info["labels_s"] = round(time.perf_counter() - t, 1)
        with open(demo_labels, "wb") as fh:
            pickle.dump(labels, fh)
    if not big_labels.is_file():
        with open(demo_labels, "rb") as fh:
            labels = pickle.load(fh)
        with open(big_labels, "wb") as fh:
            pickle.dump(tiled_labels(labels, repeat), fh)
    sae = SCALE / "sae_16k"
    if not (sae / "sae.safetensors").is_file():
        t = time.perf_counter()
        train_sae(DEMO, out=sae, layer=LAYER, width=16384, k=32, overwrite=True, progress=False,
                  train=TrainConfig(n_tokens=4 * 255_683, batch_size=4096, loss_recovered_sequences=0))
        info["train_sae_s"] = round(time.perf_counter() - t, 1)
    return big, demo_labels, big_labels, sae, info


def run(store: Path, sae: Path, labels: Path, out: Path, processes: int) -> dict:  # type: ignore[type-arg]
    for old in out.parent.glob(out.name + ".rank*.json"):
        old.unlink()
    args = [str(store), str(sae), str(labels), str(out), json.dumps(OPTIONS)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if processes == 1:
        cmd = [sys.executable, "-c", CHILD, *args]
    else:
        script = SCALE / "child.py"
        script.write_text(CHILD)
        env["OMP_NUM_THREADS"] = "1"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes), str(script), *args]
    t = time.perf_counter()
    proc = subprocess.run(cmd, text=True, env=env, cwd=ROOT, timeout=4 * 3600)
    wall = time.perf_counter() - t
    if proc.returncode:
        raise SystemExit(f"run failed: {cmd}")
    ranks = [json.loads(p.read_text()) for p in sorted(out.parent.glob(out.name + ".rank*.json"))]
    return {"wall_s": wall, "annotate_s": max(r["seconds"] for r in ranks),
            "peak_mib": max(r["peak_mib"] for r in ranks), "peak_mib_sum": sum(r["peak_mib"] for r in ranks)}


def same_catalogs(a: Path, b: Path) -> bool:
    import numpy as np
    import pandas as pd

    import workbench

    x, y = workbench.Catalog.open(a), workbench.Catalog.open(b)
    if set(x.tables) != set(y.tables):
        return False
    for name in x.tables:
        p, q = (t.drop(columns=[c for c in ("seconds",) if c in t.columns]) for t in (x.table(name), y.table(name)))
        try:
            pd.testing.assert_frame_equal(p, q, check_exact=name != "profile", rtol=1e-12)
        except AssertionError:
            print(f"table {name} differs", file=sys.stderr)
            return False
    import anndata

    a, b = (anndata.read_h5ad(Path(c) / "catalog.h5ad") for c in (a, b))  # X in memory (the catalog backs large ones)
    return ((a.X != b.X).nnz == 0 and a.obs.equals(b.obs) and a.uns["examples"].equals(b.uns["examples"])
            and np.array_equal(a.uns["example_activations"], b.uns["example_activations"]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--rows", default="demo-1,big-1,big-2",
                    help="runs to make: demo-1, big-1, big-2 (store-processes); a row left out is read from the last "
                         "run's result.json")
    ap.add_argument("--labels", choices=("shards", "whole"), default="shards",
                    help="labels held per shard (as the CLI streams them) or one whole-store ConceptLabels")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args()
    if not (DEMO / "manifest.json").is_file():
        print(f"needs the demo outputs in {DEMO} (make demo)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT))
    import workbench

    big, demo_labels, big_labels, sae, info = prepare(args.repeat)
    if args.labels == "shards":
        demo_labels, big_labels = label_shards(args.repeat, demo_labels, big_labels, info)
    print("prepared", info, flush=True)
    rows: dict = {}  # type: ignore[type-arg]
    wanted = set(args.rows.split(","))
    result_file = SCALE / ("result.json" if args.labels == "whole" else f"result_{args.labels}.json")
    previous = json.loads(result_file.read_text()) if result_file.is_file() else {}
    whole_run = json.loads((SCALE / "result.json").read_text()) if args.labels != "whole" and (SCALE / "result.json").is_file() else None
    reused = []
    for key, name, store, labels, processes in (("demo-1", "demo", DEMO, demo_labels, 1),
                                                ("big-1", f"x{args.repeat}", big, big_labels, 1),
                                                ("big-2", f"x{args.repeat}", big, big_labels, 2)):
        out = SCALE / f"catalog_{name}_{processes}p{'' if args.labels == 'whole' else '_' + args.labels}"
        if key not in wanted:
            old = previous.get(f"{name}_{processes}p")
            if old is None:
                raise SystemExit(f"no earlier result for {key}: run it")
            rows[(name, processes)] = {**old, "catalog": Path(old["catalog"]), "reused": True}
            reused.append(key)
            continue
        rows[(name, processes)] = {**run(store, sae, labels, out, processes), "catalog": out}
        print(name, processes, rows[(name, processes)], flush=True)
    big_name = f"x{args.repeat}"
    identical = same_catalogs(rows[(big_name, 1)]["catalog"], rows[(big_name, 2)]["catalog"])
    demo_store, large = workbench.open_store(DEMO), workbench.open_store(big)
    catalog = workbench.Catalog.open(rows[(big_name, 1)]["catalog"])
    timings = catalog.summary["annotate_seconds"]
    ratio = rows[(big_name, 1)]["peak_mib"] / rows[("demo", 1)]["peak_mib"]
    lines = [
        f"## {time.strftime('%Y-%m-%d')} — bench_stream_annotate (streamed annotate, demo store and {args.repeat}x, 16k SAE)", "",
        f"Machine: {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), Python {platform.python_version()}; "
        f"load average at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}. Stores: the demo's AntiBERTy layer-4 "
        f"activations of the Thera-SAbDab chains ({demo_store.n_tokens:,} tokens, {len(demo_store.shards)} shards) and "
        f"the same repeated {args.repeat}x with new sequence ids ({large.n_tokens:,} tokens, {len(large.shards)} shards). "
        "SAE: TopK, width 16,384, k 32, trained on the demo store's layer 4. Labels: anarci + motif "
        f"({catalog.summary['n_concepts']} token concepts; tiled for the large store; "
        f"{'held per shard' if args.labels == 'shards' else 'one whole-store ConceptLabels'}). Options: {OPTIONS} (no random "
        "control). Each row a fresh process (torchrun for 2); peak RSS is the process's VmHWM (for 2 processes the "
        "larger rank, and in brackets the sum).", "",
        "| store | processes | wall (s) | annotate (s) | peak RSS (MiB) |",
        "|---|---:|---:|---:|---:|",
    ]
    for (name, processes), r in rows.items():
        extra = f" ({r['peak_mib_sum']:,.0f})" if processes > 1 else ""
        mark = " (earlier run)" if r.get("reused") else ""
        lines.append(f"| {name}{mark} | {processes} | {r['wall_s']:.0f} | {r['annotate_s']:.0f} | {r['peak_mib']:,.0f}{extra} |")
    two = rows[(big_name, 2)]["annotate_s"] / rows[(big_name, 1)]["annotate_s"]
    lines += ["", f"Peak RSS {args.repeat}x / demo (1 process): **{ratio:.2f}** (goal <= 1.2). 2 processes / 1 on the "
              f"large store: wall-time ratio {two:.2f} (2 cores); catalogs identical: {'yes' if identical else '**no**'}.",
              "", "Stage times of the large store, 1 process (s): "
              + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()) + "."]
    if whole_run is not None and f"{big_name}_1p" in whole_run and "demo_1p" in whole_run:
        w_big, w_demo = whole_run[f"{big_name}_1p"]["peak_mib"], whole_run["demo_1p"]["peak_mib"]
        lines += ["", f"The same runs with one whole-store ConceptLabels (the last `--labels whole` run): demo "
                  f"{w_demo:,.0f} MiB, {big_name} {w_big:,.0f} MiB ({w_big / w_demo:.2f}x)."]
    if info:
        lines += ["", f"Preparation: {info}."]
    section = "\n".join(lines) + "\n"
    sys.path.insert(0, str(HERE))
    from _machine import record

    record(section, write=not args.no_write)
    with open(result_file, "w") as fh:
        json.dump({f"{k[0]}_{k[1]}p": {kk: (str(vv) if isinstance(vv, Path) else vv) for kk, vv in v.items()}
                   for k, v in rows.items()} | {"identical": identical, "ratio": ratio, "timings": timings}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
