"""Capture and edit hooks, exercised on the tiny ESM-2 checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from domains.sequence.records import SequenceRecord
from workbench.errors import ModelError
from workbench.registry import load_adapter

SEQS = [SequenceRecord("a", "MKTAYIAKQRQISFVKSHFSRQ"), SequenceRecord("b", "GSHMAAAW")]


@pytest.fixture()
def adapter(tiny_esm2: Path):  # type: ignore[no-untyped-def]
    return load_adapter(str(tiny_esm2))


def _hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_identity_edit_reproduces_clean_logits(adapter, layer: int) -> None:  # type: ignore[no-untyped-def]
    batch = adapter.make_batch(SEQS)
    clean = adapter.run_with_edit(batch, layer)
    same = adapter.run_with_edit(batch, layer, lambda h: h)
    torch.testing.assert_close(same, clean)
    assert _hook_count(adapter.model) == 0


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_replacing_a_layer_with_its_captured_value_is_exact(adapter, layer: int) -> None:  # type: ignore[no-untyped-def]
    """Splicing in what capture returned (as an SAE reconstruction would be) changes nothing."""
    batch = adapter.make_batch(SEQS)
    captured = adapter.activations(batch, [layer]).layers[layer]
    clean = adapter.run_with_edit(batch, layer)
    spliced = adapter.run_with_edit(batch, layer, lambda h: captured)
    torch.testing.assert_close(spliced, clean)


def test_zero_ablation_changes_only_through_kept_tokens(adapter) -> None:  # type: ignore[no-untyped-def]
    batch = adapter.make_batch(SEQS)
    clean = adapter.run_with_edit(batch, 1)
    seen: list[tuple[int, ...]] = []

    def zero(h: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(h.shape))
        return torch.zeros_like(h)

    ablated = adapter.run_with_edit(batch, 1, zero)
    assert seen == [(sum(len(r) for r in SEQS), adapter.d_model)]
    assert not torch.allclose(ablated, clean)


def test_steering_one_direction_moves_logits_monotonically(adapter) -> None:  # type: ignore[no-untyped-def]
    batch = adapter.make_batch(SEQS)
    direction = torch.zeros(adapter.d_model)
    direction[0] = 1.0
    clean = adapter.run_with_edit(batch, 2)
    small = adapter.run_with_edit(batch, 2, lambda h: h + 0.5 * direction)
    large = adapter.run_with_edit(batch, 2, lambda h: h + 5.0 * direction)
    d_small = (small - clean).abs().mean()
    d_large = (large - clean).abs().mean()
    assert 0 < d_small < d_large


def test_hooks_are_removed_when_the_edit_fails(adapter) -> None:  # type: ignore[no-untyped-def]
    batch = adapter.make_batch(SEQS)
    with pytest.raises(ValueError, match="edit function returned shape"):
        adapter.run_with_edit(batch, 1, lambda h: h[:3])
    assert _hook_count(adapter.model) == 0
    adapter.activations(batch, [1])
    assert _hook_count(adapter.model) == 0


def test_early_stop_captures_only_what_is_needed(adapter) -> None:  # type: ignore[no-untyped-def]
    batch = adapter.make_batch(SEQS)
    calls: list[str] = []
    handle = adapter.model.lm_head.register_forward_hook(lambda *a: calls.append("lm_head"))
    try:
        adapter.activations(batch, [1])
        assert calls == []  # the forward stopped after layer 1
        adapter.run_with_edit(batch, 1)
        assert calls == ["lm_head"]
    finally:
        handle.remove()


def test_unknown_layer(adapter) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ModelError, match="has no layer 7"):
        adapter.activations(adapter.make_batch(SEQS), [7])


def test_batches_respect_token_budget_and_cover_every_record(adapter) -> None:  # type: ignore[no-untyped-def]
    recs = [SequenceRecord(f"s{i}", "ACDEFGHIKL"[: 3 + i % 8] * (1 + i % 3)) for i in range(30)]
    batches = list(adapter.batches(recs, tokens_per_batch=64))
    seen = sorted(i for b in batches for i in b.index)
    assert seen == list(range(30))
    for b in batches:
        tokens = adapter.tokens_of(b)
        assert tokens.numel() <= 64 or tokens.shape[0] == 1
    widths = [adapter.tokens_of(b).shape[1] for b in batches]
    assert widths == sorted(widths, reverse=True)  # longest first
