"""Shared fixtures: a tiny ESM-2 checkpoint in fair-esm's official format and small real inputs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from domains.sequence.readers import bundled, read_table
from domains.sequence.testing import write_esm2_checkpoint


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("WORKBENCH_INTERNET") == "1":
        return
    skip = pytest.mark.skip(reason="needs the internet (set WORKBENCH_INTERNET=1)")
    for item in items:
        if "internet" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_esm2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide ESM-2 saved as ``esm2_t2_tiny.pt`` (plus its contact-regression file)."""
    return write_esm2_checkpoint(tmp_path_factory.mktemp("ckpt") / "esm2_t2_tiny.pt")


@pytest.fixture(scope="session")
def oas_fasta(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 40 real OAS heavy chains as FASTA."""
    recs = read_table(bundled("oas_human_igg_memory_b_vh"), id_col="seq_id", seq_cols="sequence_alignment_aa")[:40]
    path = tmp_path_factory.mktemp("inputs") / "oas40.fasta"
    path.write_text("".join(f">{r.id}\n{r.sequence}\n" for r in recs))
    return path


@pytest.fixture(scope="session")
def demo_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The antibody demo's catalog on real AntiBERTy and the first 120 Thera-SAbDab antibodies (about 90 s, once)."""
    from domains.sequence.demo import DemoConfig, run

    out = tmp_path_factory.mktemp("demo")
    run(out, progress=False, config=DemoConfig(n_antibodies=120, width=1024, k=16, n_tokens=150_000))
    return out / "catalog"


@pytest.fixture(scope="session")
def tiny_catalog(tiny_esm2: Path, oas_fasta: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small catalog: tiny ESM-2 on 40 OAS heavy chains, a 64-latent SAE, ANARCI + motif concepts (seconds)."""
    import workbench
    from domains.sequence.sources import labels_from_specs
    from workbench._pipeline import AnnotateConfig
    from workbench.sae import TrainConfig, train_sae

    root = tmp_path_factory.mktemp("tiny_catalog")
    store = workbench.extract(str(tiny_esm2), str(oas_fasta), layers=[1], out=root / "store", progress=False)
    train = TrainConfig(n_tokens=256 * 80, batch_size=256, lr=3e-3, warmup_steps=5, checkpoint_every=0,
                        loss_recovered_sequences=0)
    train_sae(store, out=root / "sae", layer=1, width=64, k=8, train=train, progress=False)
    workbench.annotate(store, root / "sae", labels_from_specs(store, ["anarci", "motif"]), layer=1, out=root / "catalog",
                       config=AnnotateConfig(n_permutations=3, n_causal=3, causal_sequences=2, probe_cv=3), progress=False)
    return root / "catalog"


@pytest.fixture(scope="session")
def tiny_vision_card(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random MedResNet as a user's own network: a YAML card file beside its safetensors weights."""
    from domains.imaging.testing import write_tiny_vision_card

    return write_tiny_vision_card(tmp_path_factory.mktemp("tiny_vision"))


@pytest.fixture(scope="session")
def imaging_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The imaging demo pipeline with a tiny model on 40 real PneumoniaMNIST images per split (about 20 s, once)."""
    from domains.imaging.testing import build_tiny_imaging_catalog

    return build_tiny_imaging_catalog(tmp_path_factory.mktemp("imaging_catalog"))
