"""Fidelity of a dictionary on held-out tokens, and the model loss with its reconstruction spliced in."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from workbench.errors import WorkbenchError

from ._config import TrainConfig
from ._models import SparseAutoencoder

if TYPE_CHECKING:  # pragma: no cover
    from workbench.adapter import Adapter
    from workbench.store import ActivationStore

__all__ = ["evaluate", "fidelity", "loss_recovered", "DENSITY_BINS"]

DENSITY_BINS = np.arange(-7.0, 0.01, 0.5)
"""Edges of the log10 firing-frequency histogram (latents that never fire are counted apart as dead)."""


@torch.no_grad()
def fidelity(sae: SparseAutoencoder, store: ActivationStore, *, layer: int, n_tokens: int = 50_000, holdout_fraction: float = 0.05, batch_size: int = 4096, device: str = "cpu") -> dict[str, Any]:
    """MSE, fraction of variance explained, mean L0, dead fraction and density histogram on held-out tokens.

    Tokens come from the sequences the training split left out (falling back to all tokens, flagged, when the
    store is too small to hold any out).
    """
    split: str | None = "test"
    if not store.heldout_sequences(holdout_fraction):
        split = None
    n = 0
    sse = 0.0
    sse_norm = 0.0
    sum_x = torch.zeros(store.d_model, dtype=torch.float64)
    sum_sq = 0.0
    l0 = 0
    fired = torch.zeros(sae.cfg.width, dtype=torch.long)
    for x in store.iter_batches(layer, batch_size, shuffle=False, split=split, holdout_fraction=holdout_fraction):
        x = x[: n_tokens - n].to(device)
        codes = sae.encode(x)
        x_hat = sae.decode(codes)
        err = (x_hat - x).double()
        sse += float(err.pow(2).sum())
        sse_norm += float(((x_hat - x) / sae.input_scale).double().pow(2).sum()) if sae.cfg.normalize else float(err.pow(2).sum())
        xd = x.double().cpu()
        sum_x += xd.sum(0)
        sum_sq += float(xd.pow(2).sum())
        active = codes > 0
        l0 += int(active.sum())
        fired += active.sum(0).cpu()
        n += len(x)
        if n >= n_tokens:
            break
    if n == 0:
        raise WorkbenchError(f"{store.path}: no tokens to evaluate on")
    sst = sum_sq - float(sum_x.pow(2).sum()) / n
    density = fired.double() / n
    live = density[density > 0]
    hist, _ = np.histogram(np.log10(live.numpy()), bins=DENSITY_BINS)
    return {
        "eval_tokens": n,
        "eval_split": "heldout" if split else "all (store too small to hold sequences out)",
        "mse": sse / n,
        "mse_normalized": sse_norm / n,
        "fve": 1.0 - sse / max(sst, 1e-12),
        "l0": l0 / n,
        "dead_fraction": float((fired == 0).double().mean()),
        "dead_count": int((fired == 0).sum()),
        "density_histogram": {"log10_bin_edges": DENSITY_BINS.tolist(), "counts": hist.tolist(), "dead": int((fired == 0).sum())},
        "density": density.float().tolist(),
    }


@torch.no_grad()
def loss_recovered(
    sae: SparseAutoencoder, store: ActivationStore, adapter: Adapter, *, layer: int, n_sequences: int = 64,
    holdout_fraction: float = 0.05, seed: int = 0, tokens_per_batch: int = 4096,
) -> dict[str, Any]:
    """The model's loss (masked-LM cross-entropy for sequence models) clean, with the SAE reconstruction spliced in
    at ``layer``, and with the layer zero- or mean-ablated, on held-out sequences.

    ``loss_recovered = (L_zero - L_sae) / (L_zero - L_clean)``; ``loss_recovered_vs_mean`` uses the mean ablation.
    """
    held = sorted(store.heldout_sequences(holdout_fraction)) or list(store.sequences["sequence_id"])
    ids = held[:n_sequences]
    adapter.prepare([layer])  # models whose rows depend on the layer (a conv layer's grid) batch for this one
    records = adapter.records_from_store(store, ids)
    mean = sae.input_mean.clone() if sae.cfg.normalize else torch.from_numpy(np.asarray(store.shard_activations(0, layer)[:4096], dtype=np.float32)).mean(0)
    edits = {
        "clean": None,
        "sae": lambda h: sae.decode(sae.encode(h.float())).to(h.dtype),
        "zero": lambda h: torch.zeros_like(h),
        "mean": lambda h: mean.to(h.device, h.dtype).expand_as(h),
    }
    totals = {name: 0.0 for name in edits}
    count = 0
    for i, batch in enumerate(adapter.batches(records, tokens_per_batch=tokens_per_batch)):
        for name, fn in edits.items():
            total, c = adapter.lm_loss(batch, layer=layer, edit=fn, seed=seed + i)
            totals[name] += total
        count += c
    if count == 0:
        raise WorkbenchError("no masked positions to evaluate the loss on")
    ce = {name: totals[name] / count for name in edits}
    gap_zero = ce["zero"] - ce["clean"]
    gap_mean = ce["mean"] - ce["clean"]
    return {
        "sequences": len(records),
        "masked_tokens": count,
        "ce_clean": ce["clean"],
        "ce_sae": ce["sae"],
        "ce_zero_ablation": ce["zero"],
        "ce_mean_ablation": ce["mean"],
        "ce_increase": ce["sae"] - ce["clean"],
        "loss_recovered": (ce["zero"] - ce["sae"]) / gap_zero if abs(gap_zero) > 1e-9 else float("nan"),
        "loss_recovered_vs_mean": (ce["mean"] - ce["sae"]) / gap_mean if abs(gap_mean) > 1e-9 else float("nan"),
    }


def evaluate(sae: SparseAutoencoder, store: ActivationStore, *, layer: int, train: TrainConfig | None = None, adapter: Adapter | None = None, device: str = "cpu") -> dict[str, Any]:
    """Every fidelity metric for ``metrics.json``; the model is loaded from the store's manifest when needed.

    For a store extracted from a random-weight copy of the model (the control), the same random copy is rebuilt
    from the recorded seed, so the loss is measured on the model the activations came from.
    """
    train = train or TrainConfig()
    sae.eval()
    result: dict[str, Any] = {"model": store.model, "layer": layer, "arch": sae.cfg.arch, "width": sae.cfg.width, "k": sae.cfg.k}
    result.update(fidelity(sae, store, layer=layer, n_tokens=train.eval_tokens, holdout_fraction=train.holdout_fraction, device=device))
    result["control"] = store.manifest.get("control")
    if train.loss_recovered_sequences <= 0:
        result["loss_recovered"] = {"skipped": "loss_recovered_sequences = 0"}
        return result
    try:
        if adapter is None:
            from workbench.registry import load_adapter

            adapter = load_adapter(store.manifest.get("model_source", store.model), device=device)
            control = store.manifest.get("control") or {}
            if "random_weights_seed" in control:
                adapter = adapter.randomized(int(control["random_weights_seed"]))
        if adapter.weights_hash() != store.manifest["weights_sha256"]:
            raise WorkbenchError(f"the model loaded from {adapter.source!r} is not the one the store was extracted with")
        result["loss_recovered"] = loss_recovered(
            sae, store, adapter, layer=layer, n_sequences=train.loss_recovered_sequences, holdout_fraction=train.holdout_fraction, seed=train.seed,
        )
    except (WorkbenchError, NotImplementedError) as exc:
        result["loss_recovered"] = {"skipped": str(exc)}
    return result
