"""The adapter protocol: how a domain exposes a model to the domain-free core.

An adapter wraps one loaded model. The core only needs four things from it:

* :meth:`Adapter.batches` turns the domain's input records into :class:`Batch` objects under a token budget;
* :meth:`Adapter.hook_point` names the module (and which side of it) that carries a layer's representation;
* :meth:`Adapter.forward` runs the model on a batch and returns its output logits;
* the card (:class:`~workbench.registry.ModelCard`) with ``n_layers``, ``d_model`` and ``max_length``.

Capturing activations (:meth:`Adapter.activations`) and editing a layer (:meth:`Adapter.run_with_edit`) are
implemented here once, with forward hooks that are always removed in ``finally``.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from workbench.errors import ModelError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import torch
    from torch import nn

    from workbench.registry import ModelCard

__all__ = ["Adapter", "Batch", "HookPoint", "Activations", "EditFn", "PRECISIONS", "autocast"]

EditFn = Callable[["torch.Tensor"], "torch.Tensor"]
"""Maps the ``(n_tokens, d_model)`` representation of the kept tokens at a layer to a tensor of the same shape."""


class HookPoint(NamedTuple):
    """Where a layer's representation lives in the module tree."""

    module: nn.Module
    """The module whose input (``pre=True``) or output carries the representation."""
    pre: bool = False
    """Read the module's first positional input instead of its output."""
    seq_first: bool = False
    """The tensor is laid out ``(T, B, D)`` (fairseq / fair-esm) rather than ``(B, T, D)``."""
    channels_first: bool = False
    """The tensor is a feature map ``(B, C, H, W)`` (convolutional networks): its rows are the ``H * W`` positions
    in row-major order, each a ``C``-vector."""
    pool_spatial: bool = False
    """With ``channels_first``: one row per image, the feature map's mean over positions. An edit of the pooled
    vector is spread evenly over the positions (each position moves by the same amount)."""


def _rows(tensor: torch.Tensor, point: HookPoint) -> torch.Tensor:
    """The hooked tensor as ``(B, T, D)``: one row per token or spatial position."""
    if point.seq_first:
        return tensor.transpose(0, 1)
    if point.channels_first:
        if tensor.ndim == 2:  # a vector per image (a pooled or linear layer): one row
            return tensor.unsqueeze(1)
        if point.pool_spatial:
            return tensor.mean(dim=(2, 3)).unsqueeze(1)
        return tensor.flatten(2).transpose(1, 2)
    return tensor


def _check_rows(rows: torch.Tensor, keep: torch.Tensor, layer: int) -> None:
    if tuple(rows.shape[:2]) != tuple(keep.shape):
        raise ModelError(f"layer {layer} gives {tuple(rows.shape[:2])} rows per batch but the batch was built for "
                         f"{tuple(keep.shape)}: call adapter.prepare([{layer}]) before building batches for this layer")


def _unrows(rows: torch.Tensor, original: torch.Tensor, point: HookPoint) -> torch.Tensor:
    """Inverse of :func:`_rows`: the edited ``(B, T, D)`` rows back in the hooked tensor's layout."""
    if point.seq_first:
        return rows.transpose(0, 1)
    if point.channels_first:
        if original.ndim == 2:
            return rows[:, 0, :]
        if point.pool_spatial:
            delta = rows[:, 0, :] - original.mean(dim=(2, 3))
            return original + delta[:, :, None, None].to(original.dtype)
        return rows.transpose(1, 2).reshape(original.shape)
    return rows


@dataclass
class Batch:
    """A padded model input and the metadata of the tokens that are kept as rows of the store."""

    index: list[int]
    """Positions of this batch's records in the list passed to :meth:`Adapter.batches`."""
    inputs: dict[str, torch.Tensor]
    """Keyword arguments of the adapter's :meth:`Adapter.forward`."""
    keep: torch.Tensor
    """Boolean ``(B, T)`` mask of the tokens that become rows (special tokens and padding are dropped)."""
    obs: pd.DataFrame
    """One row per kept token, in row-major order of ``keep``."""

    @property
    def n_tokens(self) -> int:
        return int(self.keep.sum())


