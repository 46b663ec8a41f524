"""Hook points and forward pass shared by the Hugging Face ``transformers`` encoders (BERT, RoBERTa, ESM)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from workbench.adapter import HookPoint

from ._base import SequenceAdapter

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

__all__ = ["HFEncoderAdapter"]


class HFEncoderAdapter(SequenceAdapter):
    """A ``*ForMaskedLM``-style model whose encoder is ``base.embeddings`` + ``base.encoder.layer[i]``.

    Layer 0 is the embedding output and layer ``i`` the output of block ``i``; where the encoder applies a final
    layer norm (ESM-2's ``emb_layer_norm_after``), the last layer is read after it, as the model's own
    ``hidden_states`` are.
    """

    base_attr: str = "roberta"
    logits_attr: str = "logits"

    @property
    def base(self) -> nn.Module:
        return getattr(self.model, self.base_attr)  # type: ignore[no-any-return]

    def hook_point(self, layer: int) -> HookPoint:
        self.check_layers([layer])
        base = self.base
        if layer == 0:
            return HookPoint(base.embeddings)
        final_norm = getattr(base.encoder, "emb_layer_norm_after", None)
        if layer == self.n_layers and final_norm is not None:
            return HookPoint(final_norm)
        return HookPoint(base.encoder.layer[layer - 1])

    def model_inputs(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"input_ids": tokens, "attention_mask": (tokens != self.vocab.pad).long()}

    def forward(self, **inputs: Any) -> torch.Tensor:
        return getattr(self.model(**inputs), self.logits_attr)  # type: ignore[no-any-return]
