"""Helpers shared by the core tests (``tests/core`` is on the path under pytest, as ``tests/apps`` is for its own)."""

from __future__ import annotations

import numpy as np

from workbench.associate import sequence_split


def alternating_ids(n: int) -> list[str]:
    """``n`` sequence ids alternating the validation and the test half of :func:`~workbench.associate.sequence_split`,
    so both halves hold the same sequences' patterns."""
    cands = [f"s{i}" for i in range(20 * n)]
    split = sequence_split(cands)
    val, test = np.flatnonzero(split), np.flatnonzero(~split)
    return [cands[int(i)] for pair in zip(val[: n // 2], test[: n // 2]) for i in pair]
