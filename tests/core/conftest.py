"""Fixtures shared by the core tests of the streamed (shard by shard) stages."""

from __future__ import annotations

import pickle
from pathlib import Path

import pandas as pd
import pytest
import torch

import workbench
from workbench.concepts import labels_from_spans, scope_labels
from workbench.sae import SAEConfig, SparseAutoencoder, save_sae


@pytest.fixture(scope="session")
def stream_case(tiny_esm2: Path, oas_fasta: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A store of 40 real chains in several shards; residue concepts (one-token spans), an N-terminal and a middle
    region (multi-token spans), the middle one scoped to residues 1-60; a random-weight SAE fitted to the store."""
    root = tmp_path_factory.mktemp("stream")
    store = workbench.extract(str(tiny_esm2), oas_fasta, layers=[1], out=root / "store", shard_tokens=700, progress=False)
    assert len(store.shards) >= 4
    obs = store.obs(["sequence_id", "position", "residue"])
    ids = store.sequences["sequence_id"].astype(str).tolist()
    residues = pd.DataFrame({"sequence_id": obs["sequence_id"], "start": obs["position"], "end": obs["position"],
                             "concept": "aa=" + obs["residue"]})
    regions = pd.DataFrame({"sequence_id": ids * 2, "start": [1] * len(ids) + [30] * len(ids),
                            "end": [12] * len(ids) + [45] * len(ids), "concept": ["nterm"] * len(ids) + ["mid"] * len(ids)})
    labels = labels_from_spans(obs, pd.concat([residues, regions], ignore_index=True)).select(min_tokens=20)
    labels = scope_labels(labels, tokens=obs["position"].to_numpy() <= 60, name="first60", token_concepts=["mid"])
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=store.d_model, width=64, k=6, model=store.model, layer=1))
    with torch.no_grad():
        sae.b_dec.copy_(torch.from_numpy(store.activations(1)[:2000].mean(0)))
    save_sae(sae, root / "sae")
    with open(root / "labels.pkl", "wb") as fh:
        pickle.dump(labels, fh)
    return store, labels, sae, root
