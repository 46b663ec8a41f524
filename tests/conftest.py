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
