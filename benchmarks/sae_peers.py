"""Drivers for the SAE trainers compared by ``bench_sae.py``: ours and three public libraries, each through its own API.

Every driver takes the same :class:`Setup` (store, layer, width, k, batch size, steps, learning rate and schedule)
and returns a :class:`Run`: the trained dictionary as a ``reconstruct(x) -> (x_hat, codes)`` function in model
units, the wall time of the whole training call, and the time of the training loop proper.

Loop timing. Each trainer pulls its batches through a :class:`TimedBatches` wrapper that notes ``perf_counter()``
when a batch is asked for. The loop time is measured from the request of the *second* training batch (so the first
step, with its one-off allocations and initialisations, is a warm-up) to the return of the training call; the
batches a library reads before its loop (to estimate a normalisation factor) are not counted. Data loading from the
store happens inside every loop, ours included.

The peers live in the benchmark-only environment (``make bench-venv``), never in the project's ``.venv``.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import io
import sys
import tempfile
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

Reconstruct = Callable[[torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]


@dataclass
class Setup:
    """What every trainer gets: the same data, architecture, token budget, batch size and learning-rate schedule."""

    store: Any
    layer: int
    width: int = 4096
    k: int = 32
    batch_size: int = 4096
    steps: int = 244
    lr: float = 4e-4
    warmup_steps: int = 100
    decay_start: float = 0.8
    """Fraction of the steps after which the learning rate decays linearly to zero."""
    holdout_fraction: float = 0.05
    seed: int = 0
    device: str = "cpu"
    """Where every trainer runs (``cuda`` for the GPU benchmark); batches are made on this device."""
    precision: str = "fp32"
    """``fp32``, or ``bf16``: each trainer's own bf16 autocast (float32 weights), for all of them alike."""
    kernels: str = "auto"
    """Our trainer's ``TrainConfig.kernels``."""

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    def sync(self) -> None:
        """Wait for the GPU's queued work, so wall times cover it."""
        if self.cuda:
            torch.cuda.synchronize()

    def autocast(self) -> Any:
        return torch.autocast(device_type=torch.device(self.device).type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    @property
    def n_tokens(self) -> int:
        return self.steps * self.batch_size

    @property
    def decay_start_step(self) -> int:
        return int(self.decay_start * self.steps)

    def lr_factor(self, step: int) -> float:
        """Linear warm-up over ``warmup_steps``, constant, then linear decay to zero from ``decay_start_step``."""
        warm = min(1.0, (step + 1) / max(1, self.warmup_steps))
        start = self.decay_start_step
        decay = 1.0 if step < start else max(0.0, (self.steps - step) / max(1, self.steps - start))
        return warm * decay


@dataclass
class Run:
    """One trainer's result."""

    name: str
    version: str
    reconstruct: Reconstruct
    call_seconds: float
    """Wall time of the whole training call (setup, normalisation estimate, loop, wrap-up)."""
    loop_seconds: float
    """Wall time from the request of the second training batch to the end of the call."""
    loop_steps: int
    """Steps inside ``loop_seconds`` (all but the warm-up step)."""
    batch_size: int
    api: str
    normalisation: str
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return self.loop_steps * self.batch_size / max(self.loop_seconds, 1e-9)


class TimedBatches:
    """An iterator that notes when each batch is asked for; ``limit`` ends it after that many batches."""

    def __init__(self, it: Iterator[torch.Tensor], limit: int | None = None) -> None:
        self._it = iter(it)
        self._limit = limit
        self.requests: list[float] = []

    def __iter__(self) -> TimedBatches:
        return self

    def __next__(self) -> torch.Tensor:
        if self._limit is not None and len(self.requests) >= self._limit:
            raise StopIteration
        self.requests.append(time.perf_counter())
        return next(self._it)

    def loop_start(self, training_pulls: int, extra_pulls_after: int = 0) -> float:
        """Request time of the second of the last ``training_pulls`` batches (``extra_pulls_after`` read past them)."""
        first = len(self.requests) - extra_pulls_after - training_pulls
        if first < 0 or training_pulls < 2:
            raise RuntimeError(f"expected at least {training_pulls} training batches, saw {len(self.requests)} requests")
        return self.requests[first + 1]


def training_batches(setup: Setup) -> Iterator[torch.Tensor]:
    """The store's training split in full batches, reshuffled each epoch with seed ``1000 * seed + epoch``.

    The same seeds and buffer as our trainer's own stream, so every trainer sees the same batches in the same order.
    On a GPU the batches are made there by the store's device path (read ahead by a thread, shuffled on the GPU), so
    no trainer waits on the host.
    """
    epoch = 0
    on_device = dict(device=setup.device, prefetch=2) if setup.cuda else {}
    while True:
        got = False
        for batch in setup.store.iter_batches(
            setup.layer, setup.batch_size, shuffle=True, seed=setup.seed * 1000 + epoch, drop_last=True,
            split="train", holdout_fraction=setup.holdout_fraction, **on_device,
        ):
            got = True
            yield batch
        if not got:
            raise RuntimeError("fewer training tokens than one batch")
        epoch += 1


def version_of(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence a library's prints while it trains (progress bars: ``TQDM_DISABLE=1``, set by ``bench_sae.py``)."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


# ------------------------------------------------------------------------------------------------------------- ours


def run_ours(setup: Setup) -> Run:
    """``workbench.sae.train_sae`` with its defaults (input centring and scaling, AuxK), our schedule and lr."""
    import workbench
    from workbench.sae import TrainConfig, train_sae

    store = setup.store
    timed: list[TimedBatches] = []
    original = store.iter_batches

    def iter_batches(layer: int, batch_size: int, *args: Any, **kwargs: Any) -> Iterator[torch.Tensor]:
        it = original(layer, batch_size, *args, **kwargs)
        if batch_size != setup.batch_size:  # the input-statistics sample, not the training stream
            return it
        wrapper = TimedBatches(it)
        timed.append(wrapper)
        return wrapper

    train = TrainConfig(
        n_tokens=setup.n_tokens, batch_size=setup.batch_size, lr=setup.lr, warmup_steps=setup.warmup_steps,
        decay_start=setup.decay_start, holdout_fraction=setup.holdout_fraction, seed=setup.seed,
        loss_recovered_sequences=0, checkpoint_every=0, precision=setup.precision,
        kernels=setup.kernels,
    )
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench_sae_ours_") as tmp:
        store.iter_batches = iter_batches  # type: ignore[method-assign]
        try:
            t0 = time.perf_counter()
            result = train_sae(
                store, out=Path(tmp) / "sae", layer=setup.layer, arch="topk", width=setup.width, k=setup.k,
                train=train, progress=False, metrics=False, overwrite=True, device=setup.device,
            )
            setup.sync()
            t1 = time.perf_counter()
        finally:
            del store.iter_batches  # back to the class's method
    internal = float(result.metrics.get("train_tokens_per_s", float("nan")))
    requests = sorted(t for w in timed for t in w.requests)
    if len(requests) >= setup.steps and setup.steps >= 2:
        start = requests[len(requests) - setup.steps + 1]
        loop_seconds, loop_steps = t1 - start, setup.steps - 1
    else:  # the trainer no longer reads its batches through iter_batches: fall back to its own measurement
        loop_steps = setup.steps
        loop_seconds = setup.n_tokens / internal
        notes.append("loop time from the trainer's own train_tokens_per_s (its batches were not seen by the wrapper)")
    sae = result.sae.eval()

    @torch.no_grad()
    def reconstruct(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        codes = sae.encode(x)
        return sae.decode(codes), codes

    return Run(
        name="ours (workbench.sae)", version=f"workbench {workbench.__version__}", reconstruct=reconstruct,
        call_seconds=t1 - t0, loop_seconds=loop_seconds, loop_steps=loop_steps, batch_size=setup.batch_size,
        api="workbench.sae.train_sae(store, arch='topk', train=TrainConfig(...))",
        normalisation="centre on the training mean, scale to unit mean squared norm per dimension (default normalize=True)",
        notes=notes, extra={"internal_tokens_per_s": internal},
    )


# ---------------------------------------------------------------------------------------------------------- SAELens


def run_saelens(setup: Setup, sparse: bool = False) -> Run:
    """SAELens' ``TopKTrainingSAE`` trained by its ``SAETrainer.fit`` on our batches (its ``DataProvider``).

    ``sparse`` turns on its ``use_sparse_activations`` (COO codes and a sparse decoder matmul), which its docs
    recommend for float32 without autocast when k is small against the width, as here; with torch 2.13 on the CPU
    its backward fails (``NotImplementedError: Could not run 'aten::view' with arguments from the 'SparseCPU'
    backend``), so the benchmark keeps the default dense activations.
    """
    import sae_lens
    from sae_lens import LoggingConfig, SAETrainer, TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig

    torch.manual_seed(setup.seed)
    norm_batches = max(1, 65536 // setup.batch_size)  # the same sample size our trainer uses for its statistics
    cfg = TopKTrainingSAEConfig(
        d_in=setup.store.d_model, d_sae=setup.width, k=setup.k, dtype="float32", device=setup.device,
        normalize_activations="expected_average_only_in", use_sparse_activations=sparse,
    )
    sae = TopKTrainingSAE(cfg)
    trainer_cfg = SAETrainerConfig(
        total_training_samples=setup.n_tokens, train_batch_size_samples=setup.batch_size, lr=setup.lr, lr_end=setup.lr,
        lr_scheduler_name="constant", lr_warm_up_steps=setup.warmup_steps,
        lr_decay_steps=setup.steps - setup.decay_start_step, device=setup.device, autocast=setup.precision == "bf16",
        n_batches_for_norm_estimate=norm_batches, logger=LoggingConfig(log_to_wandb=False),
    )
    batches = TimedBatches(training_batches(setup))
    trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=batches)
    with _quiet():
        t0 = time.perf_counter()
        sae = trainer.fit()
        setup.sync()
        t1 = time.perf_counter()
    start = batches.loop_start(setup.steps)
    sae.eval()

    @torch.no_grad()
    def reconstruct(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        codes = sae.encode(x)
        return sae.decode(codes), codes

    return Run(
        name="SAELens, sparse activations" if sparse else "SAELens", version=f"sae-lens {sae_lens.__version__}",
        reconstruct=reconstruct,
        call_seconds=t1 - t0, loop_seconds=t1 - start, loop_steps=setup.steps - 1, batch_size=setup.batch_size,
        api=("SAETrainer(SAETrainerConfig(...), TopKTrainingSAE(TopKTrainingSAEConfig("
             f"{'use_sparse_activations=True, ' if sparse else ''}...)), data_provider).fit()"),
        normalisation=(f"normalize_activations='expected_average_only_in' (one scalar so that E||x|| = sqrt(d_in), "
                       f"estimated on {norm_batches} batches, folded into the weights after training); no centring"),
        notes=["defaults kept: rescale_acts_by_decoder_norm=True, decoder_init_norm=0.1, aux_loss_coefficient=1.0, "
               "dead_feature_window=1000 steps (so AuxK never fires in a run this short)",
               "its use_sparse_activations=True option (documented as the faster one for float32 with small k) fails "
               "in the backward pass on the CPU with torch 2.13 (aten::view has no SparseCPU kernel), so the default "
               "dense activations are used"],
    )


# ------------------------------------------------------------------------------------------------ dictionary_learning


def run_dictionary_learning(setup: Setup) -> Run:
    """dictionary_learning's ``TopKTrainer`` run by its ``trainSAE`` loop on our batches."""
    from dictionary_learning.trainers.top_k import TopKTrainer
    from dictionary_learning.training import trainSAE

    made: list[Any] = []

    def make_trainer(**kwargs: Any) -> Any:  # trainSAE builds its trainers from a class; keep the instance
        made.append(TopKTrainer(**kwargs))
        return made[-1]

    config = {
        "trainer": make_trainer, "steps": setup.steps, "activation_dim": setup.store.d_model, "dict_size": setup.width,
        "k": setup.k, "layer": setup.layer, "lm_name": "antiberty", "lr": setup.lr, "warmup_steps": setup.warmup_steps,
        "decay_start": setup.decay_start_step, "seed": setup.seed, "device": setup.device,
    }
    batches = TimedBatches(training_batches(setup))
    with _quiet():
        t0 = time.perf_counter()
        # trainSAE reads 102 batches for its norm factor first, then one batch past the last step before stopping
        trainSAE(data=batches, trainer_configs=[config], steps=setup.steps, normalize_activations=True, device=setup.device,
                 autocast_dtype=torch.bfloat16 if setup.precision == "bf16" else torch.float32)
        setup.sync()
        t1 = time.perf_counter()
    start = batches.loop_start(setup.steps, extra_pulls_after=1)
    ae = made[0].ae.eval()

    @torch.no_grad()
    def reconstruct(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        codes = ae.encode(x)
        return ae.decode(codes), codes

    return Run(
        name="dictionary_learning", version=f"dictionary-learning {version_of('dictionary-learning')}",
        reconstruct=reconstruct, call_seconds=t1 - t0, loop_seconds=t1 - start, loop_steps=setup.steps - 1,
        batch_size=setup.batch_size,
        api="training.trainSAE(data, [dict(trainer=TopKTrainer, ...)], steps, normalize_activations=True)",
        normalisation=("normalize_activations=True: one scalar so that E||x||^2 = 1, estimated on ~100 batches, "
                       "biases rescaled after training; no centring (b_dec starts at the first batch's geometric median)"),
        notes=["defaults kept: auxk_alpha=1/32, dead-feature threshold 10M tokens (AuxK never fires here), "
               "threshold_start_step=1000"],
    )


# -------------------------------------------------------------------------------------------------------- overcomplete


def import_overcomplete_sae() -> types.ModuleType:
    """``overcomplete.sae`` without ``overcomplete/__init__.py``.

    The package's ``__init__`` imports its vision model zoo (``torchvision``, ``timm``), which cannot be installed
    beside the CPU build of torch 2.13 (the registry's torchvision is built against the CUDA torch and fails at import
    with "operator torchvision::nms does not exist", and then breaks ``transformers`` too). The SAE code does not use
    it, so the package is registered with its path only and ``overcomplete.sae`` is imported from it as usual.
    """
    if "overcomplete.sae" in sys.modules:
        return sys.modules["overcomplete.sae"]
    spec = importlib.util.find_spec("overcomplete")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("overcomplete is not installed (make bench-venv)")
    if "overcomplete" not in sys.modules:
        pkg = types.ModuleType("overcomplete")
        pkg.__path__ = list(spec.submodule_search_locations)
        pkg.__spec__ = spec
        pkg.__file__ = spec.origin
        sys.modules["overcomplete"] = pkg
    return importlib.import_module("overcomplete.sae")


def run_overcomplete(setup: Setup) -> Run:
    """overcomplete's ``TopKSAE`` trained by its ``train_sae`` loop (one pass over ``steps`` of our batches)."""
    oc = import_overcomplete_sae()

    torch.manual_seed(setup.seed)
    sae = oc.TopKSAE(setup.store.d_model, nb_concepts=setup.width, top_k=setup.k, device=setup.device)
    optimizer = torch.optim.Adam(sae.parameters(), lr=setup.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, setup.lr_factor)

    def criterion(x: torch.Tensor, x_hat: torch.Tensor, pre_codes: torch.Tensor, codes: torch.Tensor,
                  dictionary: torch.Tensor) -> torch.Tensor:
        return (x - x_hat).square().mean()  # the criterion of overcomplete's own TopKSAE example

    batches = TimedBatches(training_batches(setup), limit=setup.steps)
    with _quiet(), setup.autocast():  # its own AMP loop is fp16 with a scaler; bf16 autocast around the plain loop
        t0 = time.perf_counter()
        oc.train_sae(sae, batches, criterion, optimizer, scheduler=scheduler, nb_epochs=1, clip_grad=1.0,
                     monitoring=0, device=setup.device)
        setup.sync()
        t1 = time.perf_counter()
    start = batches.loop_start(setup.steps)
    sae.eval()

    @torch.no_grad()
    def reconstruct(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, codes = sae.encode(x)
        return sae.decode(codes), codes

    return Run(
        name="overcomplete", version=f"overcomplete {version_of('overcomplete')}", reconstruct=reconstruct,
        call_seconds=t1 - t0, loop_seconds=t1 - start, loop_steps=setup.steps - 1, batch_size=setup.batch_size,
        api="sae.train_sae(TopKSAE(d, nb_concepts, top_k), batches, mse, Adam, LambdaLR, nb_epochs=1, monitoring=0)",
        normalisation="none offered: raw activations (its TopKSAE has no decoder bias, so nothing absorbs the mean either)",
        notes=["default encoder ('linear': Linear + ReLU, no batch norm), dictionary rows projected to unit L2 norm, "
               "no AuxK (the README's plain MSE criterion); monitoring=0 (no per-step metrics)"],
    )


# --------------------------------------------------------------------------------------------------------- bare loop


def run_bare(setup: Setup) -> Run:
    """The reference: a plain PyTorch TopK loop in a few lines, no library.

    Inputs centred on the mean of the statistics sample and scaled to unit mean squared norm per dimension (as ours);
    decoder rows of unit norm (projected after each step), the encoder initialised as the decoder's transpose, zero
    biases; dense encoder, ``topk``, dense decoder through ``scatter``; MSE summed over dimensions; Adam with the
    shared schedule and gradient-norm clip 1.0; no AuxK.
    """
    torch.manual_seed(setup.seed)
    sample = torch.cat([b.float() for _, b in zip(range(max(1, 65536 // setup.batch_size)), training_batches(setup))])
    mean = sample.mean(0)
    scale = float((sample - mean).pow(2).sum(1).mean().div(sample.shape[1]).sqrt())
    d, w, dev = sample.shape[1], setup.width, setup.device
    w_dec = torch.randn(w, d).to(dev)
    w_dec = torch.nn.Parameter(w_dec / w_dec.norm(dim=1, keepdim=True))
    w_enc = torch.nn.Parameter(w_dec.detach().clone())
    b_enc, b_dec = torch.nn.Parameter(torch.zeros(w, device=dev)), torch.nn.Parameter(torch.zeros(d, device=dev))
    params = [w_enc, w_dec, b_enc, b_dec]
    opt = torch.optim.Adam(params, lr=setup.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, setup.lr_factor)

    def encode(xn: torch.Tensor) -> torch.Tensor:
        pre = (xn - b_dec) @ w_enc.t() + b_enc
        vals, idx = pre.topk(setup.k, dim=1)
        return torch.zeros_like(pre).scatter(1, idx, torch.relu(vals))

    batches = TimedBatches(training_batches(setup), limit=setup.steps)
    t0 = time.perf_counter()
    for x in batches:
        xn = (x.float() - mean) / scale
        with setup.autocast():
            loss = ((encode(xn) @ w_dec + b_dec) - xn).float().pow(2).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            w_dec /= w_dec.norm(dim=1, keepdim=True)
    setup.sync()
    t1 = time.perf_counter()
    start = batches.loop_start(setup.steps)

    @torch.no_grad()
    def reconstruct(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        codes = encode((x.float() - mean) / scale)
        return (codes @ w_dec + b_dec) * scale + mean, codes

    return Run(
        name="bare PyTorch TopK loop", version=f"torch {torch.__version__}", reconstruct=reconstruct,
        call_seconds=t1 - t0, loop_seconds=t1 - start, loop_steps=setup.steps - 1, batch_size=setup.batch_size,
        api="dense encoder + topk + scatter + dense decoder, Adam, LambdaLR (benchmarks/sae_peers.py run_bare)",
        normalisation="centre on the sample mean, scale to unit mean squared norm per dimension (as ours)",
        notes=["unit-norm decoder rows projected after each step, encoder = decoder transpose at start, no AuxK"],
    )


TRAINERS: dict[str, Callable[[Setup], Run]] = {
    "ours": run_ours,
    "bare": run_bare,
    "saelens": run_saelens,
    "dictionary_learning": run_dictionary_learning,
    "overcomplete": run_overcomplete,
}

PEER_IMPORTS = {
    "saelens": ("sae_lens", "sae-lens"),
    "dictionary_learning": ("dictionary_learning.trainers.top_k", "dictionary-learning"),
    "overcomplete": (None, "overcomplete"),
}


def peer_available(name: str) -> str | None:
    """None when the peer imports, else why not."""
    module, dist = PEER_IMPORTS[name]
    try:
        if module is None:
            import_overcomplete_sae()
        else:
            importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - any import failure means "not benchmarked", with the reason
        return f"{dist} does not import: {type(exc).__name__}: {exc}"
    return None