class Activations(NamedTuple):
    """Output of :meth:`Adapter.activations`."""

    layers: dict[int, torch.Tensor]
    """Layer number to a ``(n_tokens, d_model)`` tensor, rows in the order of ``obs``."""
    obs: pd.DataFrame
    """One metadata row per kept token."""


PRECISIONS = ("fp32", "bf16", "fp16")
"""Forward-pass precisions of :meth:`Adapter.activations`: full float32, or ``torch.autocast`` to bfloat16 / float16."""


def autocast(device: str, precision: str) -> Any:
    """A context that runs the forward at ``precision`` on ``device``: a no-op for ``fp32``, else ``torch.autocast``.

    Raises :class:`ModelError` for an unknown precision or one that autocast does not support on this device.
    """
    import warnings
    from contextlib import nullcontext

    import torch

    if precision not in PRECISIONS:
        raise ModelError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "fp32":
        return nullcontext()
    device_type = torch.device(device).type
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # torch disables an unsupported autocast with only a warning
            if not torch.amp.autocast_mode.is_autocast_available(device_type):
                raise RuntimeError(f"no autocast on {device_type}")
            return torch.autocast(device_type, dtype=dtype)
    except (RuntimeError, UserWarning) as exc:
        raise ModelError(f"precision {precision} is not supported on {device} by this torch "
                         f"({str(exc).splitlines()[0]}); use precision fp32 or bf16") from None


class _StopForward(Exception):
    """Raised inside a hook once every requested layer has been captured, to skip the rest of the model."""


