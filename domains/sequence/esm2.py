"""ESM-2 (Lin et al. 2023) through fair-esm's own loading code, and ESM-2 as a Hugging Face ``EsmForMaskedLM`` folder.

* a hub name (``esm2_t6_8M_UR50D`` and siblings) goes through ``esm.pretrained.load_model_and_alphabet_hub``,
  which downloads into the torch hub cache where the internet is reachable and reuses that cache otherwise;
* a local ``.pt`` file in the official format goes through ``esm.pretrained.load_model_and_alphabet_core``
  after a ``weights_only`` load; its contact-regression file is used when it sits beside it;
* a folder with a ``config.json`` of ``model_type: esm`` (what InterPLM uses) loads with ``EsmForMaskedLM``.
"""

from __future__ import annotations

import argparse
import json
import re
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

from workbench.adapter import HookPoint
from workbench.errors import ModelError
from workbench.registry import ModelCard

from ._base import SequenceAdapter, Vocab, safe_torch_load
from ._hf import HFEncoderAdapter

__all__ = ["ESM2Adapter", "HFESMAdapter", "HUB_NAME"]

HUB_NAME = re.compile(r"esm2_t(\d+)_(\d+[MB])_UR50D")
# fair-esm's ESM-2 alphabet: 20 standard residues plus X, B, U, Z, O.
ESM_RESIDUES = "ACDEFGHIKLMNPQRSTVWYXBUZO"
ESM_MAX_LENGTH = 1022  # ESM-2 was trained on crops of 1,024 tokens including BOS and EOS


def _vocab_from_alphabet(alphabet: Any) -> Vocab:
    residues = {c: alphabet.get_idx(c) for c in ESM_RESIDUES}
    return Vocab(residues, bos=alphabet.cls_idx, eos=alphabet.eos_idx, pad=alphabet.padding_idx, mask=alphabet.mask_idx)


class ESM2Adapter(SequenceAdapter):
    """fair-esm ``ESM2``: blocks run in ``(T, B, D)`` layout; the last layer is read after ``emb_layer_norm_after``."""

    family = "esm2"

    @classmethod
    def card_for_path(cls, path: Path) -> ModelCard | None:
        if path.is_file() and path.suffix == ".pt" and path.stem.startswith("esm2"):
            return ModelCard(name=path.stem, adapter=cls.family, n_layers=0, d_model=0, max_length=ESM_MAX_LENGTH, weights=str(path))
        return None

    @classmethod
    def card_for_name(cls, name: str) -> ModelCard | None:
        m = HUB_NAME.fullmatch(name)
        if not m:
            return None
        return ModelCard(name=name, adapter=cls.family, n_layers=int(m.group(1)), d_model=0, max_length=ESM_MAX_LENGTH, weights=f"fair-esm hub: {name}")

    @classmethod
    def load(cls, card: ModelCard, *, source: str | None = None, device: str = "cpu") -> ESM2Adapter:
        import torch
        from esm import pretrained

        if source is not None:
            path = Path(source)
            model_data = safe_torch_load(path)
            regression = path.with_name(path.stem + "-contact-regression.pt")
            regression_data = safe_torch_load(regression) if regression.is_file() else None
            try:
                with warnings.catch_warnings():  # contacts are not used here; a missing regression file is fine
                    warnings.filterwarnings("ignore", message="Regression weights not found")
                    model, alphabet = pretrained.load_model_and_alphabet_core(path.stem, model_data, regression_data)
            except (KeyError, AttributeError, RuntimeError) as exc:
                raise ModelError(f"{path}: not an ESM-2 checkpoint in fair-esm's format ({exc})") from exc
        else:
            try:
                with torch.serialization.safe_globals([argparse.Namespace]):
                    model, alphabet = pretrained.load_model_and_alphabet_hub(card.name)
            except Exception as exc:  # network errors come in many types
                raise ModelError(
                    f"could not load {card.name!r} from the fair-esm hub ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''});"
                    " without internet, pass the path of a local .pt checkpoint instead"
                ) from exc
        card = replace(card, n_layers=model.num_layers, d_model=model.embed_dim)
        return cls(model, card, _vocab_from_alphabet(alphabet), device=device)

    def hook_point(self, layer: int) -> HookPoint:
        self.check_layers([layer])
        if layer == 0:
            return HookPoint(self.model.layers[0], pre=True, seq_first=True)
        if layer == self.n_layers:
            return HookPoint(self.model.emb_layer_norm_after, seq_first=True)
        return HookPoint(self.model.layers[layer - 1], seq_first=True)

    def forward(self, **inputs: Any) -> Any:
        return self.model(inputs["tokens"])["logits"]


class HFESMAdapter(HFEncoderAdapter):
    """ESM-2 saved as a Hugging Face ``EsmForMaskedLM`` folder (``config.json`` + weights + ``vocab.txt``)."""

    family = "esm2-hf"
    base_attr = "esm"

    @classmethod
    def card_for_path(cls, path: Path) -> ModelCard | None:
        config = path / "config.json"
        if not (path.is_dir() and config.is_file()):
            return None
        cfg = json.loads(config.read_text())
        if cfg.get("model_type") != "esm":
            return None
        return ModelCard(
            name=path.name,
            adapter=cls.family,
            n_layers=int(cfg["num_hidden_layers"]),
            d_model=int(cfg["hidden_size"]),
            max_length=min(ESM_MAX_LENGTH, int(cfg.get("max_position_embeddings", 1026)) - 2),
            weights=str(path),
        )

    @classmethod
    def load(cls, card: ModelCard, *, source: str | None = None, device: str = "cpu") -> HFESMAdapter:
        from transformers import EsmForMaskedLM, EsmTokenizer

        folder = source or card.weights
        try:
            model = EsmForMaskedLM.from_pretrained(folder)
            tokenizer = EsmTokenizer.from_pretrained(folder)
        except (OSError, ValueError) as exc:
            raise ModelError(f"{folder}: cannot load an EsmForMaskedLM ({str(exc).splitlines()[0]})") from exc
        vocab = tokenizer.get_vocab()
        residues = {c: vocab[c] for c in ESM_RESIDUES if c in vocab}
        return cls(
            model,
            card,
            Vocab(residues, bos=tokenizer.cls_token_id, eos=tokenizer.eos_token_id, pad=tokenizer.pad_token_id, mask=tokenizer.mask_token_id),
            device=device,
        )
