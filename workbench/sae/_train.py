"""Training a dictionary from an activation store: streaming, resumable, and data-parallel under ``torchrun``."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import torch

from workbench._dist import Dist
from workbench._version import __version__
from workbench.errors import StoreError, WorkbenchError
from workbench.store import ActivationStore, open_store, write_json_atomic

from ._config import SAEConfig, TrainConfig
from ._io import save_sae
from ._models import SparseAutoencoder

__all__ = ["train_sae", "TrainResult", "input_statistics", "geometric_median", "OFFSET_WARNING"]

CHECKPOINT = "checkpoint.safetensors"
CHECKPOINT_STATE = "checkpoint.json"
METRICS = "metrics.json"
OFFSET_WARNING = 1.0
"""Warn when ``||mean|| / ||std||`` exceeds this and the inputs are not centred."""


class TrainResult(NamedTuple):
    """What :func:`train_sae` returns."""

    sae: SparseAutoencoder
    metrics: dict[str, Any]
    path: Path


class InputStats(NamedTuple):
    mean: torch.Tensor
    std: torch.Tensor
    scale: float
    """``sqrt(E ||x - mean||^2 / d)``: dividing by it gives unit mean squared norm per dimension."""
    offset_ratio: float
    """``||mean|| / ||std||``: how far the activations sit from the origin compared with their spread."""
    sample: torch.Tensor


def input_statistics(store: ActivationStore, layer: int, *, n_tokens: int = 65536, seed: int = 0, holdout_fraction: float = 0.05) -> InputStats:
    """Mean, spread and offset ratio of the training split, from a shuffled sample of ``n_tokens``."""
    parts, total = [], 0
    for batch in store.iter_batches(layer, min(8192, n_tokens), shuffle=True, seed=seed + 7919, split="train", holdout_fraction=holdout_fraction):
        parts.append(batch.double())
        total += len(batch)
        if total >= n_tokens:
            break
    if not parts:
        raise StoreError(f"{store.path}: no training tokens (is holdout_fraction too large?)")
    sample = torch.cat(parts)[:n_tokens]
    if not torch.isfinite(sample).all():
        raise StoreError(f"{store.path}: layer {layer} holds NaN or infinite values; re-extract it")
    mean, std = sample.mean(0), sample.std(0)
    scale = float(((sample - mean).pow(2).sum(1).mean() / sample.shape[1]).sqrt())
    ratio = float(mean.norm() / std.norm().clamp_min(1e-12))
    return InputStats(mean.float(), std.float(), max(scale, 1e-8), ratio, sample.float())


def geometric_median(points: torch.Tensor, *, iters: int = 100, tol: float = 1e-6) -> torch.Tensor:
    """Weiszfeld's algorithm: the point minimising the sum of Euclidean distances to ``points``."""
    y = points.mean(0)
    for _ in range(iters):
        d = (points - y).norm(dim=1).clamp_min(1e-8)
        w = 1 / d
        y_new = (points * w[:, None]).sum(0) / w.sum()
        if (y_new - y).norm() < tol * (1 + y.norm()):
            return y_new
        y = y_new
    return y


def _lr_factor(step: int, train: TrainConfig) -> float:
    warm = min(1.0, (step + 1) / max(1, train.warmup_steps))
    start = int(train.decay_start * train.steps)
    decay = 1.0 if step < start else max(0.0, (train.steps - step) / max(1, train.steps - start))
    return warm * decay


def _batches(store: ActivationStore, layer: int, local_batch: int, train: TrainConfig, dist: Dist, skip: int) -> Any:
    """Endless shuffled training batches (a new seed per epoch), skipping the first ``skip`` (resume)."""
    epoch, seen = 0, 0
    while True:
        got = False
        for batch in store.iter_batches(
            layer, local_batch, shuffle=True, seed=train.seed * 1000 + epoch, buffer_shards=train.buffer_shards,
            rank=dist.rank, world_size=dist.world_size, drop_last=True, split="train", holdout_fraction=train.holdout_fraction,
        ):
            got = True
            if seen >= skip:
                yield batch
            seen += 1
        if not got:
            raise StoreError(f"{store.path}: fewer training tokens per rank than one batch of {local_batch}")
        epoch += 1


