"""Association speed and headline figures on real data: AntiBERTy layer 4, a TopK SAE, ANARCI + motif concepts.

Run on demand (not a test):

    .venv/bin/python benchmarks/bench_associate.py [--tokens 300000] [--concepts 50] [--no-write]

Needs the store and the k=32 TopK run of ``benchmarks/sae_quality.py`` (built if missing). Measures, in one
process: the time to build the normalised feature matrix (SAE encode of every token), the association itself
(InterPLM's thresholds, validation/test F1 with domain recall, enrichment + BH, no permutations) over
``tokens x 4096 features x concepts``, the same association over the model's 512 neurons, and a dense-matrix
reference implementation of the same counts (numpy, float32) for a same-run ratio. Appends a dated section to
``benchmarks/RESULTS.md`` with tokens x features per second and concepts captured (test F1 > 0.5) by SAE features
versus neurons.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
STORE = HERE / "out" / "antiberty_oas_thera_L4"
SAE = HERE / "out" / "quality_sweep" / "topk_w4096_k32"


def _subset_store_rows(store, n_tokens: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Whole sequences, in store order, up to ``n_tokens`` tokens."""
    ends = np.cumsum(store.sequences["n_tokens"].to_numpy())
    return np.arange(int(ends[np.searchsorted(ends, n_tokens)]) if n_tokens < ends[-1] else int(ends[-1]))


def dense_reference(values, labels, thresholds) -> float:  # type: ignore[no-untyped-def]
    """Same tp / active / labelled counts with dense float32 matrices (what a straightforward implementation does)."""
    t0 = time.perf_counter()
    dense = values.toarray()
    lab = labels.toarray().astype(np.float32)
    for t in thresholds:
        active = (dense > t).astype(np.float32)
        _ = active.T @ lab
        _ = active.sum(0)
    return time.perf_counter() - t0


def main() -> None:
    import torch

    import workbench
    from domains.sequence.annotations import anarci_labels, motif_labels
    from workbench.associate import THRESHOLDS, associate, feature_matrix, neuron_matrix
    from workbench.concepts import concat_labels
    from workbench.sae import load_sae

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=300_000)
    parser.add_argument("--concepts", type=int, default=50, help="most frequent token concepts kept (0 = all)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    if not (SAE / "sae.safetensors").is_file():
        import subprocess
        import sys

        subprocess.run([sys.executable, str(HERE / "sae_quality.py"), "--k", "32", "--arch", "topk", "--no-write"], check=True)
    store = workbench.open_store(STORE)
    sae = load_sae(SAE)

    t0 = time.perf_counter()
    labels = concat_labels([anarci_labels(store), motif_labels(store)])
    t_labels = time.perf_counter() - t0
    order = np.argsort(-labels.token_concepts["n_tokens"].to_numpy(), kind="stable")
    keep = order[: args.concepts] if args.concepts else order
    labels = type(labels)(labels.tokens[:, keep], labels.instances[:, keep], labels.token_concepts.iloc[keep].reset_index(drop=True),
                          labels.sequences, labels.sequence_concepts)

    rows = _subset_store_rows(store, args.tokens)
    sequence_ids = store.sequences["sequence_id"].astype(str).tolist()
    import pandas as pd

    token_seq = pd.Categorical(store.obs(["sequence_id"])["sequence_id"].astype(str), categories=sequence_ids).codes[rows]
    lab = type(labels)(labels.tokens[rows], labels.instances[rows], labels.token_concepts, labels.sequences, labels.sequence_concepts)

    t0 = time.perf_counter()
    feats = feature_matrix(store, sae, layer=4)
    t_encode = time.perf_counter() - t0
    feats.values = feats.values[rows]
    t0 = time.perf_counter()
    res_sae = associate(feats, lab, sequence_ids, np.asarray(token_seq), n_permutations=0)
    t_assoc = time.perf_counter() - t0
    t_dense = dense_reference(feats.values, lab.tokens, THRESHOLDS)

    neurons = neuron_matrix(store, layer=4)
    neurons.values = neurons.values[rows]
    t0 = time.perf_counter()
    res_neu = associate(neurons, lab, sequence_ids, np.asarray(token_seq), n_permutations=0)
    t_neu = time.perf_counter() - t0

    n_tok, n_feat, n_con = len(rows), feats.values.shape[1], lab.tokens.shape[1]
    region = res_sae.best[res_sae.best["concept"].str.startswith("region=")].sort_values("concept")
    region_neu = res_neu.best.set_index("concept")
    lines = [
        f"\n## {time.strftime('%Y-%m-%d', time.gmtime())} — bench_associate\n",
        f"Machine: {os.cpu_count()} CPUs, torch {torch.__version__} with {torch.get_num_threads()} threads, Python {platform.python_version()}."
        f" Store: {STORE.name} (AntiBERTy layer 4); SAE: {SAE.name} (TopK k=32, width 4096). Concepts: ANARCI (regions, chain"
        f" regions, IMGT positions) + motifs / amino acids, the {n_con} most frequent; labels built in {t_labels:.1f} s for"
        f" {store.n_sequences:,} sequences. Association on {n_tok:,} tokens (whole sequences), thresholds {list(THRESHOLDS)},"
        " validation/test halves by sequence, enrichment + BH, permutations off for timing.\n",
        "| step | seconds | tokens x features / s |",
        "|---|---:|---:|",
        f"| SAE encode + max-normalise, all {store.n_tokens:,} tokens | {t_encode:.1f} | {store.n_tokens * n_feat / t_encode:,.0f} |",
        f"| association, {n_tok:,} tokens x {n_feat} SAE features x {n_con} concepts | {t_assoc:.1f} | {n_tok * n_feat / t_assoc:,.0f} |",
        f"| dense float32 reference of the counts only (same run) | {t_dense:.1f} | {n_tok * n_feat / t_dense:,.0f} |",
        f"| association, {n_tok:,} tokens x {neurons.values.shape[1]} neurons x {n_con} concepts | {t_neu:.1f} | {n_tok * neurons.values.shape[1] / t_neu:,.0f} |",
        "",
        f"Concepts captured (test F1 > 0.5): SAE features {res_sae.concepts_captured} / {n_con}, neurons {res_neu.concepts_captured} / {n_con}."
        " InterPLM reports about ten minutes per shard of this size for its own association code (not run here: not installable).\n",
        "Best feature per IMGT region (test F1; best neuron in brackets):\n",
        "| region | best SAE feature | test F1 | best neuron test F1 |",
        "|---|---|---:|---:|",
    ]
    for row in region.itertuples(index=False):
        lines.append(f"| {row.concept} | {row.best_feature} | {row.test_f1:.3f} | {region_neu.loc[row.concept, 'test_f1']:.3f} |")
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        with open(HERE / "RESULTS.md", "a") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
