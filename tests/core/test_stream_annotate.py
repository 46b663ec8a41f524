"""The streamed annotation: whole-store statistics shard by shard, the analyses on a capped sample, resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from workbench.errors import WorkbenchError

TRAIN = dict(n_tokens=256 * 60, batch_size=256, lr=3e-3, warmup_steps=5, checkpoint_every=0, loss_recovered_sequences=0)


@pytest.fixture(scope="module")
def setup(tiny_esm2: Path, oas_fasta: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A store and its random-weight control cut into several shards, their SAEs, ANARCI and motif labels."""
    import workbench
    from domains.sequence.sources import labels_from_specs
    from workbench.sae import TrainConfig, train_sae

    root = tmp_path_factory.mktemp("stream_annotate")
    store = workbench.extract(str(tiny_esm2), str(oas_fasta), layers=[1], out=root / "store", shard_tokens=1200,
                              progress=False)
    control = workbench.extract(str(tiny_esm2), str(oas_fasta), layers=[1], out=root / "control", random_weights=3,
                                shard_tokens=1200, progress=False)
    assert len(store.shards) >= 3
    train = TrainConfig(**TRAIN)
    train_sae(store, out=root / "sae", layer=1, width=64, k=8, train=train, progress=False)
    train_sae(control, out=root / "sae_control", layer=1, width=64, k=8, train=train, progress=False)
    labels = labels_from_specs(store, ["anarci", "motif"])
    return {"root": root, "store": store, "control": control, "labels": labels}


def run(setup: dict[str, Any], out: Path, **kwargs: Any) -> Any:
    import workbench
    from workbench._pipeline import AnnotateConfig

    config = kwargs.pop("config", AnnotateConfig(n_permutations=3, n_causal=2, causal_sequences=2, probe_cv=3,
                                                 n_bootstrap=100))
    return workbench.annotate(setup["store"], setup["root"] / "sae", setup["labels"], layer=1, out=out,
                              control_store=setup["control"], control_sae=setup["root"] / "sae_control", config=config,
                              progress=False, **kwargs)


def test_streamed_annotation_of_a_whole_sample_is_the_in_memory_one(setup: dict[str, Any], tmp_path: Path) -> None:
    memory = run(setup, tmp_path / "memory")
    streamed = run(setup, tmp_path / "streamed", stream=True)
    assert not (tmp_path / "streamed.annotate-work").exists()  # removed once the catalog is written
    info = streamed.summary["streamed"]
    assert info["sample"]["n_tokens"] == setup["store"].n_tokens and info["n_shards"] == len(setup["store"].shards)
    for name in memory.tables:
        a, b = (t.drop(columns=[c for c in ("seconds",) if c in t.columns]) for t in (memory.table(name), streamed.table(name)))
        pd.testing.assert_frame_equal(a, b, check_exact=name != "profile", rtol=1e-12, obj=name)
    assert set(streamed.tables) - set(memory.tables) == {"sample_sequences"}
    pd.testing.assert_frame_equal(memory.features, streamed.features, check_exact=False, rtol=1e-12)
    assert (memory.adata.X != streamed.adata.X).nnz == 0
    pd.testing.assert_frame_equal(memory.adata.uns["examples"], streamed.adata.uns["examples"])
    assert np.array_equal(memory.adata.uns["example_activations"], streamed.adata.uns["example_activations"])
    assert (memory.table("verdicts")["verdict"] != "not captured").any()
