"""ESM-2 through fair-esm's loading code: official-format checkpoint file, Hugging Face folder, hub names."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from domains.sequence.esm2 import ESM2Adapter, HFESMAdapter
from domains.sequence.records import SequenceRecord
from domains.sequence.testing import write_esm2_checkpoint, write_hf_esm_folder
from workbench.errors import ModelError
from workbench.registry import load_adapter

SEQS = [SequenceRecord("a", "MKTAYIAKQRQISFVKSHFSRQ"), SequenceRecord("b", "GSHMAAAW"), SequenceRecord("c", "QVQLVQSGAEVKKPGASVKVSCKAS")]


def test_checkpoint_loads_through_fair_esm_path(tiny_esm2: Path) -> None:
    import esm

    adapter = load_adapter(str(tiny_esm2))
    assert isinstance(adapter, ESM2Adapter)
    assert (adapter.n_layers, adapter.d_model, adapter.name) == (2, 32, "esm2_t2_tiny")
    # The same file through fair-esm's public local loader (regression file beside it) gives identical weights.
    with torch.serialization.safe_globals([__import__("argparse").Namespace]):
        ref, _ = esm.pretrained.load_model_and_alphabet_local(str(tiny_esm2))
    for (k1, v1), (k2, v2) in zip(sorted(adapter.model.state_dict().items()), sorted(ref.state_dict().items())):
        assert k1 == k2 and torch.equal(v1, v2)


def test_every_layer_matches_fair_esm_representations(tiny_esm2: Path) -> None:
    adapter = load_adapter(str(tiny_esm2))
    batch = adapter.make_batch(SEQS)
    acts = adapter.activations(batch, adapter.layers())
    ref = adapter.model(batch.inputs["tokens"], repr_layers=adapter.layers())["representations"]
    for layer in adapter.layers():
        expected = ref[layer][batch.keep]
        torch.testing.assert_close(acts.layers[layer], expected, rtol=1e-5, atol=1e-5)
    assert len(acts.obs) == sum(len(r) for r in SEQS)
    assert list(acts.obs["residue"][:3]) == list("MKT") and list(acts.obs["position"][:3]) == [1, 2, 3]


def test_missing_regression_file_still_loads(tmp_path: Path) -> None:
    path = write_esm2_checkpoint(tmp_path / "esm2_t1_noreg.pt", num_layers=1, regression=False)
    adapter = load_adapter(str(path))
    assert adapter.n_layers == 1


def test_corrupt_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "esm2_t2_bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="esm2_t2_bad.pt"):
        load_adapter(str(bad))


def test_hf_folder_matches_hidden_states(tmp_path: Path) -> None:
    folder = write_hf_esm_folder(tmp_path / "hf_esm")
    adapter = load_adapter(str(folder))
    assert isinstance(adapter, HFESMAdapter) and adapter.n_layers == 2
    batch = adapter.make_batch(SEQS)
    acts = adapter.activations(batch, [0, 1, 2])
    with torch.no_grad():
        hidden = adapter.model(**batch.inputs, output_hidden_states=True).hidden_states
    for layer in (0, 1, 2):
        torch.testing.assert_close(acts.layers[layer], hidden[layer][batch.keep], rtol=1e-5, atol=1e-5)
    # The HF tokenizer and our residue mapping agree.
    ids = adapter.model.config and __import__("transformers").EsmTokenizer.from_pretrained(folder)(SEQS[0].sequence)["input_ids"]
    assert ids == batch.inputs["input_ids"][0, : len(ids)].tolist()


def test_unknown_hub_name_without_internet_is_a_model_error() -> None:
    with pytest.raises(ModelError, match="unknown model"):
        load_adapter("esm2_tX_nope")


@pytest.mark.internet
def test_hub_download_esm2_t6() -> None:
    adapter = load_adapter("esm2_t6_8M_UR50D")
    assert (adapter.n_layers, adapter.d_model) == (6, 320)
