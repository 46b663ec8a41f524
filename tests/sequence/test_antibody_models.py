"""The real antibody models: AntiBERTy from its wheel and Sapiens from its source archive."""

from __future__ import annotations

import pytest
import torch

from domains.sequence.readers import bundled, read_table
from domains.sequence.records import SequenceRecord
from workbench.adapter import Batch
from workbench.registry import load_adapter

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def oas() -> list[SequenceRecord]:
    return read_table(bundled("oas_human_igg_memory_b_vh"), id_col="seq_id", seq_cols="sequence_alignment_aa")


@pytest.fixture(scope="module")
def light_chains() -> list[SequenceRecord]:
    recs = read_table(bundled("therasabdab"), id_col="Therapeutic", seq_cols={"HC": "heavy", "LC": "light"}, meta_cols=["Genetics (Bispecifics delimited with semicolon)"])
    human = "Genetics (Bispecifics delimited with semicolon)"
    return [
        r for r in recs
        if r.meta["chain"] == "light" and r.meta[human] == "Genetically human" and set(r.sequence) <= set("ACDEFGHIKLMNPQRSTVWY")
    ]


def masked_recovery(adapter, records, *, rate: float = 0.15, seed: int = 0) -> float:  # type: ignore[no-untyped-def]
    """Fraction of randomly masked residues the model's LM head predicts correctly."""
    batch = adapter.make_batch(records)
    tokens = adapter.tokens_of(batch)
    gen = torch.Generator().manual_seed(seed)
    masked = (torch.rand(tokens.shape, generator=gen) < rate) & batch.keep
    inputs = dict(batch.inputs)
    key = next(iter(inputs))
    inputs[key] = tokens.masked_fill(masked, adapter.mask_token_id())
    logits = adapter.run_with_edit(Batch(batch.index, inputs, batch.keep, batch.obs), 1)
    return float((logits.argmax(-1)[masked] == tokens[masked]).float().mean())


@pytest.mark.parametrize(("model", "chain"), [("sapiens-vh", "heavy"), ("sapiens-vl", "light")])
def test_sapiens_mapping_recovers_masked_residues(model: str, chain: str, oas, light_chains) -> None:  # type: ignore[no-untyped-def]
    adapter = load_adapter(model)
    assert (adapter.n_layers, adapter.d_model) == (4, 128)
    records = oas[:150] if chain == "heavy" else light_chains[:150]
    acc = masked_recovery(adapter, records)
    # Chance is 1/20; a wrong name mapping (or a missing layer norm) drops this to chance level.
    assert acc > 0.6, acc
    # Chain-specific: the same model on the other chain type does much worse.
    other = light_chains[:150] if chain == "heavy" else oas[:150]
    assert masked_recovery(adapter, adapter.validate(other, truncate=True)) < acc - 0.2


def test_antiberty_matches_its_own_embed(oas) -> None:  # type: ignore[no-untyped-def]
    from antiberty import AntiBERTyRunner

    adapter = load_adapter("antiberty")
    records = oas[:6]
    runner = AntiBERTyRunner()
    ref = runner.embed([r.sequence for r in records], hidden_layer=None)
    batch = adapter.make_batch(records)
    acts = adapter.activations(batch, [0, 4, 8])
    start = 0
    for rec, emb in zip(records, ref):
        n = len(rec.sequence)
        for layer in (0, 4, 8):
            # embed keeps [CLS] and [SEP]; the store drops them.
            torch.testing.assert_close(acts.layers[layer][start : start + n], emb[layer][1:-1], rtol=1e-4, atol=1e-4)
        start += n
    # Our residue mapping gives the ids of antiberty's own tokenizer.
    ids = runner.tokenizer(" ".join(records[0].sequence))["input_ids"]
    assert ids == batch.inputs["input_ids"][0, : len(ids)].tolist()


def test_antiberty_recovers_masked_residues(oas) -> None:  # type: ignore[no-untyped-def]
    assert masked_recovery(load_adapter("antiberty"), oas[:40]) > 0.6


def test_sapiens_vh_store_of_all_oas_heavy_chains_has_one_row_per_residue(oas, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import workbench

    store = workbench.extract(
        "sapiens-vh", bundled("oas_human_igg_memory_b_vh"), layers=[2], out=tmp_path / "oas_vh", progress=False,
        read_options={"id_col": "seq_id", "seq_cols": "sequence_alignment_aa", "meta_cols": ["v_family"]},
    )
    assert store.n_sequences == len(oas) == 1999
    assert store.n_tokens == sum(len(r) for r in oas)
    obs = store.obs(["sequence_id", "position", "residue", "v_family"])
    assert len(obs) == store.n_tokens
    assert "".join(obs["residue"]) == "".join(r.sequence for r in oas)
    assert obs.groupby("sequence_id", sort=False)["position"].max().tolist() == [len(r) for r in oas]
    assert set(obs["v_family"]) <= {f"IGHV{i}" for i in range(1, 8)}
    store.check()  # shapes match the manifest, no NaN
