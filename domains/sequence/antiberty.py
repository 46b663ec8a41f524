"""AntiBERTy (Ruffolo et al. 2021): the antibody BERT whose weights ship inside the ``antiberty==0.1.3`` wheel."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from workbench.errors import ModelError
from workbench.registry import ModelCard

from ._base import Vocab
from ._hf import HFEncoderAdapter

__all__ = ["AntiBERTyAdapter"]


def _package_dir() -> Path:
    spec = importlib.util.find_spec("antiberty")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("antiberty is not installed: pip install 'antiberty==0.1.3' 'transformers<5'")
    return Path(spec.submodule_search_locations[0])


class AntiBERTyAdapter(HFEncoderAdapter):
    """Loads ``trained_models/AntiBERTy_md_smooth`` with antiberty's own ``AntiBERTy`` class and vocabulary."""

    family = "antiberty"
    base_attr = "bert"
    logits_attr = "prediction_logits"

    @classmethod
    def load(cls, card: ModelCard, *, source: str | None = None, device: str = "cpu") -> AntiBERTyAdapter:
        import transformers

        if int(transformers.__version__.split(".")[0]) >= 5:
            raise ModelError(f"AntiBERTy needs transformers<5 (installed: {transformers.__version__})")
        from antiberty import AntiBERTy

        root = _package_dir() / "trained_models"
        checkpoint = Path(source) if source else root / card.options.get("checkpoint", "AntiBERTy_md_smooth")
        if not checkpoint.is_dir():
            raise ModelError(f"{checkpoint}: AntiBERTy checkpoint folder not found (is antiberty==0.1.3 installed?)")
        model = AntiBERTy.from_pretrained(str(checkpoint))
        tokenizer = transformers.BertTokenizer(vocab_file=str(root / "vocab.txt"), do_lower_case=False)
        vocab = tokenizer.get_vocab()
        residues = {tok: idx for tok, idx in vocab.items() if len(tok) == 1 and tok.isalpha()}
        return cls(
            model,
            card,
            Vocab(residues, bos=tokenizer.cls_token_id, eos=tokenizer.sep_token_id, pad=tokenizer.pad_token_id, mask=tokenizer.mask_token_id),
            device=device,
        )

