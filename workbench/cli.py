"""Command line: ``workbench extract | train | sweep | annotate | universality | export | app | models | info | demo``; thin
wrappers over the Python API.

Problems with the user's input end with one line on stderr (``workbench: error: ...``) and exit status 2;
nothing is left behind at the output path.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from workbench.errors import WorkbenchError

__all__ = ["main", "build_parser"]


def _layers(text: str) -> list[int | str]:
    """Comma-separated layer numbers or names (names are resolved by the model's adapter)."""
    parts = [x.strip() for x in text.split(",") if x.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"no layers in {text!r}")
    return [int(x) if x.lstrip("-").isdigit() else x for x in parts]


def _seq_cols(values: list[str] | None) -> str | dict[str, str] | None:
    """``--seq-col COL`` once gives one record per row; ``--seq-col HC:heavy --seq-col LC:light`` one per chain."""
    if not values:
        return None
    if len(values) == 1 and ":" not in values[0]:
        return values[0]
    out = {}
    for v in values:
        col, _, chain = v.partition(":")
        out[col] = chain or col
    return out


def _sae_arguments(p: argparse.ArgumentParser) -> None:
    from workbench.sae._config import TrainConfig

    d = TrainConfig()
    p.add_argument("--store", required=True, help="activation store folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--layer", type=int, help="layer to train on (needed when the store has several)")
    p.add_argument("--n-tokens", type=int, default=d.n_tokens, help="training tokens")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="tokens per step (all ranks together)")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--aux-k", type=int, default=d.aux_k, help="dead latents used by the AuxK loss (0: off)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, help="steps between checkpoints")
    p.add_argument("--holdout-fraction", type=float, default=d.holdout_fraction, help="sequences held out for metrics")
    p.add_argument("--eval-tokens", type=int, default=d.eval_tokens)
    p.add_argument("--loss-recovered-sequences", type=int, default=d.loss_recovered_sequences, help="0 skips loss recovered")
    p.add_argument("--no-normalize", action="store_true", help="train on raw (uncentred, unscaled) activations")
    p.add_argument("--precision", metavar="{auto,fp32,bf16}", default=d.precision,
                   help="matrix products in bf16 autocast (float32 weights) or fp32; auto: bf16 on CUDA")
    p.add_argument("--kernels", metavar="{auto,sparse,dense}", default=d.kernels,
                   help="TopK family: sparse (CPU) or dense (GPU) products; auto picks by device")
    p.add_argument("--compile", action="store_true", help="torch.compile the training forward (dense kernels)")
    p.add_argument("--prefetch", type=int, default=d.prefetch, help="store buffers read ahead by a background thread")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")


def _train_config(args: argparse.Namespace) -> Any:
    from workbench.sae._config import TrainConfig

    return TrainConfig(
        n_tokens=args.n_tokens, batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup_steps, aux_k=args.aux_k,
        seed=args.seed, checkpoint_every=args.checkpoint_every, holdout_fraction=args.holdout_fraction,
        eval_tokens=args.eval_tokens, loss_recovered_sequences=args.loss_recovered_sequences, precision=args.precision,
        kernels=args.kernels, compile=args.compile, prefetch=args.prefetch,
    )