class Adapter(ABC):
    """A loaded model plus the knowledge of how to batch its inputs and where its layers are."""

    family: ClassVar[str]
    """Registry name of the adapter family (``esm2``, ``antiberty``...)."""

    def __init__(self, model: nn.Module, card: ModelCard, *, device: str = "cpu") -> None:
        self.model = model.eval().to(device)
        self.card = card
        self.device = device
        self.source = card.weights if card.weights and Path(card.weights).exists() else card.name
        """What :func:`~workbench.registry.load_adapter` needs to load this model again."""
        self._weights_hash: str | None = None

    # -- what a domain implements -------------------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def load(cls, card: ModelCard, *, source: str | None = None, device: str = "cpu") -> Adapter:
        """Load the weights named by ``card`` (or the explicit ``source`` path) with the model's real loading code."""

    @abstractmethod
    def read(self, path: str, *, truncate: bool = False, **options: Any) -> list[Any]:
        """Read and validate input records from a file, with this model's alphabet and length limit."""

    @abstractmethod
    def validate(self, records: Sequence[Any], *, truncate: bool = False) -> list[Any]:
        """Check in-memory records against the model (alphabet, length...) and return them as a list."""

    @abstractmethod
    def batches(self, records: Sequence[Any], *, tokens_per_batch: int) -> Iterator[Batch]:
        """Yield batches sorted by length, each holding at most ``tokens_per_batch`` padded tokens."""

    @abstractmethod
    def n_kept(self, record: Any) -> int:
        """Number of store rows a record produces."""

    @abstractmethod
    def hook_point(self, layer: int) -> HookPoint:
        """Where the representation of ``layer`` (0 = embeddings, ``n_layers`` = last block) is read and edited."""

    @abstractmethod
    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        """Run the full model and return its output logits: ``(B, T, V)`` for sequence models, ``(B, n_classes)``
        for classifiers."""

    # -- shared behaviour --------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.card.name

    @property
    def n_layers(self) -> int:
        return self.card.n_layers

    @property
    def d_model(self) -> int:
        return self.card.d_model

    def layers(self) -> list[int]:
        """Layer numbers that can be captured: 0 (embeddings) to ``n_layers``."""
        return list(range(self.n_layers + 1))

    def layer_names(self) -> dict[int, str]:
        """Names of the layers, by number, for models whose layers are addressed by name (empty: numbers only)."""
        return {}

    def layer_number(self, layer: int | str) -> int:
        """The number of ``layer``, given as a number, a numeric string or one of :meth:`layer_names`."""
        if isinstance(layer, str):
            by_name = {name: number for number, name in self.layer_names().items()}
            if layer in by_name:
                return by_name[layer]
            try:
                return int(layer)
            except ValueError:
                known = ", ".join(by_name) if by_name else f"are 0..{self.n_layers}"
                raise ModelError(f"model {self.name!r} has no layer {layer!r} (layers {known})") from None
        return int(layer)

    def check_layers(self, layers: Sequence[int | str]) -> list[int]:
        """Return the layers as numbers, sorted and de-duplicated, or raise :class:`ModelError` naming the bad one."""
        valid = set(self.layers())
        numbers = [self.layer_number(layer) for layer in layers]
        for layer, number in zip(layers, numbers):
            if number not in valid:
                names = self.layer_names()
                known = ", ".join(f"{n} {names[n]}" for n in sorted(valid)) if names else f"are {min(valid)}..{max(valid)}"
                raise ModelError(f"model {self.name!r} has no layer {layer!r} (layers {known})")
        if not layers:
            raise ModelError("no layers requested")
        return sorted(set(numbers))

    def prepare(self, layers: Sequence[int]) -> None:
        """Called by the extraction with the checked layers before :meth:`n_kept` and :meth:`batches`.

        Models whose rows depend on the layer (the spatial grid of a convolutional layer) fix it here and raise
        :class:`ModelError` for layers that cannot share one store; sequence models need nothing.
        """

    def weights_hash(self) -> str:
        """SHA-256 over the model's parameters and buffers (names, shapes and bytes), computed once."""
        if self._weights_hash is None:
            import torch

            h = hashlib.sha256()
            for key, tensor in sorted(self.model.state_dict().items()):
                t = tensor.detach().cpu().contiguous()
                h.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
            self._weights_hash = h.hexdigest()
        return self._weights_hash

    def _to_device(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The batch's inputs on the model's device; on CUDA copied from pinned memory without a host sync."""
        if not self.device.startswith("cuda"):
            return {k: v.to(self.device) for k, v in batch.inputs.items()}
        return {k: v.pin_memory().to(self.device, non_blocking=True) for k, v in batch.inputs.items()}

    # -- optional: what the fidelity metrics need ----------------------------------------------------------------
    def lm_loss(self, batch: Batch, *, layer: int, edit: EditFn | None = None, seed: int = 0) -> tuple[float, int]:
        """The model's own training loss on ``batch`` with ``edit`` applied at ``layer``: ``(sum, count)``.

        Sequence models return the masked-LM cross-entropy summed over masked residues; the masking depends only
        on ``seed``, so clean and edited runs are compared on the same positions.
        """
        raise NotImplementedError(f"{type(self).__name__} does not define a model loss")

    def records_from_store(self, store: Any, ids: Sequence[str]) -> list[Any]:
        """Rebuild the input records of ``ids`` from a store's token metadata."""
        raise NotImplementedError(f"{type(self).__name__} cannot rebuild inputs from a store")

    def randomized(self, seed: int) -> Adapter:
        """A copy of this adapter whose model has freshly initialised weights (the random-weight control).

        Every module's own ``reset_parameters`` re-draws its weights; parameters of modules without one are drawn
        from N(0, 0.02), as transformer initialisers do.
        """
        import copy
        from dataclasses import replace

        import torch

        clone = copy.copy(self)
        clone.model = copy.deepcopy(self.model)
        clone._weights_hash = None
        clone.card = replace(self.card, name=f"{self.card.name}:random-init-{seed}")
        torch.manual_seed(seed)
        covered: set[int] = set()
        with torch.no_grad():
            for module in clone.model.modules():
                reset = getattr(module, "reset_parameters", None)
                if callable(reset):
                    reset()
                    covered.update(id(p) for p in module.parameters(recurse=False))
            for p in clone.model.parameters():
                if id(p) not in covered:
                    p.normal_(0.0, 0.02)
        return clone

    def activations(self, batch: Batch, layers: Sequence[int], *, precision: str = "fp32") -> Activations:
        """Representations of ``layers`` for the kept tokens of ``batch``.

        The forward pass stops right after the deepest requested layer, so nothing downstream (later blocks, the
        language-model head) is computed. ``precision`` (``fp32``, ``bf16`` or ``fp16``) runs the forward under
        ``torch.autocast`` with that dtype; the weights are not cast. The rows of the kept tokens are gathered with
        an index computed on the host, so on CUDA nothing waits for the device.
        """
        import torch

        layers = self.check_layers(layers)
        keep = batch.keep
        where = keep.nonzero()  # (n_kept, 2) batch and position of each kept token, in the row-major order of rows[keep]
        if self.device.startswith("cuda"):
            where = where.pin_memory().to(self.device, non_blocking=True)
        else:
            where = where.to(self.device)
        b_idx, t_idx = where.unbind(1)
        captured: dict[int, torch.Tensor] = {}
        deepest = layers[-1]

        def make_hook(layer: int, point: HookPoint) -> Callable[..., None]:
            def grab(tensor: torch.Tensor) -> None:
                rows = _rows(tensor, point)
                _check_rows(rows, keep, layer)
                captured[layer] = rows[b_idx, t_idx]  # integer gather: no copy of the whole layer, no device sync
                if layer == deepest:
                    raise _StopForward

            if point.pre:
                return lambda module, args: grab(args[0])
            return lambda module, args, output: grab(output[0] if isinstance(output, tuple) else output)

        with torch.no_grad(), autocast(self.device, precision), \
                self._hooks({layer: make_hook(layer, self.hook_point(layer)) for layer in layers}):
            try:
                self.forward(**self._to_device(batch))
            except _StopForward:
                pass
        missing = [layer for layer in layers if layer not in captured]
        if missing:  # pragma: no cover - a hook point the forward never reached is an adapter bug
            raise ModelError(f"{self.name}: layers {missing} were not reached in the forward pass")
        return Activations(captured, batch.obs)

    def run_with_edit(self, batch: Batch, layer: int, fn: EditFn | None = None) -> torch.Tensor:
        """Run the whole model with ``fn`` applied to the kept tokens' representation at ``layer``.

        ``fn`` receives the ``(n_kept, d_model)`` representation and returns its replacement (an SAE
        reconstruction, a zero or mean ablation, a feature steered up or down). Special tokens and padding are
        left untouched. With ``fn=None`` this is the clean run. Returns the output logits ``(B, T, V)``.
        """
        import torch

        self.check_layers([layer])
        point = self.hook_point(layer)
        keep = batch.keep.to(self.device)

        def edit(tensor: torch.Tensor) -> torch.Tensor:
            t = _rows(tensor, point).clone()
            _check_rows(t, keep, layer)
            new = fn(t[keep])  # type: ignore[misc]
            if new.shape != (int(keep.sum()), t.shape[-1]):
                raise ValueError(f"edit function returned shape {tuple(new.shape)}, expected {(int(keep.sum()), t.shape[-1])}")
            t[keep] = new.to(t.dtype)
            return _unrows(t, tensor, point)

        def hook(module: nn.Module, args: tuple[Any, ...], output: Any = None) -> Any:
            if point.pre:
                return (edit(args[0]), *args[1:])
            if isinstance(output, tuple):
                return (edit(output[0]), *output[1:])
            return edit(output)

        hooks = {} if fn is None else {layer: hook}
        with torch.no_grad(), self._hooks(hooks):
            return self.forward(**self._to_device(batch))

    @contextmanager
    def _hooks(self, hooks: dict[int, Callable[..., Any]]) -> Iterator[None]:
        handles = []
        try:
            for layer, fn in hooks.items():
                point = self.hook_point(layer)
                if point.pre:
                    handles.append(point.module.register_forward_pre_hook(fn))
                else:
                    handles.append(point.module.register_forward_hook(fn))
            yield
        finally:
            for handle in handles:
                handle.remove()

