"""A seeded sample of a store's sequences, written as a store of its own, and the labels of its tokens.

The streamed annotation (:func:`workbench.annotate` with ``stream=True``) computes every count-based statistic over
the whole store shard by shard; the analyses that need a ``tokens x features`` matrix in memory (probes, description
scores, candidate missing annotations, unexplained features, rediscovery, the causal check) run on a sample of whole
sequences capped at a number of tokens. Writing the sample as a small store keeps every one of those analyses
unchanged: they see a store, its labels and its feature matrix, as on a store that fits in memory.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from workbench.errors import InputError
from workbench.store import MANIFEST, OBS_FILE, ActivationStore, file_sha256, layer_file, write_json_atomic

if TYPE_CHECKING:  # pragma: no cover
    from workbench.concepts import ConceptLabels

__all__ = ["sample_sequences", "subset_store", "labels_of_tokens"]


def sample_sequences(store: ActivationStore, *, max_tokens: int, seed: int = 0) -> np.ndarray:
    """Indices (store order, sorted) of a seeded random sample of whole sequences holding at most ``max_tokens``
    tokens: sequences are visited in a random order (``np.random.default_rng(seed)``) and taken while they fit. All
    sequences when the store holds at most ``max_tokens`` tokens."""
    lengths = store.sequences["n_tokens"].to_numpy(dtype=np.int64)
    if lengths.sum() <= max_tokens:
        return np.arange(len(lengths))
    if max_tokens < 1:
        raise InputError(f"the sample needs room for at least one sequence, not max_tokens={max_tokens}")
    order = np.random.default_rng(seed).permutation(len(lengths))
    fits = np.cumsum(lengths[order]) <= max_tokens
    return np.sort(order[fits])


def subset_store(store: ActivationStore, sequences: Sequence[int] | np.ndarray, out: str | os.PathLike[str], *,
                 layers: Sequence[int] | None = None) -> ActivationStore:
    """Write the sequences ``sequences`` (indices in store order) of ``store`` as a one-shard store at ``out`` (the
    same model, weights and control marks; ``subset_of`` in its manifest names the source) and open it. Memory:
    one source shard at a time."""
    import pandas as pd

    out = Path(out)
    index = np.unique(np.asarray(sequences, dtype=np.int64))
    layers = list(layers) if layers is not None else store.layers
    for layer in layers:
        store._check_layer(layer)
    seqs = store.sequences.reset_index(drop=True)
    chosen = seqs.iloc[index].reset_index(drop=True)
    n_tokens = int(chosen["n_tokens"].sum())
    work = out.with_name(out.name + f".tmp-{os.getpid()}")
    if work.exists():
        shutil.rmtree(work)
    shard = work / "shards" / "shard-00000"
    shard.mkdir(parents=True)
    try:
        arrays = {layer: np.lib.format.open_memmap(shard / layer_file(layer), mode="w+", dtype=store.dtype,
                                                   shape=(n_tokens, store.d_model)) for layer in layers}
        obs_parts, row = [], 0
        for i in np.unique(chosen["shard"].to_numpy()):
            mine = chosen[chosen["shard"] == i]
            rows = np.concatenate([np.arange(o, o + n) for o, n in zip(mine["offset"], mine["n_tokens"])])
            for layer in layers:
                arrays[layer][row : row + len(rows)] = store.shard_activations(int(i), layer)[rows]
            obs_parts.append(store.shard_obs(int(i)).iloc[rows])
            row += len(rows)
        for arr in arrays.values():
            arr.flush()
        del arrays
        obs = pd.concat(obs_parts, ignore_index=True) if obs_parts else store.shard_obs(0).iloc[:0]
        obs.to_parquet(shard / OBS_FILE, index=False)
        lengths = chosen["n_tokens"].to_numpy(dtype=np.int64)
        table = chosen.assign(shard=0, offset=np.r_[0, np.cumsum(lengths)[:-1]].astype(np.int64))
        table.to_parquet(work / "sequences.parquet", index=False)
        manifest = dict(store.manifest)
        manifest.update({
            "layers": layers, "n_tokens": n_tokens, "n_sequences": len(table),
            "shards": [{"name": "shard-00000", "n_tokens": n_tokens, "n_sequences": len(table), "first_sequence": 0,
                        "sha256": {f.name: file_sha256(f) for f in sorted(shard.iterdir())}}],
            "subset_of": {"path": str(store.path), "manifest_sha256": store.manifest_sha256(),
                          "n_sequences": store.n_sequences, "n_tokens": store.n_tokens},
        })
        write_json_atomic(work / MANIFEST, manifest)
        if out.exists():
            shutil.rmtree(out)
        os.replace(work, out)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return ActivationStore(out)


def labels_of_tokens(labels: ConceptLabels, tokens: np.ndarray, sequences: np.ndarray,
                     token_sequence: np.ndarray) -> ConceptLabels:
    """``labels`` restricted to the token rows ``tokens`` and the sequence rows ``sequences`` (the tokens of those
    sequences, in order; ``token_sequence`` maps each kept token to its row in ``sequences``). Scopes and measures
    follow; the per-concept counts of the tables are recounted on the kept rows."""
    from workbench.concepts import ConceptLabels

    tok = labels.tokens[tokens].tocsr()
    inst = labels.instances[tokens].tocsr()
    seq = labels.sequences[sequences].tocsr()
    token_concepts = labels.token_concepts.copy()
    token_concepts["n_tokens"] = np.asarray(tok.sum(0)).ravel().astype(np.int64)
    csc = inst.tocsc()
    token_concepts["n_instances"] = [len(np.unique(csc.data[csc.indptr[j]: csc.indptr[j + 1]]))
                                     for j in range(csc.shape[1])]
    lab = tok.tocsc()
    token_concepts["n_sequences"] = [len(np.unique(token_sequence[lab.indices[lab.indptr[j]: lab.indptr[j + 1]]]))
                                     for j in range(lab.shape[1])]
    sequence_concepts = labels.sequence_concepts.copy()
    sequence_concepts["n_sequences"] = np.asarray(seq.sum(0)).ravel().astype(np.int64)
    measures = None if labels.measures is None else labels.measures.iloc[sequences].reset_index(drop=True)
    return ConceptLabels(
        tok, inst, token_concepts, seq, sequence_concepts,
        {k: np.asarray(v)[tokens] for k, v in labels.scopes.items()},
        {k: np.asarray(v)[sequences] for k, v in labels.sequence_scopes.items()}, measures,
    )