def _csv(text: str, kind: type) -> list[Any]:
    try:
        return [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise WorkbenchError(f"expected comma-separated {kind.__name__} values, not {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workbench", description="Microscope-AI workbench")
    sub = parser.add_subparsers(dest="command", required=True)

    ex = sub.add_parser("extract", help="run a model over sequences and write an activation store")
    ex.add_argument("--model", required=True, help="model card name (see `workbench models`) or checkpoint path")
    ex.add_argument("--input", required=True, help="FASTA, UniProt flat file / XML, CSV/TSV table; images: a MedMNIST .npz, "
                    "a folder of PNG / JPEG / TIFF, or one image")
    ex.add_argument("--layers", required=True, type=_layers, help="comma-separated layers: numbers (0 = embeddings) or the names an imaging card lists")
    ex.add_argument("--out", required=True, help="store folder to create")
    ex.add_argument("--id-col", help="table column with record ids")
    ex.add_argument("--seq-col", action="append", help="table sequence column; COL:chain once per chain column")
    ex.add_argument("--meta-cols", help="comma-separated table columns to carry onto tokens, or 'all'")
    ex.add_argument("--skip-missing", action="store_true", help="leave out table rows with no sequence")
    ex.add_argument("--labels", help="image folders: CSV/TSV of labels (file names in --id-col, default 'image')")
    ex.add_argument("--label-col", help="image folders: the label column of --labels (default 'label')")
    ex.add_argument("--split-col", help="image folders: a column of --labels naming each image's split")
    ex.add_argument("--format", help="input format when the extension does not say (fasta, swiss, uniprot-xml, table, airr)")
    ex.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    ex.add_argument("--tokens-per-batch", type=int, default=None,
                    help="padded tokens per forward pass (default: auto, 8192 on the CPU, sized from free memory on CUDA)")
    ex.add_argument("--precision", default="auto", metavar="{auto,bf16,fp16,fp32}",  # checked by extract: one-line error
                    help="forward-pass arithmetic (default auto: bf16 on CUDA, fp32 on the CPU); the stored --dtype is unchanged")
    ex.add_argument("--shard-tokens", type=int, help="tokens per shard (default: about 64 MiB per shard)")
    ex.add_argument("--truncate", action="store_true", help="cut sequences longer than the model's maximum")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing store")
    ex.add_argument("--random-weights", type=int, metavar="SEED", help="control: re-initialise the model's weights with SEED")
    ex.add_argument("--device", default="cpu")
    ex.add_argument("--no-progress", action="store_true")

    sub.add_parser("models", help="list the model cards")

    tr = sub.add_parser("train", help="train a sparse autoencoder on an activation store")
    _sae_arguments(tr)
    tr.add_argument("--arch", default="topk", help="relu, topk, batchtopk, jumprelu or matryoshka")
    tr.add_argument("--k", type=int, default=32, help="active latents per token (TopK family)")
    tr.add_argument("--width", type=int, default=4096, help="number of latents")
    tr.add_argument("--l1-coeff", type=float, help="sparsity coefficient (relu: L1, jumprelu: L0)")
    tr.add_argument("--overwrite", action="store_true", help="replace an existing SAE folder")

    sw = sub.add_parser("sweep", help="train one SAE per combination and write sweep.csv (FVE, L0, dead, loss recovered)")
    _sae_arguments(sw)
    sw.add_argument("--arch", default="topk", help="comma-separated architectures")
    sw.add_argument("--k", default="32", help="comma-separated k values")
    sw.add_argument("--width", default="4096", help="comma-separated widths")
    sw.add_argument("--l1-coeff", help="comma-separated sparsity coefficients (relu, jumprelu)")
    sw.add_argument("--source", action="append", metavar="SPEC",
                    help="annotation source, repeatable (as for annotate): adds sparse-probing F1 and absorption columns")
    sw.add_argument("--domain", help="domain providing the annotation sources (default: the domain of the store's model)")
    sw.add_argument("--plot", metavar="PNG", help="also draw quality against L0 per architecture into PNG")
    sw.add_argument("--one-pass", action="store_true", help="train every SAE of the sweep together from one pass over the store")

    an = sub.add_parser("annotate", help="associate SAE features with database concepts and write a feature catalog")
    an.add_argument("--store", required=True, help="activation store folder")
    an.add_argument("--sae", required=True, help="SAE folder trained on that store (sae.safetensors + cfg.json)")
    an.add_argument("--layer", type=int, help="layer (needed when the store has several)")
    an.add_argument("--source", action="append", required=True, metavar="SPEC",
                    help="annotation source, repeatable (sequence domain: anarci, germline, humanness, liability, cdr, motif, "
                         "table:COL1,COL2, uniprot:FILE, user:FILE, pfam:FILE, airr:FILE; imaging domain: dataset, "
                         "measured)")
    an.add_argument("--domain", help="domain providing the annotation sources (default: the domain of the store's model)")
    an.add_argument("--control-store", help="store extracted from the same inputs with --random-weights (control)")
    an.add_argument("--control-sae", help="SAE trained on the control store with the same settings")
    an.add_argument("--group-col", help="sequence metadata column grouping records (e.g. the antibody of each chain) so "
                                        "probe folds never split a group")
    an.add_argument("--group-sep", help="group records by their id up to the last SEP (e.g. '|' for id|chain)")
    an.add_argument("--permutations", type=int, default=20, help="label permutations for the best-F1 null")
    an.add_argument("--n-causal", type=int, default=16, help="features given the causal check (0: skip; needs the model)")
    an.add_argument("--stream", action="store_true",
                    help="shard by shard: whole-store statistics without the tokens x features matrix, the matrix "
                         "analyses on a seeded sample; resumable; splits the shards across processes under torchrun")
    an.add_argument("--max-memory", type=_size, metavar="SIZE",
                    help="memory budget (e.g. 4G, 512M); implies --stream and sizes the sample and the permutation "
                         "counts from it; refused when one shard does not fit")
    an.add_argument("--sample-tokens", type=int, help="tokens in the streamed mode's sample (default 262144)")
    an.add_argument("--device", default="cpu", help="streamed mode: where the SAE encodes the shards (cpu, cuda)")
    an.add_argument("--out", required=True, help="catalog folder to create")
    an.add_argument("--overwrite", action="store_true", help="replace an existing catalog")
    an.add_argument("--no-progress", action="store_true")

    exp = sub.add_parser("export", help="export a catalog's features, tables and examples to Parquet / CSV / JSON")
    exp.add_argument("catalog", help="catalog folder (or catalog.h5ad)")
    exp.add_argument("--out", required=True, help="folder to create")
    exp.add_argument("--format", default="parquet,csv,json", help="comma-separated: parquet, csv, json")
    exp.add_argument("--overwrite", action="store_true", help="replace an existing export folder")

    app = sub.add_parser("app", help="explore a feature catalog in the browser (Streamlit)")
    app.add_argument("catalog", nargs="?", help="catalog folder (default: the demo's, built first when missing)")
    app.add_argument("--port", type=int, default=8501)
    app.add_argument("--demo-out", default="demo_out", help="where the demo catalog is (or is built) without CATALOG")

    demo = sub.add_parser("demo", help="run a domain's demo on the bundled real data")
    demo.add_argument("--domain", default="sequence", help="domain whose demo to run (default: sequence)")
    demo.add_argument("--out", default="demo_out", help="folder for the demo's outputs")
    demo.add_argument("--no-progress", action="store_true")

    un = sub.add_parser("universality", help="how many SAE features of one model (or seed) recur in another, against a "
                                             "within-sequence permutation null")
    un.add_argument("--sae-a", required=True, help="SAE folder of model A")
    un.add_argument("--store-a", required=True, help="activation store of model A")
    un.add_argument("--sae-b", required=True, help="SAE folder of model B")
    un.add_argument("--store-b", required=True, help="activation store of model B (the same records)")
    un.add_argument("--layer-a", type=int, help="layer of store A (default: the SAE's)")
    un.add_argument("--layer-b", type=int, help="layer of store B (default: the SAE's)")
    un.add_argument("--tokens", type=int, default=100_000, help="tokens sampled as whole sequences (0: all)")
    un.add_argument("--threshold", type=float, default=0.5, help="best-match r above which a feature is shared")
    un.add_argument("--nulls", type=int, default=1, help="repeats of the permutation null")
    un.add_argument("--seed", type=int, default=0)
    un.add_argument("--common", action="store_true", help="compare the tokens both stores hold (default: require the same)")
    un.add_argument("--catalog", help="catalog (of SAE A) to store the result in, under --key")
    un.add_argument("--key", help="name of the comparison in the catalog's uns['universality']")
    un.add_argument("--out", help="CSV file for the per-feature table")
    un.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    un.add_argument("--no-progress", action="store_true")

    info = sub.add_parser("info", help="print a store's manifest summary")
    info.add_argument("store")
    return parser


def _run(args: argparse.Namespace) -> int:
    if args.command == "models":
        from workbench.registry import list_models

        for card in list_models():
            print(f"{card.name:24s} {card.adapter:10s} layers 0..{card.n_layers:<3d} d_model {card.d_model:<5d} max {card.max_length}")
        return 0
    if args.command == "demo":
        from importlib.metadata import entry_points

        demos = {ep.name: ep for ep in entry_points(group="workbench.demos")}
        if args.domain not in demos:
            raise WorkbenchError(f"no demo for domain {args.domain!r} (available: {', '.join(sorted(demos))})")
        demos[args.domain].load()(args.out, progress=not args.no_progress)
        return 0
    if args.command == "train":
        from workbench.sae import train_sae

        result = train_sae(
            args.store, out=args.out, layer=args.layer, arch=args.arch, width=args.width, k=args.k, l1_coeff=args.l1_coeff,
            normalize=not args.no_normalize, train=_train_config(args), overwrite=args.overwrite, device=args.device,
            progress=not args.no_progress,
        )
        if int(os.environ.get("RANK", "0")) == 0:
            m = result.metrics
            lr = m.get("loss_recovered", {})
            print(f"wrote {result.path}: FVE {m['fve']:.3f}, L0 {m['l0']:.1f}, dead {m['dead_fraction']:.1%}, "
                  f"loss recovered {lr.get('loss_recovered', float('nan')):.3f}, {m['train_tokens_per_s']:.0f} tokens/s")
        return 0
    if args.command == "sweep":
        from workbench.sae import sweep

        labels = None
        if args.source:
            from workbench.registry import labels_for
            from workbench.store import open_store

            labels = labels_for(open_store(args.store), args.source, domain=args.domain)
        table = sweep(
            args.store, out=args.out, layer=args.layer, arch=_csv(args.arch, str), k=_csv(args.k, int), width=_csv(args.width, int),
            l1_coeff=_csv(args.l1_coeff, float) if args.l1_coeff else None, train=_train_config(args), labels=labels,
            progress=not args.no_progress, one_pass=args.one_pass, device=args.device,
        )
        print(table.to_string(index=False))
        if args.plot:
            from workbench.sae_eval import plot_sweep

            print(f"wrote {plot_sweep(table, args.plot)}")
        return 0
    if args.command == "annotate":
        return _annotate(args)
    if args.command == "universality":
        return _universality(args)
    if args.command == "app":
        return _app(args)
    if args.command == "export":
        from workbench.catalog import Catalog

        formats = _csv(args.format, str)
        bad = [f for f in formats if f not in ("parquet", "csv", "json")]
        if bad or not formats:
            raise WorkbenchError(f"unknown export format(s) {bad or formats}; use parquet, csv, json")
        written = Catalog.open(args.catalog).export(args.out, formats=tuple(formats), overwrite=args.overwrite)
        print(f"wrote {len(written)} files under {args.out}")
        return 0
    if args.command == "info":
        from workbench.store import open_store

        store = open_store(args.store)
        summary = {k: store.manifest[k] for k in ("model", "layers", "d_model", "dtype", "n_sequences", "n_tokens", "workbench_version")}
        summary["n_shards"] = len(store.shards)
        print(json.dumps(summary, indent=2))
        return 0

    from workbench._extract import extract

    read_options: dict[str, Any] = {}
    if args.format:
        read_options["format"] = args.format
    if args.id_col:
        read_options["id_col"] = args.id_col
    if args.seq_col:
        read_options["seq_cols"] = _seq_cols(args.seq_col)
    if args.skip_missing:
        read_options["skip_missing"] = True
    for key in ("labels", "label_col", "split_col"):
        if getattr(args, key):
            read_options[key] = getattr(args, key)
    if args.meta_cols:
        read_options["meta_cols"] = "all" if args.meta_cols == "all" else args.meta_cols.split(",")
    store = extract(
        args.model,
        args.input,
        layers=args.layers,
        out=args.out,
        dtype=args.dtype,
        tokens_per_batch=args.tokens_per_batch,
        precision=args.precision,
        shard_tokens=args.shard_tokens,
        truncate=args.truncate,
        overwrite=args.overwrite,
        device=args.device,
        progress=not args.no_progress,
        read_options=read_options,
        random_weights=args.random_weights,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"wrote {store.path}: {store.n_sequences} sequences, {store.n_tokens} tokens, layers {store.layers}")
    return 0


def _universality(args: argparse.Namespace) -> int:
    from pathlib import Path

    from workbench.catalog import Catalog
    from workbench._universality import summary_lines, universality, write_universality

    if bool(args.catalog) != bool(args.key):
        raise WorkbenchError("--catalog and --key go together")
    if args.catalog:
        Catalog.open(args.catalog)  # refuse a bad catalog before the computation
    out = Path(args.out) if args.out else None
    if out is not None and not out.parent.is_dir():
        raise WorkbenchError(f"{out.parent} is not a folder")
    if out is not None and out.exists() and not args.overwrite:
        raise WorkbenchError(f"{out} already exists (pass --overwrite to replace it)")
    result = universality(args.sae_a, args.store_a, args.sae_b, args.store_b, layer_a=args.layer_a, layer_b=args.layer_b,
                          on="common" if args.common else "same", n_tokens=args.tokens, threshold=args.threshold,
                          n_null=args.nulls, seed=args.seed, catalog_a=args.catalog, progress=not args.no_progress)
    tmp = out.with_name(f".{out.name}.partial") if out is not None else None
    try:
        if tmp is not None:
            result.features.to_csv(tmp, index=False)
        if args.catalog:
            write_universality(args.catalog, result, key=args.key)
        if tmp is not None:
            os.replace(tmp, out)
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()
    print("\n".join(summary_lines(result)))
    if args.catalog:
        print(f"stored in {args.catalog} as uns['universality'][{args.key!r}]")
    if out is not None:
        print(f"wrote {out}")
    return 0


def _app(args: argparse.Namespace) -> int:
    """Serve a catalog until stopped: a busy port or a bad catalog fails first, with nothing printed (_app_launch)."""
    from pathlib import Path

    from workbench._app_launch import check_port_free, run_app
    from workbench.catalog import Catalog

    if args.catalog is None:
        path = Path(args.demo_out) / "catalog"
        try:
            Catalog.open(path)
        except WorkbenchError:
            check_port_free(args.port)  # before a demo build that would end on a busy port
            print(f"no demo catalog at {path}: building it first (workbench demo --out {args.demo_out})")
            _run(build_parser().parse_args(["demo", "--out", args.demo_out]))
    else:
        path = Path(args.catalog)
    Catalog.open(path)  # a clear one-line error now rather than in the page
    try:
        from apps.workbench_app import APP_SCRIPT
    except ImportError as exc:
        raise WorkbenchError(f"the app is not installed ({exc}); install the package with its 'app' extra") from None
    # Streamlit runs as a child in its own process group; stop signals reach the group and no process outlives this.
    return run_app(APP_SCRIPT, path, port=args.port)


def _size(text: str) -> int:
    """A byte count such as ``4G``, ``512M``, ``1.5GiB`` or ``1000000`` (binary multiples)."""
    import re

    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*", text.lower())
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 4G or 512M)")
    value = float(m.group(1)) * 1024 ** " kmgt".index(m.group(2) or " ")
    if value < 1:
        raise argparse.ArgumentTypeError(f"a memory budget must be positive, not {text!r}")
    return int(value)


