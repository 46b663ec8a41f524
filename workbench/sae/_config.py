"""Configuration of a sparse autoencoder and of its training run; saved as ``cfg.json`` beside ``sae.safetensors``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from workbench.errors import WorkbenchError

__all__ = ["SAEConfig", "TrainConfig", "ARCHITECTURES", "Architecture"]

Architecture = Literal["relu", "topk", "batchtopk", "jumprelu", "matryoshka"]
ARCHITECTURES: tuple[str, ...] = ("relu", "topk", "batchtopk", "jumprelu", "matryoshka")


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise WorkbenchError(f"{cls.__name__}: unknown fields {sorted(unknown)}")
    return cls(**data)


@dataclass
class SAEConfig:
    """The dictionary itself: what is needed to rebuild and run it."""

    d_in: int
    """Width of the activations it reads (the model's ``d_model``)."""
    width: int
    """Number of latents (dictionary size)."""
    arch: Architecture = "topk"
    """``relu`` (L1 penalty weighted by decoder norms), ``topk``, ``batchtopk``, ``jumprelu`` or ``matryoshka``
    (nested BatchTopK)."""
    k: int = 32
    """Active latents per token for ``topk``; mean active latents per token for ``batchtopk`` and ``matryoshka``."""
    l1_coeff: float = 5.0
    """Sparsity penalty: L1 coefficient for ``relu``, L0 coefficient for ``jumprelu`` (in normalised units)."""
    jumprelu_bandwidth: float = 0.05
    """Width of the rectangle kernel of JumpReLU's straight-through threshold gradient."""
    jumprelu_init_threshold: float = 0.05
    """Initial JumpReLU threshold (normalised units)."""
    matryoshka_groups: list[int] = field(default_factory=list)
    """Sizes of the nested prefixes for ``matryoshka`` (ascending, last = ``width``); empty = width/16, /8, /4, /2, 1."""
    normalize: bool = True
    """Centre the inputs on the store mean and scale them to unit mean squared norm per dimension (undone on output)."""
    model: str = ""
    """Model the activations come from (from the store manifest)."""
    layer: int = -1
    """Layer the activations come from."""
    store_manifest_sha256: str = ""
    """Hash of the training store's manifest, so a checkpoint is never resumed on another model's activations."""

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise WorkbenchError(f"unknown SAE architecture {self.arch!r}; choose one of {', '.join(ARCHITECTURES)}")
        if self.d_in < 1 or self.width < 1:
            raise WorkbenchError(f"d_in and width must be positive (got {self.d_in}, {self.width})")
        if self.arch in ("topk", "batchtopk", "matryoshka") and not 0 < self.k <= self.width:
            raise WorkbenchError(f"k={self.k} does not fit a dictionary of width {self.width} (need 0 < k <= width)")
        if self.l1_coeff < 0:
            raise WorkbenchError("l1_coeff must be non-negative")
        if self.arch == "matryoshka":
            if not self.matryoshka_groups:
                sizes = [self.width // d for d in (16, 8, 4, 2) if self.width // d >= 1] + [self.width]
                self.matryoshka_groups = sorted(set(sizes))
            groups = self.matryoshka_groups
            if groups != sorted(set(groups)) or groups[-1] != self.width or groups[0] < 1:
                raise WorkbenchError(f"matryoshka_groups must be ascending prefix sizes ending at width {self.width}: {groups}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SAEConfig:
        return _from_dict(cls, data)  # type: ignore[no-any-return]


@dataclass
class TrainConfig:
    """How a dictionary is trained from an activation store."""

    n_tokens: int = 2_000_000
    """Training tokens (summed over all ranks); the run stops after ``n_tokens // batch_size`` steps."""
    batch_size: int = 4096
    """Tokens per optimiser step, summed over all ranks."""
    lr: float = 1e-3
    """Peak Adam learning rate (inputs are normalised, so one value suits most models; measured on AntiBERTy:
    FVE 0.885 at 4e-4 for 2M tokens vs 0.928 at 1e-3 for 3M tokens, TopK k=32, width 4096)."""
    warmup_steps: int = 100
    """Linear learning-rate warm-up steps."""
    decay_start: float = 0.8
    """Fraction of training after which the learning rate decays linearly to zero."""
    l1_warmup_steps: int = 500
    """Steps over which the ``relu`` / ``jumprelu`` sparsity coefficient ramps up from zero."""
    aux_k: int = 256
    """Dead latents used by the AuxK loss (``topk``, ``batchtopk``, ``matryoshka``); 0 disables it."""
    aux_coeff: float = 1 / 32
    """Weight of the AuxK loss."""
    dead_tokens: int = 200_000
    """A latent that has not fired for this many training tokens counts as dead (for AuxK)."""
    grad_clip: float = 1.0
    """Maximum gradient norm (0 disables clipping)."""
    seed: int = 0
    """Seed of initialisation and data order; a run is deterministic given it."""
    init_bias: Literal["mean", "median"] = "median"
    """Pre-encoder bias initialised at the data mean or its geometric median."""
    decoder_norm: Literal["unit", "free"] = "unit"
    """``unit``: decoder rows kept at norm one (gradient component along them removed, rows projected back after
    each step); ``free``: the rows' norms are free parameters, the decoder uses their directions and every code is
    scaled by its row's norm (SAELens's ``rescale_acts_by_decoder_norm``); the norms are folded into the encoder when
    training ends, so the saved dictionary has unit rows either way."""
    init_norm: float = 0.3
    """Initial row norm: of the encoder under ``decoder_norm="unit"`` (the decoder rows start at norm one, the encoder
    as their transpose times this); of the decoder under ``"free"`` (the effective encoder then starts at
    ``init_norm ** 2``). A small encoder lets Adam turn its rows faster relative to their length; measured on
    AntiBERTy layer 4 (TopK k 32, width 4096, 1M tokens, lr 4e-4): held-out FVE 0.834 at 1.0, 0.853 at 0.3, 0.850
    at 0.1, 0.846 at 0.03 (benchmarks/RESULTS.md, bench_sae ablation)."""
    holdout_fraction: float = 0.05
    """Fraction of sequences (chosen by a hash of their id) kept out of training for the metrics."""
    buffer_shards: int = 2
    """Store shards shuffled together in memory while streaming."""
    checkpoint_every: int = 200
    """Steps between checkpoints (0 disables); a killed run resumes from the last one."""
    eval_tokens: int = 50_000
    """Held-out tokens for the fidelity metrics."""
    loss_recovered_sequences: int = 64
    """Held-out sequences for the loss-recovered metric (0 skips it)."""

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.n_tokens < self.batch_size:
            raise WorkbenchError(f"need 1 <= batch_size <= n_tokens (got {self.batch_size}, {self.n_tokens})")
        if not 0 <= self.holdout_fraction < 1:
            raise WorkbenchError("holdout_fraction must be in [0, 1)")
        if self.lr <= 0:
            raise WorkbenchError("lr must be positive")
        if self.decoder_norm not in ("unit", "free"):
            raise WorkbenchError(f"decoder_norm must be 'unit' or 'free', not {self.decoder_norm!r}")
        if not self.init_norm > 0:
            raise WorkbenchError(f"init_norm must be positive, not {self.init_norm}")

    @property
    def steps(self) -> int:
        return self.n_tokens // self.batch_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return _from_dict(cls, data)  # type: ignore[no-any-return]
