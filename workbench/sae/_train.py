"""Training a dictionary from an activation store: streaming, resumable, and data-parallel under ``torchrun``."""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

from workbench._dist import Dist, local_device
from workbench._io import remove_temps, set_output_mode
from workbench._version import __version__
from workbench.adapter import autocast as precision_context
from workbench.errors import StoreError, WorkbenchError
from workbench.store import ActivationStore, open_store, write_json_atomic

from ._config import SAEConfig, TrainConfig
from ._io import save_sae
from ._models import SparseAutoencoder

__all__ = ["train_sae", "train_saes", "RunSpec", "TrainResult", "input_statistics", "geometric_median", "OFFSET_WARNING"]

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


def _batches(store: ActivationStore, layer: int, local_batch: int, train: TrainConfig, dist: Dist, skip: int, device: str) -> Any:
    """Endless shuffled training batches on ``device`` (a new seed per epoch), skipping the first ``skip`` (resume).

    Shards are read ahead by a background thread (``train.prefetch``) and shuffled on the device (see
    :meth:`~workbench.store.ActivationStore.iter_batches`): the same batches as reading them on the host.
    """
    epoch, seen = 0, 0
    while True:
        got = False
        batches = store.iter_batches(
            layer, local_batch, shuffle=True, seed=train.seed * 1000 + epoch, buffer_shards=train.buffer_shards,
            rank=dist.rank, world_size=dist.world_size, drop_last=True, split="train", holdout_fraction=train.holdout_fraction,
            device=device, prefetch=train.prefetch,
        )
        try:
            for batch in batches:
                got = True
                if seen >= skip:
                    yield batch
                seen += 1
        finally:
            close = getattr(batches, "close", None)  # stops the reader thread now, not at garbage collection
            if callable(close):
                close()
        if not got:
            raise StoreError(f"{store.path}: fewer training tokens per rank than one batch of {local_batch}")
        epoch += 1


@dataclass
class RunSpec:
    """One dictionary to train: where it goes and its architecture (see :func:`train_sae` for the options)."""

    out: str | os.PathLike[str]
    """Folder that receives ``sae.safetensors``, ``cfg.json`` and ``metrics.json``."""
    arch: str = "topk"
    """``relu``, ``topk``, ``batchtopk``, ``jumprelu`` or ``matryoshka``."""
    width: int = 4096
    """Number of latents."""
    k: int = 32
    """Active latents per token (TopK family)."""
    l1_coeff: float | None = None
    """Sparsity coefficient (ReLU: L1, JumpReLU: L0); None keeps :class:`SAEConfig`'s default."""
    normalize: bool = True
    """Centre and scale the inputs (see :class:`SAEConfig`)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Further :class:`SAEConfig` fields (``matryoshka_groups``, ``jumprelu_bandwidth``...)."""


