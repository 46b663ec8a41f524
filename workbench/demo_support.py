"""Small helpers the domains' demos share: reuse a finished stage, time stages, train the demo SAE once, format.

Every demo stage writes a folder that marks itself complete (a store's ``manifest.json``, an SAE's
``metrics.json``), so running a demo again reuses what is done and resumes what is not.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["Stages", "store_once", "topk_sae_once", "fmt"]

T = TypeVar("T")


class Stages:
    """Runs named stages and keeps their wall-clock seconds (``seconds``: name -> s, rounded to 0.1)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str, fn: Callable[[], T]) -> T:
        t0 = time.perf_counter()
        result = fn()
        self.seconds[name] = round(time.perf_counter() - t0, 1)
        return result


def store_once(path: Path, make: Callable[[], Any], log: Callable[[str], None], what: str) -> Any:
    """The finished store at ``path``, or ``make()`` after logging ``what`` (an unfinished one resumes in ``make``)."""
    import workbench
    from workbench.errors import StoreError

    try:
        store = workbench.open_store(path)
        log(f"reusing {path}")
        return store
    except StoreError:
        log(what)
        return make()


def topk_sae_once(store: Any, out: Path, *, layer: int, width: int, k: int, n_tokens: int, seed: int, progress: bool,
                  log: Callable[[str], None], unit: str = "tokens") -> Path:
    """Train the demo's TopK SAE into ``out`` unless a finished one (with ``metrics.json``) is there; returns ``out``."""
    from workbench.sae import TrainConfig, train_sae

    if (out / "metrics.json").is_file():
        log(f"reusing {out}")
        return out
    log(f"training a TopK SAE (width {width}, k {k}, {n_tokens:,} {unit}) on {store.path.name}")
    train_sae(store, out=out, layer=layer, arch="topk", width=width, k=k, train=TrainConfig(n_tokens=n_tokens, seed=seed),
              progress=progress)
    return out


def fmt(value: Any, digits: int = 3) -> str:
    """``value`` with ``digits`` decimals, or ``n/a`` when it is not a number."""
    try:
        return f"{float(value):.{digits}f}"
    except (TypeError, ValueError):
        return "n/a"
