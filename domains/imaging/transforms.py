"""Turn images of any stored type and size into the normalised float tensors an imaging model takes.

:class:`Preprocess` is deterministic (no augmentation) and serialisable, so a trained model can record exactly
how its inputs were prepared.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench.errors import InputError

if TYPE_CHECKING:
    import torch

__all__ = ["Preprocess"]


def _scaled(image: np.ndarray, where: str) -> np.ndarray:
    """``image`` as float32 in [0, 1] by its type: uint8 / 255, uint16 / 65535, floats kept."""
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if image.dtype == np.uint16:
        return image.astype(np.float32) / 65535.0
    if np.issubdtype(image.dtype, np.floating):
        return image.astype(np.float32, copy=False)
    raise InputError(f"{where}: unsupported image type {image.dtype} (expected uint8, uint16 or float)")


@dataclass(frozen=True)
class Preprocess:
    """Scale, convert channels, resize and normalise a batch of channel-first images.

    Calling it on ``N`` images gives a float32 tensor ``(N, channels, size, size)``. Steps: scale by type
    (uint8 / 255, uint16 / 65535, floats kept as they are), grey to colour by repeating the channel or colour to
    grey by averaging the three channels, resize with bilinear, antialiased interpolation (only when the size
    differs; a non-square image is stretched to a square), then ``(x - mean) / std`` per channel.
    """

    size: int = 28
    """Side in pixels of the square images the model takes (28 for MedMNIST)."""
    channels: int = 1
    """Channels the model takes: 1 (grey) or 3 (colour)."""
    mean: tuple[float, ...] = (0.5,)
    """Per-channel mean subtracted after scaling to [0, 1]: one value for all channels, or one per channel."""
    std: tuple[float, ...] = (0.5,)
    """Per-channel standard deviation divided by after subtracting ``mean``: one value, or one per channel."""

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise InputError(f"Preprocess: size must be a positive integer, not {self.size!r}")
        if self.channels not in (1, 3) or isinstance(self.channels, bool):
            raise InputError(f"Preprocess: channels must be 1 or 3, not {self.channels!r}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if isinstance(value, (int, float)):
                value = (value,)
            try:
                value = tuple(float(v) for v in value)
            except (TypeError, ValueError):
                raise InputError(f"Preprocess: {name} must be a sequence of numbers, not {value!r}") from None
            if len(value) not in (1, self.channels):
                raise InputError(f"Preprocess: {name} needs 1 or {self.channels} values, not {len(value)}")
            if not all(np.isfinite(value)):
                raise InputError(f"Preprocess: {name} values must be finite")
            object.__setattr__(self, name, value)
        if any(s <= 0 for s in self.std):
            raise InputError("Preprocess: std values must be positive")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocess:
        """The Preprocess described by ``data`` (as written by :meth:`to_dict`); unknown keys raise InputError."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"Preprocess: unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls(**{k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in data.items()})

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the fields (tuples as lists)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    def _as_list(self, images: Sequence[np.ndarray] | np.ndarray) -> list[np.ndarray]:
        """Channel-first images ``(C, H, W)`` from a 4-D ``(N, C, H, W)`` / 3-D ``(N, H, W)`` array or a sequence."""
        if isinstance(images, np.ndarray):
            if images.ndim == 4:
                return list(images)
            if images.ndim == 3:
                return list(images[:, None])
            raise InputError(f"Preprocess: an image array must be (N, C, H, W) or (N, H, W), not shape {images.shape}")
        out = []
        for i, img in enumerate(images):
            arr = np.asarray(img)
            if arr.ndim == 2:
                arr = arr[None]
            if arr.ndim != 3:
                raise InputError(f"Preprocess: image {i} has shape {arr.shape} (expected (C, H, W) or (H, W))")
            out.append(arr)
        return out

    def __call__(self, images: Sequence[np.ndarray] | np.ndarray) -> torch.Tensor:
        """Preprocess ``images`` (an ``(N, C, H, W)`` or ``(N, H, W)`` array, or a sequence of ``(C, H, W)`` /
        ``(H, W)`` arrays whose sizes may differ) into a float32 tensor ``(N, channels, size, size)``."""
        import torch
        import torch.nn.functional as F

        items = self._as_list(images)
        for i, arr in enumerate(items):
            if arr.shape[0] not in (1, 3):
                raise InputError(f"Preprocess: image {i} has {arr.shape[0]} channels in shape {arr.shape} "
                                 "(expected channel-first (C, H, W) with C = 1 or 3)")
            if arr.shape[1] < 1 or arr.shape[2] < 1:
                raise InputError(f"Preprocess: image {i} is empty (shape {arr.shape})")
        if not items:
            return torch.zeros((0, self.channels, self.size, self.size), dtype=torch.float32)
        # images of one shape and type go through together
        groups: dict[tuple[tuple[int, ...], str], list[int]] = {}
        for i, arr in enumerate(items):
            groups.setdefault((arr.shape, arr.dtype.str), []).append(i)
        out = torch.empty((len(items), self.channels, self.size, self.size), dtype=torch.float32)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
        for (shape, _), index in groups.items():
            batch = np.stack([items[i] for i in index])
            x = torch.from_numpy(_scaled(batch, f"Preprocess: image {index[0]}"))
            if x.shape[1] != self.channels:
                x = x.repeat(1, self.channels, 1, 1) if x.shape[1] == 1 else x.mean(dim=1, keepdim=True)
            if shape[1:] != (self.size, self.size):
                x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
            out[torch.as_tensor(index)] = (x - mean) / std
        return out