def _label_progress(message: str) -> None:
    print(f"[annotate] {message}", flush=True)


def _annotate(args: argparse.Namespace) -> int:
    from workbench._pipeline import AnnotateConfig, annotate
    from workbench.registry import domain_annotator, labels_for, store_domain
    from workbench.store import open_store

    if bool(args.control_store) != bool(args.control_sae):
        raise WorkbenchError("--control-store and --control-sae go together")
    if args.group_col and args.group_sep:
        raise WorkbenchError("give --group-col or --group-sep, not both")
    store = open_store(args.store)
    groups = None
    if args.group_col:
        seqs = store.sequences
        if args.group_col not in seqs.columns:
            raise WorkbenchError(f"{store.path} has no sequence column {args.group_col!r} (columns: {', '.join(seqs.columns)})")
        groups = seqs[args.group_col].astype(str).tolist()
    elif args.group_sep:
        groups = [i.rsplit(args.group_sep, 1)[0] for i in store.sequences["sequence_id"].astype(str)]
    annotator = domain_annotator(args.domain or store_domain(store))
    if annotator is not None:  # the domain's own stage (images: pixels, pathology association, heatmaps)
        if groups is not None:
            raise WorkbenchError("--group-col / --group-sep do not apply to this store's domain")
        catalog = annotator(store, args.sae, out=args.out, specs=args.source, control_store=args.control_store,
                            control_sae=args.control_sae, n_permutations=args.permutations, n_causal=args.n_causal,
                            overwrite=args.overwrite, progress=not args.no_progress)
        s = catalog.summary
        print(f"wrote {args.out}: {s.get('n_features')} features x {s.get('n_concepts')} concepts; captured (test F1 > 0.5): "
              f"SAE {s.get('concepts_captured_sae')}, neurons {s.get('concepts_captured_neurons')}, "
              f"random control {s.get('concepts_captured_random')}")
        return 0
    if (args.stream or args.max_memory or args.sample_tokens) and annotator is not None:
        raise WorkbenchError("--stream, --max-memory and --sample-tokens apply to sequence stores")
    config = AnnotateConfig(n_permutations=args.permutations, n_causal=args.n_causal, device=args.device)
    if args.sample_tokens is not None:
        if args.sample_tokens < 1:
            raise WorkbenchError(f"--sample-tokens must be positive, not {args.sample_tokens}")
        config.sample_tokens = args.sample_tokens
    stream = bool(args.stream or args.sample_tokens is not None or args.max_memory)
    from workbench._pipeline import check_device

    check_device(args.device, stream=stream)
    if not stream:
        labels = labels_for(store, args.source, domain=args.domain)
        catalog = annotate(
            store, args.sae, labels, layer=args.layer, out=args.out, control_store=args.control_store,
            control_sae=args.control_sae, sequence_groups=groups, config=config, overwrite=args.overwrite,
            progress=not args.no_progress)
    else:  # labels built shard by shard (split across torchrun's ranks), kept in the work folder for a resume
        import shutil
        from pathlib import Path

        from workbench._pipeline import check_out
        from workbench._stream_pipeline import WORK_SUFFIX, label_shards_for

        out = Path(args.out)
        check_out(out, overwrite=args.overwrite)
        work = out.with_name(out.name + WORK_SUFFIX)
        fresh = not work.exists()
        key = json.dumps({"sources": list(args.source), "domain": args.domain})
        try:
            labels = label_shards_for(store, lambda view: labels_for(view, args.source, domain=args.domain), out,
                                      key=key, progress=None if args.no_progress else _label_progress)
            catalog = annotate(
                store, args.sae, labels, layer=args.layer, out=out, control_store=args.control_store,
                control_sae=args.control_sae, sequence_groups=groups, config=config, overwrite=args.overwrite,
                progress=not args.no_progress, stream=True, max_memory=args.max_memory)
        except WorkbenchError:  # refused input leaves nothing behind; a killed run keeps its work for the resume
            if fresh:
                shutil.rmtree(work, ignore_errors=True)
            raise
    if catalog is None:  # another rank under torchrun: rank 0 wrote the catalog
        return 0
    s = catalog.summary
    print(f"wrote {args.out}: {s.get('n_features')} features x {s.get('n_concepts')} concepts; captured (test F1 > 0.5): "
          f"SAE {s.get('concepts_captured_sae')}, neurons {s.get('concepts_captured_neurons')}, "
          f"random control {s.get('concepts_captured_random')}")
    from workbench._stream_pipeline import peak_rss_bytes

    streamed = s.get("streamed")
    budget = f" of a {args.max_memory / 2**30:.2f} GiB budget" if args.max_memory else ""
    print(f"peak memory {peak_rss_bytes() / 2**30:.2f} GiB{budget}" + (
        f"; streamed over {streamed['n_shards']} shards, sample of {streamed['sample']['n_tokens']} tokens"
        if isinstance(streamed, dict) and "sample" in streamed else ""))
    return 0


