"""Configuration of a sparse autoencoder and of its training run; saved as ``cfg.json`` beside ``sae.safetensors``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from workbench.errors import WorkbenchError

__all__ = ["SAEConfig", "TrainConfig", "ARCHITECTURES", "Architecture", "PRECISIONS", "KERNELS"]

Architecture = Literal["relu", "topk", "batchtopk", "jumprelu", "matryoshka"]
ARCHITECTURES: tuple[str, ...] = ("relu", "topk", "batchtopk", "jumprelu", "matryoshka")
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")
KERNELS: tuple[str, ...] = ("auto", "sparse", "dense")


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
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """Arithmetic of the matrix products: ``bf16`` runs the forward pass under ``torch.autocast`` in bfloat16 while
    the weights, Adam's moments, the loss and its reductions stay float32; ``fp32`` throughout; ``auto``: bf16 on
    CUDA, fp32 elsewhere (the CPU's bf16 products are slower than its float32 ones)."""
    kernels: Literal["auto", "sparse", "dense"] = "auto"
    """TopK family: ``sparse`` computes only the encoder's forward product densely and everything else on the
    ``batch x k`` active entries (fastest on the CPU); ``dense`` scatters the codes into a ``batch x width`` matrix
    and uses dense products, which GPUs run near their peak; ``auto``: dense on CUDA, sparse elsewhere. Both give the
    same values and gradients up to rounding. ReLU and JumpReLU are dense either way."""
    compile: bool = False
    """Run the training forward through ``torch.compile`` (dense kernels only; on the CPU it needs a C++ compiler).
    The first steps then include the compilation."""
    prefetch: int = 2
    """Store buffers read ahead by a background thread so the step never waits on disk (0: read in the loop)."""

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
        if self.precision not in PRECISIONS:
            raise WorkbenchError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if self.kernels not in KERNELS:
            raise WorkbenchError(f"kernels must be one of {', '.join(KERNELS)}, not {self.kernels!r}")
        if self.prefetch < 0:
            raise WorkbenchError(f"prefetch must be 0 or more, not {self.prefetch}")

    def runtime(self, device: str, arch: str = "topk") -> dict[str, Any]:
        """``precision`` and ``kernels`` with ``auto`` resolved for ``device``, and ``compile`` checked against them
        (the TopK family compiles only with dense kernels; ReLU and JumpReLU always can)."""
        cuda = str(device).startswith("cuda")
        precision = self.precision if self.precision != "auto" else ("bf16" if cuda else "fp32")
        kernels = self.kernels if self.kernels != "auto" else ("dense" if cuda else "sparse")
        if self.compile and kernels != "dense" and arch not in ("relu", "jumprelu"):
            raise WorkbenchError("compile=True needs dense kernels (kernels='dense', or 'auto' on CUDA): the sparse "
                                 "kernels change shape every step")
        return {"device": str(device), "precision": precision, "kernels": kernels, "compile": self.compile}

    def same_settings(self, saved: dict[str, Any]) -> bool:
        """Whether ``saved`` (a ``to_dict`` of an earlier run, perhaps from before a field existed: missing fields
        take their defaults) describes the same training settings as this config."""
        try:
            return TrainConfig.from_dict(saved).to_dict() == self.to_dict()
        except (WorkbenchError, TypeError):
            return False

    @property
    def steps(self) -> int:
        return self.n_tokens // self.batch_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return _from_dict(cls, data)  # type: ignore[no-any-return]