def train_sae(
    store: ActivationStore | str | os.PathLike[str],
    *,
    out: str | os.PathLike[str],
    layer: int | None = None,
    arch: str = "topk",
    width: int = 4096,
    k: int = 32,
    l1_coeff: float | None = None,
    normalize: bool = True,
    train: TrainConfig | None = None,
    overwrite: bool = False,
    device: str = "cpu",
    progress: bool = True,
    metrics: bool = True,
    **sae_options: Any,
) -> TrainResult:
    """Train a dictionary on ``layer`` of ``store`` and save it to ``out``.

    ``out`` receives ``sae.safetensors``, ``cfg.json`` (every hyper-parameter, the normalisation constants, the
    store's model, layer and manifest hash) and ``metrics.json`` (fidelity on held-out sequences, see
    :func:`workbench.sae.evaluate`). While training, checkpoints go to ``<out>.partial``; running the same call
    again after a kill resumes from the last one. Under ``torchrun`` every rank streams its own part of the store
    and gradients are averaged with ``DistributedDataParallel``; ``train.batch_size`` is the global batch.
    """
    store = store if isinstance(store, ActivationStore) else open_store(store)
    train = train or TrainConfig()
    if layer is None:
        if len(store.layers) != 1:
            raise WorkbenchError(f"{store.path} has layers {store.layers}; choose one with layer=")
        layer = store.layers[0]
    if layer not in store.layers:
        raise StoreError(f"{store.path}: layer {layer} was not extracted (store has layers {store.layers})")
    options = dict(sae_options)
    if l1_coeff is not None:
        options["l1_coeff"] = l1_coeff
    cfg = SAEConfig(
        d_in=store.d_model, width=width, arch=arch, k=k, normalize=normalize,  # type: ignore[arg-type]
        model=store.model, layer=layer, store_manifest_sha256=store.manifest_sha256(), **options,
    )
    out = Path(out)
    if out.exists() and not overwrite:
        raise WorkbenchError(f"{out} already exists (pass --overwrite to replace it)")

    dist = Dist.setup(device)
    if train.batch_size % dist.world_size:
        raise WorkbenchError(f"batch_size {train.batch_size} is not divisible by {dist.world_size} processes")
    local_batch = train.batch_size // dist.world_size
    work = out.with_name(out.name + ".partial")
    try:
        stats = input_statistics(store, layer, seed=train.seed, holdout_fraction=train.holdout_fraction)
        if not normalize and stats.offset_ratio > OFFSET_WARNING:
            warnings.warn(
                f"activations are far from the origin (||mean||/||std|| = {stats.offset_ratio:.2f}) and normalize=False:"
                " uncentred training tends to kill latents", stacklevel=2,
            )
        torch.manual_seed(train.seed)
        sae = SparseAutoencoder(cfg).to(device)
        if train.decoder_norm == "free":
            sae.start_free_norm(train.init_norm)
        elif train.init_norm != 1.0:
            with torch.no_grad():
                sae.W_enc.mul_(train.init_norm)
        with torch.no_grad():
            if normalize:
                sae.input_mean.copy_(stats.mean)
                sae.input_scale.fill_(stats.scale)
            sample = sae.normalize(stats.sample[:8192].to(device))
            sae.b_dec.copy_(geometric_median(sample) if train.init_bias == "median" else sample.mean(0))
        params = [p for p in sae.parameters()]
        opt = torch.optim.Adam(params, lr=train.lr, betas=(0.9, 0.999))
        since_fired = torch.zeros(cfg.width, dtype=torch.long)
        step = 0
        meta = {
            "sae": cfg.to_dict(), "train": train.to_dict(), "world_size": dist.world_size,
            "store": {"path": str(store.path), "model": store.model, "layer": layer, "manifest_sha256": cfg.store_manifest_sha256},
        }
        if (work / CHECKPOINT_STATE).is_file():
            step = _resume(work, sae, opt, since_fired, meta)
        elif dist.rank == 0:
            work.mkdir(parents=True, exist_ok=True)
        dist.barrier()

        model: torch.nn.Module = sae
        if dist.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            model = DistributedDataParallel(sae, broadcast_buffers=False)
        sae.train()
        bar = _progress(train.steps, step, progress and dist.rank == 0)
        t0, tokens0 = time.perf_counter(), step * train.batch_size
        stream = _batches(store, layer, local_batch, train, dist, skip=step)
        last: dict[str, float] = {}
        while step < train.steps:
            x = next(stream).to(device)
            for group in opt.param_groups:
                group["lr"] = train.lr * _lr_factor(step, train)
            ramp = min(1.0, (step + 1) / max(1, train.l1_warmup_steps))
            dead = since_fired >= train.dead_tokens
            out_ = model(x, sparsity_scale=ramp, dead=dead.to(device), aux_k=train.aux_k, aux_coeff=train.aux_coeff)
            opt.zero_grad(set_to_none=True)
            out_.loss.backward()
            sae.remove_parallel_decoder_grad()
            if train.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, train.grad_clip)
            opt.step()
            sae.project_decoder()
            fired = torch.zeros(cfg.width, dtype=torch.long)
            fired[out_.codes.cols.cpu()] = 1
            dist.all_reduce_(fired, op="max")
            since_fired += train.batch_size
            since_fired[fired.bool()] = 0
            step += 1
            loss_value = float(out_.loss.detach())
            if not math.isfinite(loss_value):
                raise WorkbenchError(f"training diverged at step {step} (loss {loss_value}); lower the learning rate")
            if step % 10 == 0 or step == train.steps:
                with torch.no_grad():
                    xn = sae.normalize(x)
                    fve = 1 - float(out_.mse) / float((xn - xn.mean(0)).pow(2).sum(1).mean().clamp_min(1e-12))
                last = {"loss": loss_value, "fve": fve, "l0": len(out_.codes.values) / len(x), "dead": float(dead.float().mean()), "step": step}
                if bar is not None:
                    bar.set_postfix(loss=f"{loss_value:.4g}", fve=f"{fve:.3f}", l0=f"{last['l0']:.1f}", dead=f"{last['dead']:.1%}", refresh=False)
                    bar.update(step - bar.n)
            if train.checkpoint_every and step % train.checkpoint_every == 0 and step < train.steps and dist.rank == 0:
                _checkpoint(work, sae, opt, since_fired, step, meta)
        if bar is not None:
            bar.close()
        elapsed = time.perf_counter() - t0
        sae.fold_decoder_norm()
        if cfg.arch in ("batchtopk", "matryoshka"):  # same sample on every rank, so every rank gets the same value
            sae.calibrate_threshold(stats.sample[:16384].to(device))
        sae.eval()
        result_metrics: dict[str, Any] = {}
        if dist.rank == 0:
            speed = (step * train.batch_size - tokens0) / max(elapsed, 1e-9)
            extra = {**meta, "normalization": {"offset_ratio": stats.offset_ratio, "scale": stats.scale}, "workbench_version": __version__,
                     "train_tokens_per_s": speed, "final_batch": last}
            save_sae(sae, work, extra=extra)
            if metrics:
                from ._metrics import evaluate

                result_metrics = evaluate(sae, store, layer=layer, train=train, device=device)
            result_metrics["train_tokens_per_s"] = speed
            write_json_atomic(work / METRICS, result_metrics)
            for name in (CHECKPOINT, CHECKPOINT_STATE):
                (work / name).unlink(missing_ok=True)
            if out.exists():
                shutil.rmtree(out)
            os.replace(work, out)
        dist.barrier()
    finally:
        dist.close()
    return TrainResult(sae, result_metrics, out)


