"""Helpers shared by the core tests (``tests/core`` is on the path under pytest, as ``tests/apps`` is for its own)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from workbench.associate import sequence_split

if TYPE_CHECKING:  # pragma: no cover
    from workbench.sae import TrainConfig


def alternating_ids(n: int) -> list[str]:
    """``n`` sequence ids alternating the validation and the test half of :func:`~workbench.associate.sequence_split`,
    so both halves hold the same sequences' patterns."""
    cands = [f"s{i}" for i in range(20 * n)]
    split = sequence_split(cands)
    val, test = np.flatnonzero(split), np.flatnonzero(~split)
    return [cands[int(i)] for pair in zip(val[: n // 2], test[: n // 2]) for i in pair]


def small_train(**overrides: object) -> TrainConfig:
    """A :class:`~workbench.sae.TrainConfig` for the tiny test stores: 150 steps of 256 tokens, fast warm-ups, small
    evaluation; ``overrides`` replace any field."""
    from workbench.sae import TrainConfig

    opts: dict[str, object] = dict(n_tokens=256 * 150, batch_size=256, lr=3e-3, warmup_steps=10, l1_warmup_steps=20,
                                   dead_tokens=2000, aux_k=16, checkpoint_every=50, eval_tokens=2000, holdout_fraction=0.1,
                                   loss_recovered_sequences=4)
    return TrainConfig(**{**opts, **overrides})  # type: ignore[arg-type]
