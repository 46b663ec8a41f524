"""The imaging adapter: any PyTorch vision network, its layers by name, its preprocessing from the model card.

A card of family ``vision`` names the network's class and where its weights are; every field the adapter needs sits
under ``options``::

    name: medcnn-pneumoniamnist
    adapter: vision
    n_layers: 3                    # layers are numbered 0..n_layers in the order of ``options.layers``
    d_model: 128                   # channels of the default layer
    weights: medcnn_pneumoniamnist.safetensors    # absolute, or relative to the card's folder
    options:
      architecture: domains.imaging.medcnn:MedResNet   # "module:callable" building the network
      kwargs: {in_channels: 1, n_classes: 2}
      layers: [stem, layer1, layer2, layer3]   # module paths in order (or a mapping name: module path)
      default_layer: layer3
      preprocess: {size: 28, channels: 1, mean: [0.5], std: [0.5]}
      classes: [normal, pneumonia]
      positive_class: pneumonia

Any network works the same way: ``architecture: torchvision.models:resnet18`` with ``kwargs: {num_classes: 2}`` and
``layers: [layer3, layer4]`` (or ``{block3: layer3, block4: layer4}`` to rename them), or a user's own module. Weights are read with safetensors, or with
``torch.load(weights_only=True)`` for ``.pt`` / ``.pth`` / ``.bin`` files. A card file's path can be passed wherever a
model name is accepted.

A convolutional layer's output ``(B, C, H, W)`` becomes ``H * W`` store rows per image (one per position, row-major),
each a ``C``-vector with ``sequence_id`` (the image id), ``position`` (1-based), ``y``, ``x``, ``split`` and ``label``;
:meth:`VisionAdapter.pooled` gives one row per image instead (the mean over positions).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from workbench.adapter import Adapter, Batch, EditFn, HookPoint
from workbench.errors import InputError, ModelError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from workbench.registry import ModelCard

    from .readers import ImageRecord
    from .transforms import Preprocess

__all__ = ["VisionAdapter", "card_weights_path"]

_TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def _import(target: str) -> Any:
    module, _, attr = target.partition(":")
    if not module or not attr:
        raise ModelError(f"architecture must be 'module:callable', not {target!r}")
    try:
        obj: Any = importlib.import_module(module)
    except ImportError as exc:
        raise ModelError(f"cannot import {module!r} for architecture {target!r} ({exc})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelError(f"{module!r} has no {attr!r} (architecture {target!r})")
        obj = getattr(obj, part)
    return obj


def card_weights_path(card: ModelCard) -> Path:
    """Where a vision card's weights file is: an absolute path, relative to the card's own file (``options.card_dir``),
    or to a folder of installed model cards."""
    if not card.weights:
        raise ModelError(f"model card {card.name!r} names no weights file")
    path = Path(card.weights)
    if path.is_absolute():
        return path
    folders = [Path(card.options["card_dir"])] if card.options.get("card_dir") else []
    from importlib import metadata, resources

    for ep in metadata.entry_points(group="workbench.model_cards"):
        folders.append(Path(str(resources.files(ep.value))))
    for folder in folders:
        if (folder / path).is_file():
            return folder / path
    return (folders[0] if folders else Path.cwd()) / path


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    import torch

    if not path.is_file():
        raise ModelError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise ModelError(f"{path}: unreadable safetensors file ({exc})") from None
    if path.suffix in _TORCH_SUFFIXES:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle errors, refused globals, truncated files
            raise ModelError(f"{path}: cannot load as a weights-only torch checkpoint ({exc})") from None
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise ModelError(f"{path}: holds a {type(state).__name__}, not a state dict")
        return state
    raise ModelError(f"{path}: weights must be .safetensors or a torch checkpoint ({', '.join(_TORCH_SUFFIXES)})")


class VisionAdapter(Adapter):
    """Adapter for image classifiers (see the module docstring for the card)."""

    family: ClassVar[str] = "vision"

    def __init__(self, model: nn.Module, card: ModelCard, *, device: str = "cpu") -> None:
        super().__init__(model, card, device=device)
        spec = card.options.get("layers") or []
        pairs = [(str(k), str(v)) for k, v in spec.items()] if isinstance(spec, dict) else [(str(p), str(p)) for p in spec]
        if not pairs:
            raise ModelError(f"model card {card.name!r} lists no layers (options.layers: module paths, or name: path)")
        if len(pairs) != card.n_layers + 1:
            raise ModelError(f"model card {card.name!r}: n_layers {card.n_layers} but {len(pairs)} named layers (want n_layers + 1)")
        modules = dict(model.named_modules())
        missing = [path for _, path in pairs if path not in modules]
        if missing:
            raise ModelError(f"model card {card.name!r}: the network has no module(s) {missing}")
        self._names = [name for name, _ in pairs]
        self._paths = [path for _, path in pairs]
        self.pool: str | None = None
        self._layout: tuple[int, int, int] | None = None  # (channels, height, width) of the prepared layers
        self._prepared: tuple[int, ...] | None = None

    # -- loading ------------------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, card: ModelCard, *, source: str | None = None, device: str = "cpu") -> VisionAdapter:
        build = _import(str(card.options.get("architecture", "")))
        try:
            model = build(**dict(card.options.get("kwargs") or {}))
        except TypeError as exc:
            raise ModelError(f"cannot build {card.options.get('architecture')!r} with {card.options.get('kwargs')} ({exc})") from None
        state = _load_state(card_weights_path(card))
        try:
            result = model.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shape mismatches
            first = str(exc).strip().splitlines()[-1].strip()
            raise ModelError(f"{card.name}: weights do not fit {card.options.get('architecture')} ({first})") from None
        if result.missing_keys or result.unexpected_keys:
            raise ModelError(
                f"{card.name}: weights do not fit {card.options.get('architecture')} "
                f"(missing {list(result.missing_keys)[:3]}, unexpected {list(result.unexpected_keys)[:3]})"
            )
        return cls(model, card, device=device)

    @classmethod
    def card_for_path(cls, path: Path) -> ModelCard | None:
        """A model card YAML file of family ``vision``; its weights path may be relative to the card's folder."""
        if path.suffix not in (".yaml", ".yml") or not path.is_file():
            return None
        import yaml

        from workbench.registry import ModelCard

        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ModelError(f"{path}: not a valid YAML model card ({exc})") from None
        if not isinstance(data, dict) or data.get("adapter") != cls.family:
            return None
        data["options"] = {**(data.get("options") or {}), "card_dir": str(path.resolve().parent)}
        return ModelCard.from_dict(data)

    # -- layers -------------------------------------------------------------------------------------------------------
    def layer_names(self) -> dict[int, str]:
        return dict(enumerate(self._names))

    def _module(self, layer: int) -> nn.Module:
        return dict(self.model.named_modules())[self._paths[layer]]

    @property
    def default_layer(self) -> int:
        default = self.card.options.get("default_layer")
        return self.layer_number(default) if default is not None else self.n_layers

    @functools.cached_property
    def preprocess(self) -> Preprocess:
        from .transforms import Preprocess

        return Preprocess.from_dict(dict(self.card.options.get("preprocess") or {}))

    @property
    def classes(self) -> list[str]:
        """Names of the output classes, in logit order."""
        return [str(c) for c in self.card.options.get("classes") or []]

    @property
    def positive_class(self) -> int | None:
        """Logit index of the pathology class the card names (``options.positive_class``), if any."""
        name = self.card.options.get("positive_class")
        return self.classes.index(str(name)) if name is not None and str(name) in self.classes else None

    def layer_shapes(self, layers: Sequence[int | str] | None = None) -> dict[int, tuple[int, ...]]:
        """Output shape (without the batch) of each layer on one preprocessed blank image."""
        import torch

        numbers = self.check_layers(layers) if layers is not None else self.layers()
        shapes: dict[int, tuple[int, ...]] = {}
        handles = []
        try:
            for n in numbers:
                def grab(module: Any, args: Any, output: Any, n: int = n) -> None:
                    out = output[0] if isinstance(output, tuple) else output
                    shapes[n] = tuple(out.shape[1:])
                handles.append(self._module(n).register_forward_hook(grab))
            p = self.preprocess
            with torch.no_grad():
                self.model(torch.zeros(1, p.channels, p.size, p.size, device=self.device))
        finally:
            for h in handles:
                h.remove()
        return shapes

    def prepare(self, layers: Sequence[int]) -> None:
        """Fix the grid of the store: every requested layer must have the same channels and spatial size."""
        shapes = self.layer_shapes(layers)
        layout = {}
        for n, shape in shapes.items():
            if len(shape) == 3:
                layout[n] = (int(shape[0]), int(shape[1]), int(shape[2]))
            elif len(shape) == 1:
                layout[n] = (int(shape[0]), 1, 1)
            else:
                raise ModelError(f"{self.name}: layer {self._names[n]} outputs shape {shape}; want (C, H, W) or (C,)")
        if len(set(layout.values())) > 1:
            desc = ", ".join(f"{self._names[n]} {c}x{h}x{w}" for n, (c, h, w) in layout.items())
            raise ModelError(f"{self.name}: layers of different shapes ({desc}) cannot share a store; extract them separately")
        self._layout = next(iter(layout.values()))
        self._prepared = tuple(sorted(layout))

    def _ensure_prepared(self) -> tuple[int, int, int]:
        if self._layout is None:
            self.prepare([self.default_layer])
        assert self._layout is not None
        return self._layout

    @property
    def d_model(self) -> int:
        """Channels of the prepared layers (the card's ``d_model`` before :meth:`prepare`)."""
        return self._layout[0] if self._layout is not None else self.card.d_model

    @property
    def grid(self) -> tuple[int, int]:
        """Spatial size ``(H, W)`` of the prepared layers (``(1, 1)`` when pooled)."""
        _, h, w = self._ensure_prepared()
        return (1, 1) if self.pool else (h, w)

    def pooled(self, how: str = "mean") -> VisionAdapter:
        """A copy that stores one row per image: the mean of the layer over positions."""
        import copy

        if how != "mean":
            raise ModelError(f"pooling must be 'mean', not {how!r}")
        clone = copy.copy(self)
        clone.pool = how
        return clone

    def hook_point(self, layer: int) -> HookPoint:
        self.check_layers([layer])
        return HookPoint(self._module(layer), channels_first=True, pool_spatial=self.pool is not None)

    # -- inputs -------------------------------------------------------------------------------------------------------
    def read(self, path: str, *, truncate: bool = False, **options: Any) -> list[ImageRecord]:
        from .readers import read_any

        return self.validate(read_any(path, **options))

    def validate(self, records: Sequence[Any], *, truncate: bool = False) -> list[ImageRecord]:
        import numpy as np

        from .readers import ImageRecord

        out = list(records)
        if not out:
            raise InputError("no images to read")
        seen: set[str] = set()
        for rec in out:
            if not isinstance(rec, ImageRecord):
                raise InputError(f"expected image records, got {type(rec).__name__}")
            if rec.id in seen:
                raise InputError(f"duplicate image id {rec.id!r}")
            seen.add(rec.id)
            img = np.asarray(rec.image)
            if img.ndim != 3 or img.shape[0] not in (1, 3):
                raise InputError(f"image {rec.id!r} has shape {img.shape}; want (channels, height, width) with 1 or 3 channels")
            if img.dtype.kind == "f" and not np.isfinite(img).all():
                raise InputError(f"image {rec.id!r} holds NaN or infinite values")
        return out

    def n_kept(self, record: Any) -> int:
        h, w = self.grid
        return h * w

    def batches(self, records: Sequence[Any], *, tokens_per_batch: int) -> Iterator[Batch]:
        import numpy as np
        import pandas as pd
        import torch

        h, w = self.grid
        per_image = h * w
        size = max(1, tokens_per_batch // per_image)
        ys, xs = np.divmod(np.arange(per_image), w)
        for start in range(0, len(records), size):
            index = list(range(start, min(start + size, len(records))))
            recs = [records[i] for i in index]
            pixels = self.preprocess([np.asarray(r.image) for r in recs])
            labels = [r.meta.get("label") for r in recs]
            label_codes = torch.tensor([int(x) if x is not None and str(x) != "" and x == x else -1 for x in labels])
            obs = pd.DataFrame({
                "sequence_id": np.repeat([r.id for r in recs], per_image),
                "position": np.tile(np.arange(1, per_image + 1), len(recs)),
                "y": np.tile(ys, len(recs)),
                "x": np.tile(xs, len(recs)),
                "split": np.repeat([str(r.meta.get("split", "")) for r in recs], per_image),
                "label": np.repeat(label_codes.numpy(), per_image),
            })
            keep = torch.ones(len(recs), per_image, dtype=torch.bool)
            yield Batch(index=index, inputs={"pixels": pixels, "labels": label_codes}, keep=keep, obs=obs)

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        return self.model(inputs["pixels"])

    # -- model loss and rebuilding inputs --------------------------------------------------------------------------
    def lm_loss(self, batch: Batch, *, layer: int, edit: EditFn | None = None, seed: int = 0) -> tuple[float, int]:
        """Cross-entropy of the classifier against the images' labels (the clean prediction where unlabelled)."""
        import torch
        import torch.nn.functional as F

        labels = batch.inputs["labels"].to(self.device)
        if (labels < 0).any():
            clean = self.run_with_edit(batch, layer, None).argmax(-1)
            labels = torch.where(labels < 0, clean, labels)
        logits = self.run_with_edit(batch, layer, edit)
        return float(F.cross_entropy(logits.float(), labels, reduction="sum")), int(len(labels))

    def records_from_store(self, store: Any, ids: Sequence[str]) -> list[ImageRecord]:
        """Images of ``ids`` read again from the files the store's ``source`` / ``file`` columns name."""
        from workbench.errors import StoreError

        from .sources import reread

        seqs = store.sequences
        cols = [c for c in ("source", "file", "label") if c in seqs.columns]
        rows = {str(sid): dict(zip(cols, vals)) for sid, *vals in seqs[["sequence_id", *cols]].itertuples(index=False)}
        missing = [i for i in ids if i not in rows]
        if missing:
            raise StoreError(f"{store.path}: no images {missing[:3]}")
        return reread([(i, rows[i]) for i in ids])

    def predict(self, records: Sequence[ImageRecord], *, batch_size: int = 256) -> torch.Tensor:
        """Softmax class probabilities of the records, ``(n, n_classes)``."""
        import numpy as np
        import torch

        out = []
        with torch.no_grad():
            for start in range(0, len(records), batch_size):
                pixels = self.preprocess([np.asarray(r.image) for r in records[start : start + batch_size]])
                out.append(torch.softmax(self.model(pixels.to(self.device)).float(), -1).cpu())
        return torch.cat(out) if out else torch.empty(0, len(self.classes))
