"""Command line: ``workbench extract | models | info | demo``; thin wrappers over the Python API.

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


def _layers(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"layers must be comma-separated integers, not {text!r}") from None


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workbench", description="Microscope-AI workbench")
    sub = parser.add_subparsers(dest="command", required=True)

    ex = sub.add_parser("extract", help="run a model over sequences and write an activation store")
    ex.add_argument("--model", required=True, help="model card name (see `workbench models`) or checkpoint path")
    ex.add_argument("--input", required=True, help="FASTA, UniProt flat file / XML, or CSV/TSV table")
    ex.add_argument("--layers", required=True, type=_layers, help="comma-separated layers, 0 = embeddings")
    ex.add_argument("--out", required=True, help="store folder to create")
    ex.add_argument("--id-col", help="table column with record ids")
    ex.add_argument("--seq-col", action="append", help="table sequence column; COL:chain once per chain column")
    ex.add_argument("--meta-cols", help="comma-separated table columns to carry onto tokens, or 'all'")
    ex.add_argument("--skip-missing", action="store_true", help="leave out table rows with no sequence")
    ex.add_argument("--format", help="input format when the extension does not say (fasta, swiss, uniprot-xml, table)")
    ex.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    ex.add_argument("--tokens-per-batch", type=int, default=8192, help="padded tokens per forward pass")
    ex.add_argument("--shard-tokens", type=int, help="tokens per shard (default: about 64 MiB per shard)")
    ex.add_argument("--truncate", action="store_true", help="cut sequences longer than the model's maximum")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing store")
    ex.add_argument("--device", default="cpu")
    ex.add_argument("--no-progress", action="store_true")

    sub.add_parser("models", help="list the model cards")

    demo = sub.add_parser("demo", help="run a domain's demo on the bundled real data")
    demo.add_argument("--domain", default="sequence", help="domain whose demo to run (default: sequence)")
    demo.add_argument("--out", default="demo_out", help="folder for the demo's outputs")
    demo.add_argument("--no-progress", action="store_true")

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
    if args.meta_cols:
        read_options["meta_cols"] = "all" if args.meta_cols == "all" else args.meta_cols.split(",")
    store = extract(
        args.model,
        args.input,
        layers=args.layers,
        out=args.out,
        dtype=args.dtype,
        tokens_per_batch=args.tokens_per_batch,
        shard_tokens=args.shard_tokens,
        truncate=args.truncate,
        overwrite=args.overwrite,
        device=args.device,
        progress=not args.no_progress,
        read_options=read_options,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"wrote {store.path}: {store.n_sequences} sequences, {store.n_tokens} tokens, layers {store.layers}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except WorkbenchError as exc:
        print(f"workbench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("workbench: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