class _Run:
    """One dictionary being trained: its model, optimiser, dead-latent counters and folders."""

    def __init__(self, spec: RunSpec, cfg: SAEConfig, train: TrainConfig, stats: InputStats, runtime: dict[str, Any],
                 meta: dict[str, Any], device: str, dist: Dist) -> None:
        self.spec, self.cfg, self.meta, self.device = spec, cfg, meta, device
        self.out = Path(spec.out)
        self.work = _work_folder(self.out)
        torch.manual_seed(train.seed)
        sae = SparseAutoencoder(cfg).to(device)
        if train.decoder_norm == "free":
            sae.start_free_norm(train.init_norm)
        elif train.init_norm != 1.0:
            with torch.no_grad():
                sae.W_enc.mul_(train.init_norm)
        with torch.no_grad():
            if cfg.normalize:
                sae.input_mean.copy_(stats.mean)
                sae.input_scale.fill_(stats.scale)
            sample = sae.normalize(stats.sample[:8192].to(device))
            sae.b_dec.copy_(geometric_median(sample) if train.init_bias == "median" else sample.mean(0))
        self.sae = sae
        self.params = list(sae.parameters())
        self.fused = str(device).startswith("cuda")
        self.opt = torch.optim.Adam(self.params, lr=train.lr, betas=(0.9, 0.999), fused=self.fused or None)
        self.since_fired = torch.zeros(cfg.width, dtype=torch.long, device=device)
        self.step = 0
        if (self.work / CHECKPOINT_STATE).is_file():
            self.step = _resume(self.work, self)
        elif dist.rank == 0:
            self.work.mkdir(parents=True, exist_ok=True)
        self.model: torch.nn.Module = sae
        if dist.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.model = DistributedDataParallel(sae, broadcast_buffers=False)
        if runtime["compile"]:
            self.model = torch.compile(self.model)  # type: ignore[assignment]
        self.kernels = runtime["kernels"]
        self.has_dead = False
        self.last: dict[str, float] = {}
        self.out_: Any = None

    def train_step(self, x: torch.Tensor, step: int, train: TrainConfig, dist: Dist, autocast: Any) -> None:
        """One optimiser step on ``x``; no host synchronisation unless ``self.has_dead`` is refreshed by the caller."""
        for group in self.opt.param_groups:
            group["lr"] = train.lr * _lr_factor(step, train)
        ramp = min(1.0, (step + 1) / max(1, train.l1_warmup_steps))
        dead = self.since_fired >= train.dead_tokens if self.has_dead else None
        # The ramp only matters to ReLU / JumpReLU; as a device tensor it neither syncs nor recompiles a compiled step.
        scale = torch.full((), ramp, device=x.device) if self.cfg.arch in ("relu", "jumprelu") else 1.0
        with autocast():
            out = self.model(x, sparsity_scale=scale, dead=dead, aux_k=train.aux_k,
                             aux_coeff=train.aux_coeff, kernels=self.kernels, codes=False)
        self.opt.zero_grad(set_to_none=True)
        out.loss.backward()
        self.sae.remove_parallel_decoder_grad()
        if train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, train.grad_clip)
        self.opt.step()
        self.sae.project_decoder()
        fired = out.fired.to(torch.int32)
        dist.all_reduce_(fired, op="max")
        self.since_fired += train.batch_size
        self.since_fired.masked_fill_(fired.bool(), 0)
        self.step = step + 1
        self.out_ = out

    def refresh(self, train: TrainConfig) -> None:
        """Host-side view of the dead latents (one synchronisation): whether the AuxK loss has anything to use."""
        self.has_dead = bool((self.since_fired >= train.dead_tokens).any())

    def check(self, x: torch.Tensor, train: TrainConfig) -> dict[str, float]:
        """Loss, FVE, L0 and dead fraction of the last step (one synchronisation); raise if the loss diverged."""
        out = self.out_
        loss_value = float(out.loss.detach())
        if not math.isfinite(loss_value):
            raise WorkbenchError(f"{self.out.name}: training diverged by step {self.step} (loss {loss_value}); lower the learning rate")
        with torch.no_grad():
            xn = self.sae.normalize(x)
            fve = 1 - float(out.mse) / float((xn - xn.mean(0)).pow(2).sum(1).mean().clamp_min(1e-12))
        dead = float((self.since_fired >= train.dead_tokens).float().mean())
        self.last = {"loss": loss_value, "fve": fve, "l0": float(out.l0), "dead": dead, "step": self.step}
        return self.last


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
    store's model, layer and manifest hash, and the resolved precision and kernels) and ``metrics.json`` (fidelity on
    held-out sequences, see :func:`workbench.sae.evaluate`). While training, checkpoints go to ``<out>.partial``;
    running the same call again after a kill resumes from the last one. Under ``torchrun`` every rank streams its own
    part of the store and gradients are averaged with ``DistributedDataParallel``; ``train.batch_size`` is the global
    batch. On CUDA the defaults are bf16 autocast with float32 master weights and dense kernels
    (``train.precision``, ``train.kernels``), with batches read ahead by a background thread and shuffled on the GPU.
    """
    spec = RunSpec(out, arch=arch, width=width, k=k, l1_coeff=l1_coeff, normalize=normalize, options=sae_options)
    return train_saes(store, [spec], layer=layer, train=train, overwrite=overwrite, device=device, progress=progress,
                      metrics=metrics)[0]


def train_saes(
    store: ActivationStore | str | os.PathLike[str],
    runs: Sequence[RunSpec],
    *,
    layer: int | None = None,
    train: TrainConfig | None = None,
    overwrite: bool = False,
    device: str = "cpu",
    progress: bool = True,
    metrics: bool = True,
) -> list[TrainResult]:
    """Train several dictionaries from one pass over the data: every batch is read once and given to each of them.

    Each run gets exactly what :func:`train_sae` would give it alone with the same ``train`` settings (same batches,
    same initialisation seed, same folders, checkpoints and resume), so a k / width / architecture sweep costs one
    read of the store. Returns one :class:`TrainResult` per run, in order.
    """
    store = store if isinstance(store, ActivationStore) else open_store(store)
    train = train or TrainConfig()
    if not runs:
        raise WorkbenchError("no runs to train")
    if layer is None:
        if len(store.layers) != 1:
            raise WorkbenchError(f"{store.path} has layers {store.layers}; choose one with layer=")
        layer = store.layers[0]
    if layer not in store.layers:
        raise StoreError(f"{store.path}: layer {layer} was not extracted (store has layers {store.layers})")
    outs = [Path(r.out).resolve() for r in runs]
    if len(set(outs)) != len(outs):
        raise WorkbenchError("two runs write to the same folder")
    cfgs = []
    for spec in runs:
        options = dict(spec.options)
        if spec.l1_coeff is not None:
            options["l1_coeff"] = spec.l1_coeff
        cfgs.append(SAEConfig(
            d_in=store.d_model, width=spec.width, arch=spec.arch, k=spec.k, normalize=spec.normalize,  # type: ignore[arg-type]
            model=store.model, layer=layer, store_manifest_sha256=store.manifest_sha256(), **options,
        ))
        if Path(spec.out).exists() and not overwrite:
            raise WorkbenchError(f"{spec.out} already exists (pass --overwrite to replace it)")
    device = local_device(device)
    runtimes = [train.runtime(device, cfg.arch) for cfg in cfgs]

    dist = Dist.setup(device)
    if train.batch_size % dist.world_size:
        raise WorkbenchError(f"batch_size {train.batch_size} is not divisible by {dist.world_size} processes")
    local_batch = train.batch_size // dist.world_size
    fresh = [w for w in (_work_folder(Path(spec.out)) for spec in runs) if not w.exists()]
    try:
        stats = input_statistics(store, layer, seed=train.seed, holdout_fraction=train.holdout_fraction)
        if stats.offset_ratio > OFFSET_WARNING and not all(cfg.normalize for cfg in cfgs):
            warnings.warn(
                f"activations are far from the origin (||mean||/||std|| = {stats.offset_ratio:.2f}) and normalize=False:"
                " uncentred training tends to kill latents", stacklevel=3,
            )
        store_meta = {"path": str(store.path), "model": store.model, "layer": layer, "manifest_sha256": cfgs[0].store_manifest_sha256}
        active = [
            _Run(spec, cfg, train, stats, runtime, {"sae": cfg.to_dict(), "train": train.to_dict(), "world_size": dist.world_size,
                                                  "store": store_meta, "runtime": runtime}, device, dist)
            for spec, cfg, runtime in zip(runs, cfgs, runtimes)
        ]
        dist.barrier()
        autocast = functools.partial(precision_context, device, runtimes[0]["precision"])  # one TrainConfig: one precision
        device_type = torch.device(device).type

        # Host synchronisations cost nothing on the CPU, so keep the exact per-step behaviour there; on a GPU read the
        # dead-latent flags and the loss every ``sync_every`` steps only.
        sync_every = 1 if device_type == "cpu" else 10
        step = min(r.step for r in active)
        for r in active:
            r.sae.train()
            r.refresh(train)
        bar = _progress(train.steps, step, progress and dist.rank == 0, len(active))
        t0, tokens0 = time.perf_counter(), step * train.batch_size
        stream = _batches(store, layer, local_batch, train, dist, skip=step, device=device)
        try:
            while step < train.steps:
                x = next(stream)
                for r in active:
                    if r.step == step:  # a run whose checkpoint is ahead (killed between two runs' checkpoints) waits
                        r.train_step(x, step, train, dist, autocast)
                step += 1
                checkpoint = bool(train.checkpoint_every) and step % train.checkpoint_every == 0 and step < train.steps
                if step % 10 == 0 or step == train.steps or checkpoint:
                    last = [r.check(x, train) for r in active if r.step == step and r.out_ is not None]
                    if bar is not None and last:
                        bar.set_postfix(**_postfix(last), refresh=False)
                        bar.update(step - bar.n)
                if step % sync_every == 0:
                    for r in active:
                        r.refresh(train)
                if checkpoint and dist.rank == 0:
                    for r in active:
                        _checkpoint(r, step)
        finally:
            stream.close()
            if bar is not None:
                bar.close()
        elapsed = time.perf_counter() - t0
        results = []
        for r in active:
            results.append(_finish(r, store, layer, train, stats, dist, device, metrics, (step * train.batch_size - tokens0) / max(elapsed, 1e-9), len(active)))
    except WorkbenchError:  # refused (too few tokens, diverged...): remove what this call created; a resume keeps its own
        if dist.rank == 0:
            for work in fresh:
                shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        dist.close()
    return results


def _postfix(last: list[dict[str, float]]) -> dict[str, str]:
    if len(last) == 1:
        m = last[0]
        return {"loss": f"{m['loss']:.4g}", "fve": f"{m['fve']:.3f}", "l0": f"{m['l0']:.1f}", "dead": f"{m['dead']:.1%}"}
    fves = [m["fve"] for m in last]
    return {"runs": str(len(last)), "fve": f"{min(fves):.3f}-{max(fves):.3f}", "dead_max": f"{max(m['dead'] for m in last):.1%}"}


def _finish(r: _Run, store: ActivationStore, layer: int, train: TrainConfig, stats: InputStats, dist: Dist, device: str,
            metrics: bool, speed: float, n_runs: int) -> TrainResult:
    """Fold, calibrate, save, evaluate and move the run's folder into place (rank 0 writes)."""
    sae = r.sae
    sae.fold_decoder_norm()
    if r.cfg.arch in ("batchtopk", "matryoshka"):  # same sample on every rank, so every rank gets the same value
        sae.calibrate_threshold(stats.sample[:16384].to(device))
    sae.eval()
    result_metrics: dict[str, Any] = {}
    if dist.rank == 0:
        extra = {**r.meta, "normalization": {"offset_ratio": stats.offset_ratio, "scale": stats.scale}, "workbench_version": __version__,
                 "train_tokens_per_s": speed, "runs_in_pass": n_runs, "final_batch": r.last}
        save_sae(sae, r.work, extra=extra)
        if metrics:
            from ._metrics import evaluate

            result_metrics = evaluate(sae, store, layer=layer, train=train, device=device)
        result_metrics["train_tokens_per_s"] = speed
        result_metrics["runs_in_pass"] = n_runs
        write_json_atomic(r.work / METRICS, result_metrics)
        for name in (CHECKPOINT, CHECKPOINT_STATE):
            (r.work / name).unlink(missing_ok=True)
        remove_temps(r.work)  # a killed run's half-written checkpoint
        if r.out.exists():
            shutil.rmtree(r.out)
        os.replace(r.work, r.out)
    dist.barrier()
    return TrainResult(sae, result_metrics, r.out)