def _progress(total: int, start: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, unit="step", desc="train sae", dynamic_ncols=True)


def _checkpoint(work: Path, sae: SparseAutoencoder, opt: torch.optim.Optimizer, since_fired: torch.Tensor, step: int, meta: dict[str, Any]) -> None:
    """Parameters, Adam moments and dead-latent counters in safetensors; step and configs in JSON; both atomic."""
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in sae.state_dict().items()}
    names = dict(zip([id(p) for p in sae.parameters()], [n for n, _ in sae.named_parameters()]))
    for p in sae.parameters():
        state = opt.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq", "step"):
            if key in state:
                tensors[f"adam.{names[id(p)]}.{key}"] = torch.as_tensor(state[key]).detach().cpu().contiguous()
    tensors["since_fired"] = since_fired.clone()
    tmp = work / f".{CHECKPOINT}.tmp-{os.getpid()}"
    save_file(tensors, str(tmp))
    os.replace(tmp, work / CHECKPOINT)
    write_json_atomic(work / CHECKPOINT_STATE, {**meta, "step": step})


def _resume(work: Path, sae: SparseAutoencoder, opt: torch.optim.Optimizer, since_fired: torch.Tensor, meta: dict[str, Any]) -> int:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = json.loads((work / CHECKPOINT_STATE).read_text())
        tensors = load_file(str(work / CHECKPOINT))
    except (json.JSONDecodeError, SafetensorError, OSError) as exc:
        raise WorkbenchError(f"{work}: corrupt or truncated checkpoint ({exc}); delete it to start over") from exc
    if state["store"]["manifest_sha256"] != meta["store"]["manifest_sha256"]:
        raise WorkbenchError(
            f"{work}: checkpoint was trained on another store ({state['store']['model']} layer {state['store']['layer']},"
            f" {state['store']['path']}); delete it or use another --out"
        )
    for key in ("sae", "train", "world_size"):
        if state[key] != meta[key]:
            diff = sorted(k for k in state[key] if state[key].get(k) != meta[key].get(k)) if isinstance(meta[key], dict) else [key]
            raise WorkbenchError(f"{work}: checkpoint was made with different {key} settings ({', '.join(diff)}); delete it to start over")
    sae.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    for name, p in sae.named_parameters():
        if f"adam.{name}.exp_avg" in tensors:
            opt.state[p] = {
                "exp_avg": tensors[f"adam.{name}.exp_avg"].clone(),
                "exp_avg_sq": tensors[f"adam.{name}.exp_avg_sq"].clone(),
                "step": tensors[f"adam.{name}.step"].clone(),
            }
    since_fired.copy_(tensors["since_fired"])
    return int(state["step"])