def _outputs(args: argparse.Namespace) -> list[str | None]:
    """What the verb writes: checked for writability and locked before any work (see :mod:`workbench._io`)."""
    if args.command in ("extract", "train", "annotate", "export", "demo"):
        return [args.out]
    if args.command == "sweep":
        return [args.out, args.plot]
    if args.command == "universality":  # the catalog folder is replaced as a whole (catalog.h5ad: its folder)
        catalog = args.catalog
        if catalog and os.path.isfile(catalog):
            catalog = os.path.dirname(os.path.abspath(catalog))
        return [args.out, catalog]
    return []  # models, info: read only; app: serves (its demo build goes through `demo` when run on its own)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that it is handled as Ctrl-C is (partial work kept for a resume)."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    """Run one verb; user errors end with one ``workbench: error:`` line and status 2, Ctrl-C with 130, SIGTERM 143."""
    import signal

    from workbench._io import writing

    parser = build_parser()
    args = parser.parse_args(argv)
    installed, previous = False, None
    try:
        previous, installed = signal.signal(signal.SIGTERM, _on_sigterm), True
    except ValueError:  # not the main thread: leave the signals alone
        pass
    try:
        with writing(_outputs(args)):
            return _run(args)
    except WorkbenchError as exc:
        print(f"workbench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        how = " by SIGTERM" if isinstance(exc, _Terminated) else ""
        print(f"workbench: {args.command} interrupted{how}; run the same command again to resume", file=sys.stderr)
        return 143 if isinstance(exc, _Terminated) else 130
    except OSError as exc:  # last resort: a system error the verb did not turn into a clear message
        message = " ".join(str(exc).split())
        print(f"workbench: error: {message}", file=sys.stderr)
        return 2
    finally:
        if installed:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


if __name__ == "__main__":
    sys.exit(main())