def _work_folder(out: Path) -> Path:
    """Where a run checkpoints while training: ``<out>.partial``, renamed to ``out`` when it is done."""
    return out.with_name(out.name + ".partial")


def _progress(total: int, start: int, enabled: bool, n_runs: int = 1) -> Any:
    if not enabled:
        return None
    from workbench._progress import progress_bar

    desc = "train sae" if n_runs == 1 else f"train {n_runs} saes"
    return progress_bar(total=total, initial=start, unit="step", desc=desc, dynamic_ncols=True)


def _checkpoint(r: _Run, step: int) -> None:
    """Parameters, Adam moments and dead-latent counters in safetensors; step and configs in JSON; both atomic."""
    from safetensors.torch import save_file

    sae, opt = r.sae, r.opt
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in sae.state_dict().items()}
    names = dict(zip([id(p) for p in sae.parameters()], [n for n, _ in sae.named_parameters()]))
    for p in sae.parameters():
        state = opt.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq", "step"):
            if key in state:
                tensors[f"adam.{names[id(p)]}.{key}"] = torch.as_tensor(state[key]).detach().cpu().contiguous()
    tensors["since_fired"] = r.since_fired.detach().cpu().clone()
    tmp = r.work / f".{CHECKPOINT}.tmp-{os.getpid()}"
    save_file(tensors, str(tmp))
    set_output_mode(tmp)
    os.replace(tmp, r.work / CHECKPOINT)
    write_json_atomic(r.work / CHECKPOINT_STATE, {**r.meta, "step": step})


def _resume(work: Path, r: _Run) -> int:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    meta = r.meta
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
        same = TrainConfig.from_dict(meta["train"]).same_settings(state["train"]) if key == "train" else state[key] == meta[key]
        if not same:
            theirs = state[key]
            diff = sorted(k for k in meta[key] if theirs.get(k) != meta[key].get(k)) if isinstance(meta[key], dict) and isinstance(theirs, dict) else [key]
            raise WorkbenchError(f"{work}: checkpoint was made with different {key} settings ({', '.join(diff)}); delete it to start over")
    sae = r.sae
    sae.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    for name, p in sae.named_parameters():
        if f"adam.{name}.exp_avg" in tensors:
            step_t = tensors[f"adam.{name}.step"].clone()
            r.opt.state[p] = {
                "exp_avg": tensors[f"adam.{name}.exp_avg"].to(p.device),
                "exp_avg_sq": tensors[f"adam.{name}.exp_avg_sq"].to(p.device),
                "step": step_t.to(p.device) if r.fused else step_t,  # fused Adam keeps its step counter on the device
            }
    r.since_fired.copy_(tensors["since_fired"].to(r.since_fired.device))
    return int(state["step"])
