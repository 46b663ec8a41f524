"""Image helpers of the catalog explorer: activation-map overlays and cached per-image data for image catalogs.

Pure helpers (no Streamlit call): :func:`is_image_catalog`, :func:`display_factor`, :func:`grey_rgb` and
:func:`overlay` (a grey or RGB image with a feature's activation map laid over it in a matplotlib colour map).

Streamlit helpers, cached per catalog file path (``str(cat.path)``), feature and image id so they stay valid across
reruns and sessions and never mix two catalogs: :func:`image_table` (label, split and the model's pathology
probability of every image), :func:`image_values` (a feature's per-image max or mean activation),
:func:`cached_examples`, :func:`render_image`, :func:`render_overlay` and :func:`example_tiles` (a feature's
examples as display-ready overlays with captions).

An activation map exists only for the images the catalog stores per-position activations of: the feature's
examples (top images and quantile-bin samples). Other images are drawn plain.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from workbench.catalog import Catalog, Example

__all__ = [
    "DISPLAY_PX", "TILE_PX", "Tile", "is_image_catalog", "display_factor", "grey_rgb", "overlay", "image_table", "image_values",
    "cached_examples", "render_image", "render_overlay", "example_tiles", "image_caption", "colour_ramp", "side_by_side",
    "alpha_slider",
    "ALPHA_KEY", "overlay_alpha",
]

DISPLAY_PX = 168
"""Images smaller than this are upscaled by an integer factor (pixel repetition, so they stay sharp) towards it."""
TILE_PX = 180
"""Display width of an image tile in the pages (captions wrap under it)."""
ALPHA_KEY = "_im_alpha"
"""Session key of the overlay opacity slider (shared by the pages that draw overlays)."""
DEFAULT_ALPHA = 0.7
GAP_PX = 6
"""White gap between the plain image and its overlay in a side-by-side tile."""


# ------------------------------------------------------------------------------------------------------------ pure
def is_image_catalog(cat: Any) -> bool:
    """True for catalogs of images (``cat.image_info`` is set), False for sequence catalogs and anything else."""
    try:
        return getattr(cat, "image_info", None) is not None
    except Exception:  # noqa: BLE001 - a broken catalog is simply not an image catalog here
        return False


def display_factor(size: int, *, target: int = DISPLAY_PX) -> int:
    """The integer upscaling factor that brings an image side of ``size`` pixels closest to ``target`` from below
    (1 for images already that large)."""
    return max(1, int(target) // max(int(size), 1))


@functools.lru_cache(maxsize=8)
def colour_ramp(cmap: str = "inferno") -> np.ndarray:
    """``(256, 3)`` float RGB (0..1) of a matplotlib colour map (matplotlib comes with scanpy)."""
    from matplotlib import colormaps

    try:
        cm = colormaps[cmap]
    except KeyError:
        raise InputError(f"unknown colour map {cmap!r}") from None
    return np.asarray(cm(np.linspace(0.0, 1.0, 256))[:, :3], dtype=np.float64)


def _rgb(pixels: Any) -> np.ndarray:
    """``(C, H, W)`` pixels (C = 1 grey or 3 RGB, values 0..255) as ``(H, W, 3)`` float64."""
    arr = np.asarray(pixels)
    if arr.ndim != 3 or arr.shape[0] not in (1, 3) or arr.shape[1] < 1 or arr.shape[2] < 1:
        raise InputError(f"pixels must have shape (C, H, W) with C = 1 or 3, got {arr.shape}")
    if arr.dtype.kind not in "uif":
        raise InputError(f"pixels must be numbers (uint8 0..255), got dtype {arr.dtype}")
    rgb = np.repeat(arr, 3, axis=0) if arr.shape[0] == 1 else arr
    return np.clip(np.nan_to_num(np.moveaxis(rgb, 0, -1).astype(np.float64)), 0.0, 255.0)


def _upscale(img: np.ndarray, scale: int) -> np.ndarray:
    if int(scale) < 1:
        raise InputError(f"scale must be a positive integer, got {scale}")
    if scale == 1:
        return img
    return np.repeat(np.repeat(img, int(scale), axis=0), int(scale), axis=1)


def side_by_side(left: np.ndarray, right: np.ndarray, *, gap: int = GAP_PX) -> np.ndarray:
    """Two ``(H, W, 3)`` uint8 images of one height next to each other with a white ``gap`` between them and twice
    that after them (so that pairs drawn in a row stay apart)."""
    left, right = np.asarray(left), np.asarray(right)
    if left.ndim != 3 or right.ndim != 3 or left.shape[0] != right.shape[0] or left.shape[2] != right.shape[2]:
        raise InputError(f"side_by_side needs two (H, W, 3) images of one height, got {left.shape} and {right.shape}")
    white = np.full((left.shape[0], max(0, int(gap)), left.shape[2]), 255, dtype=np.uint8)
    return np.concatenate([left.astype(np.uint8), white, right.astype(np.uint8), white, white], axis=1)


def grey_rgb(pixels: Any, *, scale: int = 1) -> np.ndarray:
    """``(C, H, W)`` pixels as a plain ``(H*scale, W*scale, 3)`` uint8 RGB image."""
    return _upscale(np.round(_rgb(pixels)).astype(np.uint8), scale)


def overlay(pixels: Any, heat: Any, *, alpha: float = 0.5, vmax: float = 1.0, cmap: str = "inferno",
            scale: int = 1) -> np.ndarray:
    """An activation map over an image, as ``(H*scale, W*scale, 3)`` uint8 RGB.

    ``pixels`` is ``(C, H, W)`` (C = 1 grey or 3 RGB, 0..255; grey becomes RGB), ``heat`` an ``(H, W)`` map (for
    example :meth:`Catalog.heatmap`), clipped to ``[0, vmax]`` and coloured with ``cmap``. The colour is blended in
    with opacity ``alpha * sqrt(heat / vmax)``: where the feature is silent the image shows unchanged, where it is
    at ``vmax`` the colour covers it with opacity ``alpha``. ``scale`` repeats every pixel (sharp upscaling).
    Raises :class:`InputError` on shapes or values that do not fit.
    """
    rgb = _rgb(pixels)
    h, w = rgb.shape[:2]
    hm = np.asarray(heat)
    if hm.shape != (h, w):
        raise InputError(f"heat map has shape {hm.shape}, the image is {h}x{w}")
    if hm.dtype.kind not in "uif":
        raise InputError(f"heat map must be numbers, got dtype {hm.dtype}")
    if not (0.0 <= float(alpha) <= 1.0):
        raise InputError(f"alpha must be in [0, 1], got {alpha}")
    if not (np.isfinite(vmax) and float(vmax) > 0):
        raise InputError(f"vmax must be a positive number, got {vmax}")
    level = np.clip(np.nan_to_num(hm.astype(np.float64), nan=0.0, posinf=float(vmax), neginf=0.0) / float(vmax), 0.0, 1.0)
    ramp = colour_ramp(cmap)
    colour = ramp[np.round(level * 255).astype(np.int64)] * 255.0
    weight = (float(alpha) * np.sqrt(level))[..., None]
    out = (1.0 - weight) * rgb + weight * colour
    return _upscale(np.clip(np.round(out), 0, 255).astype(np.uint8), scale)


# ------------------------------------------------------------------------------------------------------------ cached data
def _label_column(obs: pd.DataFrame) -> str | None:
    for col in ("label_name", "label"):
        if col in obs.columns:
            return col
    return None


def image_table(cat: Catalog) -> pd.DataFrame:
    """One row per image in catalog (``obs``) order, indexed by image id: ``label`` (class name), ``split``,
    ``pathology`` and ``p_model`` (the model's pathology probability), from the ``images`` table when the catalog
    has one, else from ``obs`` (missing columns are NaN). Cached per catalog; do not modify."""
    import streamlit as st

    @st.cache_data(show_spinner=False, max_entries=4)
    def _table(path: str, _cat: Any) -> Any:
        import pandas as pd

        obs = _cat.sequences
        ids = pd.Index([str(i) for i in obs.index])
        out = pd.DataFrame(index=ids)
        if "images" in _cat.tables:
            t = _cat.table("images")
            t = t.set_index(t["image_id"].astype(str)).drop(columns=["image_id"])
            t = t[~t.index.duplicated()].reindex(ids)
            for col in t.columns:
                out[col] = t[col].astype(str).where(t[col].notna(), None) if col in ("label", "split") else t[col]
        col = _label_column(obs)
        if ("label" not in out.columns or out["label"].isna().all()) and col is not None:
            out["label"] = obs[col].astype(str).to_numpy()
        if "split" not in out.columns and "split" in obs.columns:
            out["split"] = obs["split"].astype(str).to_numpy()
        for col in ("label", "split"):
            if col not in out.columns:
                out[col] = None
        if "p_model" not in out.columns:
            out["p_model"] = np.nan
        return out

    return _table(str(cat.path), cat)


def image_values(cat: Catalog, fid: str, *, pooling: str = "mean") -> np.ndarray:
    """A feature's activation in every image (catalog order, zeros included), normalised to the feature's max:
    ``pooling="mean"`` over the image's grid positions (``layers["mean"]``) or ``"max"`` (``X``)."""
    import streamlit as st

    if pooling not in ("mean", "max"):
        raise InputError(f"pooling is 'mean' or 'max', got {pooling!r}")

    @st.cache_data(show_spinner=False, max_entries=512)
    def _column(path: str, fid: str, pooling: str, _cat: Any) -> np.ndarray:
        j = int(_cat.features.index.get_loc(_cat.feature_id(fid)))
        from apps.workbench_app._views import obs_matrix

        m = obs_matrix(_cat, "layers/mean" if pooling == "mean" else "X")
        if isinstance(m, np.ndarray):
            return np.asarray(m[:, j], dtype=np.float32)
        return np.asarray(m[:, j].toarray()).ravel().astype(np.float32)

    return _column(str(cat.path), str(fid), pooling, cat)


def cached_examples(cat: Catalog, fid: str) -> list[Example]:
    """:meth:`Catalog.examples` (top images, then quantile-bin samples), cached per catalog and feature."""
    import streamlit as st

    @st.cache_data(show_spinner=False, max_entries=256)
    def _examples(path: str, fid: str, _cat: Any) -> list[Any]:
        return list(_cat.examples(fid))

    return _examples(str(cat.path), str(fid), cat)


def _scale(cat: Catalog) -> int:
    info = cat.image_info or {}
    shape = [int(v) for v in info.get("shape", [1, DISPLAY_PX, DISPLAY_PX])]
    return display_factor(max(shape[-2:]))


def render_image(cat: Catalog, image_id: str) -> np.ndarray:
    """An image of the catalog as display-ready RGB uint8 (upscaled), cached per catalog and image."""
    import streamlit as st

    @st.cache_data(show_spinner=False, max_entries=2048)
    def _render(path: str, image_id: str, _cat: Any) -> np.ndarray:
        return grey_rgb(_cat.image(image_id), scale=_scale(_cat))

    return _render(str(cat.path), str(image_id), cat)


def overlay_alpha() -> float:
    """The overlay opacity the user set with the slider (:data:`ALPHA_KEY`), else the default."""
    import streamlit as st

    value = st.session_state.get(ALPHA_KEY, DEFAULT_ALPHA)
    return float(value) if isinstance(value, (int, float)) and 0.0 <= float(value) <= 1.0 else DEFAULT_ALPHA


def alpha_slider(where: Any = None) -> float:
    """The overlay opacity slider (one per page; its value is shared by every overlay drawn)."""
    import streamlit as st

    if ALPHA_KEY not in st.session_state:
        st.session_state[ALPHA_KEY] = DEFAULT_ALPHA
    (where or st).slider("Overlay opacity", min_value=0.0, max_value=1.0, step=0.05, key=ALPHA_KEY,
                         help="Opacity of the activation colour where the feature is at its maximum (it fades with the "
                              "activation; 0 shows the plain image)")
    return overlay_alpha()


def render_overlay(cat: Catalog, fid: str, image_id: str, *, alpha: float | None = None,
                   paired: bool = False) -> np.ndarray | None:
    """The feature's activation map over an image as display-ready RGB uint8: each cell of the layer's grid covers
    its own block of pixels (nearest, cell-aligned, :meth:`Catalog.heatmap`), with opacity ``alpha`` (default: the
    slider's) at the feature's maximum. ``paired``: the plain image on the left, the overlay on the right. Cached
    per catalog, feature, image and opacity; None when the catalog stores no map of this feature on this image (it
    is not one of the feature's examples)."""
    import streamlit as st

    @st.cache_data(show_spinner=False, max_entries=4096)
    def _render(path: str, fid: str, image_id: str, alpha: float, paired: bool, _cat: Any) -> np.ndarray | None:
        ex = next((e for e in cached_examples(_cat, fid) if str(e.sequence_id) == image_id), None)
        if ex is None:
            return None
        pixels = _cat.image(image_id)
        out = overlay(pixels, _cat.heatmap(ex.activations, mode="nearest"), alpha=alpha, scale=_scale(_cat))
        return side_by_side(grey_rgb(pixels, scale=_scale(_cat)), out) if paired else out

    return _render(str(cat.path), str(fid), str(image_id), round(overlay_alpha() if alpha is None else float(alpha), 3),
                   bool(paired), cat)


def image_caption(cat: Catalog, image_id: str, *, extra: str = "") -> str:
    """``"<id> · <label> · model p 0.93"`` (the parts the catalog has), then ``extra``."""
    from apps.workbench_app._views import is_missing

    table = image_table(cat)
    parts = [str(image_id)]
    if image_id in table.index:
        row = table.loc[image_id]
        if not is_missing(row.get("label")):
            parts.append(str(row["label"]))
        if not is_missing(row.get("p_model")):
            parts.append(f"model p {float(row['p_model']):.2f}")
    if extra:
        parts.append(extra)
    return " · ".join(parts)


@dataclass(frozen=True)
class Tile:
    """One example ready to draw: the image (overlay), its caption and what it is."""

    image_id: str
    kind: str
    max_activation: float
    image: np.ndarray
    caption: str


def example_tiles(cat: Catalog, fid: str, *, paired: bool = False) -> list[Tile]:
    """The feature's examples as overlays (``paired``: beside the plain image) with captions (id, label, model p,
    kind, max activation), in the catalog's order: top images first, then the quantile-bin samples."""
    tiles = []
    for ex in cached_examples(cat, fid):
        sid = str(ex.sequence_id)
        top = float(np.max(ex.activations)) if len(ex.activations) else 0.0
        img = render_overlay(cat, fid, sid, paired=paired)
        if img is None:  # pragma: no cover - every example has a map
            img = render_image(cat, sid)
        kind = str(ex.kind)
        extra = f"max {top:.2f}" if kind == "top" else f"{kind} · max {top:.2f}"
        tiles.append(Tile(sid, kind, top, img, image_caption(cat, sid, extra=extra)))
    return tiles


def bin_start(kind: str) -> float:
    """Lower quantile of a ``"q0.25-0.5"`` example kind (for sorting; -1 when unparsable)."""
    try:
        return float(kind.removeprefix("q").split("-")[0])
    except ValueError:
        return -1.0


def show_example_grid(cat: Catalog, fid: str, *, bins_note: str, paired: bool = True) -> bool:
    """Draw the feature's top images, then its quantile-bin samples (highest bin first), each as the plain image
    beside its overlay (``paired``; else the overlay alone); False when the feature has no examples (nothing drawn)."""
    import streamlit as st

    tiles = example_tiles(cat, fid, paired=paired)
    if not tiles:
        return False
    width = 2 * TILE_PX + 3 * GAP_PX if paired else TILE_PX
    top = [t for t in tiles if t.kind == "top"]
    rest = sorted((t for t in tiles if t.kind != "top"), key=lambda t: bin_start(t.kind), reverse=True)
    st.markdown(f"**Top-activating images** ({len(top)})" + (": each plain, then with the map" if paired else ""))
    if top:
        st.image([t.image for t in top], caption=[t.caption for t in top], width=width)
    if rest:
        st.markdown(f"**Images from the activation quantiles** ({len(rest)}: {bins_note})")
        st.image([t.image for t in rest], caption=[t.caption for t in rest], width=width)
    return True
