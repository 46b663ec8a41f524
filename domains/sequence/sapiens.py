"""Sapiens (Prihoda et al. 2022): fairseq RoBERTa heavy- and light-chain models of human antibodies.

The checkpoints ship in the ``sapiens==1.0.0`` source archive (``pip install --no-deps sapiens==1.0.0``). Importing
``sapiens`` needs fairseq, which does not install here, so the files are located without importing the package,
loaded with ``torch.load(weights_only=True)`` and mapped one-to-one onto ``transformers.RobertaForMaskedLM``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path
from typing import Any

from workbench.errors import ModelError
from workbench.registry import ModelCard

from ._base import Vocab, safe_torch_load
from ._hf import HFEncoderAdapter

__all__ = ["SapiensAdapter", "fairseq_to_roberta"]


def _checkpoint_dir() -> Path:
    spec = importlib.util.find_spec("sapiens")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("sapiens is not installed: pip install --no-deps 'sapiens==1.0.0'")
    return Path(spec.submodule_search_locations[0]) / "models" / "v1"


def _read_dictionary(path: Path) -> list[str]:
    """A fairseq dictionary: four specials, the ``dict.txt`` symbols in order, then ``<mask>`` (masked-LM task)."""
    symbols = ["<s>", "<pad>", "</s>", "<unk>"]
    symbols += [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    return symbols + ["<mask>"]


def fairseq_to_roberta(state: dict[str, Any]) -> dict[str, Any]:
    """Rename a fairseq RoBERTa state dict (``decoder.sentence_encoder.*``) to ``RobertaForMaskedLM`` names."""
    import torch

    out: dict[str, Any] = {}
    pre = "decoder.sentence_encoder."
    layer_map = {
        "self_attn.q_proj": "attention.self.query",
        "self_attn.k_proj": "attention.self.key",
        "self_attn.v_proj": "attention.self.value",
        "self_attn.out_proj": "attention.output.dense",
        "self_attn_layer_norm": "attention.output.LayerNorm",
        "fc1": "intermediate.dense",
        "fc2": "output.dense",
        "final_layer_norm": "output.LayerNorm",
    }
    for key, value in state.items():
        if key.startswith(pre + "layers."):
            idx, rest = key[len(pre + "layers.") :].split(".", 1)
            module, param = rest.rsplit(".", 1)
            out[f"roberta.encoder.layer.{idx}.{layer_map[module]}.{param}"] = value
        elif key == pre + "embed_tokens.weight":
            out["roberta.embeddings.word_embeddings.weight"] = value
        elif key == pre + "embed_positions.weight":
            out["roberta.embeddings.position_embeddings.weight"] = value
        elif key.startswith(pre + "emb_layer_norm."):
            out["roberta.embeddings.LayerNorm." + key.rsplit(".", 1)[1]] = value
        elif key == "decoder.lm_head.weight":
            out["lm_head.decoder.weight"] = value
        elif key == "decoder.lm_head.bias":
            out["lm_head.bias"] = value
        elif key.startswith("decoder.lm_head."):
            out["lm_head." + key[len("decoder.lm_head.") :]] = value
        else:
            raise ModelError(f"unexpected fairseq parameter {key!r}")
    d_model = out["roberta.embeddings.word_embeddings.weight"].shape[1]
    out["roberta.embeddings.token_type_embeddings.weight"] = torch.zeros(1, d_model)
    return out


class SapiensAdapter(HFEncoderAdapter):
    """``sapiens-vh`` / ``sapiens-vl``: the card's ``options.checkpoint`` names the file."""

    family = "sapiens"

    @classmethod
    def load(cls, card: ModelCard, *, source: str | None = None, device: str = "cpu") -> SapiensAdapter:
        from transformers import RobertaConfig, RobertaForMaskedLM

        folder = _checkpoint_dir()
        path = Path(source) if source else folder / card.options["checkpoint"]
        data = safe_torch_load(path)
        try:
            args, state = data["args"], data["model"]
        except (KeyError, TypeError) as exc:
            raise ModelError(f"{path}: not a fairseq checkpoint (no 'args'/'model')") from exc
        symbols = _read_dictionary(path.with_name("dict.txt"))
        config = RobertaConfig(
            vocab_size=len(symbols),
            hidden_size=args.encoder_embed_dim,
            num_hidden_layers=args.encoder_layers,
            num_attention_heads=args.encoder_attention_heads,
            intermediate_size=args.encoder_ffn_embed_dim,
            hidden_act=args.activation_fn,
            max_position_embeddings=args.max_positions + 2,
            pad_token_id=symbols.index("<pad>"),
            bos_token_id=symbols.index("<s>"),
            eos_token_id=symbols.index("</s>"),
            type_vocab_size=1,
            layer_norm_eps=1e-5,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
        model = RobertaForMaskedLM(config)
        mapped = fairseq_to_roberta(state)
        missing, unexpected = model.load_state_dict(mapped, strict=False)
        # position_ids is a buffer; the LM-head decoder bias is tied to lm_head.bias.
        missing = [k for k in missing if not k.endswith(("position_ids", "lm_head.decoder.bias"))]
        if missing or unexpected:
            raise ModelError(f"{path}: weights do not match RoBERTa (missing {missing}, unexpected {unexpected})")
        residues = {s: i for i, s in enumerate(symbols) if len(s) == 1}
        vocab = Vocab(residues, bos=symbols.index("<s>"), eos=symbols.index("</s>"), pad=symbols.index("<pad>"), mask=symbols.index("<mask>"))
        if card.max_length != args.max_positions - 2:  # the file, not the card, is the authority on its length limit
            card = replace(card, max_length=args.max_positions - 2)
        return cls(model, card, vocab, device=device)
