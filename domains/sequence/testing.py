"""Test helpers: tiny checkpoints in the real on-disk formats, so the whole pipeline runs on a CPU in seconds.

They are built from the model libraries' own classes (fair-esm's ``ESM2``, transformers' ``EsmForMaskedLM``) with
random weights, and are loaded back through exactly the path a user's real file takes. Never use them for demos,
benchmarks or quality figures.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["write_esm2_checkpoint", "write_hf_esm_folder"]


def write_esm2_checkpoint(
    path: str | Path,
    *,
    num_layers: int = 2,
    embed_dim: int = 32,
    attention_heads: int = 4,
    seed: int = 0,
    regression: bool = True,
) -> Path:
    """Save a randomly initialised fair-esm ``ESM2`` in the official checkpoint layout.

    The file holds ``{"model": state_dict with "encoder.sentence_encoder." / "encoder." prefixes, "cfg": {"model":
    Namespace(...)}}`` like the released ``esm2_t*_UR50D.pt`` files; with ``regression`` the contact-regression
    weights go to ``<stem>-contact-regression.pt`` beside it. The file name must start with ``esm2``, as fair-esm
    picks the loader from the name.
    """
    import torch
    from esm.data import Alphabet
    from esm.model.esm2 import ESM2

    path = Path(path)
    if not path.name.startswith("esm2") or path.suffix != ".pt":
        raise ValueError("fair-esm recognises ESM-2 files by a name like esm2_*.pt")
    torch.manual_seed(seed)
    model = ESM2(num_layers=num_layers, embed_dim=embed_dim, attention_heads=attention_heads,
                 alphabet=Alphabet.from_architecture("ESM-1b"), token_dropout=True)
    state = model.state_dict()
    weights = {}
    for key, value in state.items():
        if key.startswith("contact_head.regression"):
            continue
        prefix = "encoder." if key.startswith("lm_head") else "encoder.sentence_encoder."
        weights[prefix + key] = value
    cfg = argparse.Namespace(encoder_layers=num_layers, encoder_embed_dim=embed_dim,
                             encoder_attention_heads=attention_heads, token_dropout=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": weights, "cfg": {"model": cfg}}, path)
    if regression:
        reg = {k: v for k, v in state.items() if k.startswith("contact_head.regression")}
        torch.save({"model": reg}, path.with_name(path.stem + "-contact-regression.pt"))
    return path


def write_hf_esm_folder(folder: str | Path, *, num_layers: int = 2, hidden_size: int = 32, heads: int = 4, seed: int = 0) -> Path:
    """Save a randomly initialised ``EsmForMaskedLM`` with its tokenizer, as ``save_pretrained`` does."""
    import torch
    from esm.data import Alphabet
    from transformers import EsmConfig, EsmForMaskedLM, EsmTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = Alphabet.from_architecture("ESM-1b")
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(alphabet.all_toks) + "\n")
    tokenizer = EsmTokenizer(str(vocab_file))
    torch.manual_seed(seed)
    config = EsmConfig(
        vocab_size=len(alphabet.all_toks), hidden_size=hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=heads, intermediate_size=4 * hidden_size, max_position_embeddings=1026,
        position_embedding_type="rotary", pad_token_id=alphabet.padding_idx, mask_token_id=alphabet.mask_idx,
        token_dropout=True, emb_layer_norm_before=False,
    )
    EsmForMaskedLM(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
