"""Sweeps over architecture, k, width and sparsity coefficient: one row per run for the FVE-L0 trade-off curve."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

from workbench.store import ActivationStore, open_store

from ._config import TrainConfig

__all__ = ["sweep"]


def sweep(
    store: ActivationStore | str | os.PathLike[str],
    *,
    out: str | os.PathLike[str],
    layer: int | None = None,
    arch: list[str] = ("topk",),  # type: ignore[assignment]
    k: list[int] = (32,),  # type: ignore[assignment]
    width: list[int] = (4096,),  # type: ignore[assignment]
    l1_coeff: list[float] | None = None,
    train: TrainConfig | None = None,
    progress: bool = True,
) -> Any:
    """Train one dictionary per combination into ``out/<run>`` and write ``out/sweep.csv``.

    ``k`` applies to the TopK family, ``l1_coeff`` to ``relu`` and ``jumprelu``. Runs already finished in ``out``
    are reused, so an interrupted sweep continues. Returns the table as a pandas DataFrame.
    """
    import json

    import pandas as pd

    from ._train import train_sae

    store = store if isinstance(store, ActivationStore) else open_store(store)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for a, w in itertools.product(arch, width):
        knobs = [("k", v) for v in k] if a in ("topk", "batchtopk", "matryoshka") else [("l1_coeff", v) for v in (l1_coeff or [None])]
        for name, value in knobs:
            run = out / f"{a}_w{w}_{name}{value if value is not None else 'default'}"
            options: dict[str, Any] = {name: value} if value is not None else {}
            if not (run / "metrics.json").is_file():
                train_sae(store, out=run, layer=layer, arch=a, width=w, train=train, progress=progress, overwrite=True, **options)
            m = json.loads((run / "metrics.json").read_text())
            lr = m.get("loss_recovered", {})
            rows.append({
                "run": run.name, "arch": a, "width": w, "k": options.get("k"), "l1_coeff": options.get("l1_coeff"),
                "fve": m["fve"], "l0": m["l0"], "dead_fraction": m["dead_fraction"], "mse": m["mse"],
                "loss_recovered": lr.get("loss_recovered"), "ce_increase": lr.get("ce_increase"),
                "train_tokens_per_s": m.get("train_tokens_per_s"),
            })
    table = pd.DataFrame(rows)
    tmp = out / ".sweep.csv.tmp"
    table.to_csv(tmp, index=False)
    tmp.replace(out / "sweep.csv")
    return table
