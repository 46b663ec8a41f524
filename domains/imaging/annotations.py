"""Concepts for images: the data set's pathology labels and measured image properties as confounds.

A pathology label belongs to a whole image (``label=pneumonia``): it is a sequence-level concept and, broadcast to
every position of the image, a token-level one. Measured properties are computed from the pixels, so they are
complete by construction (source ``measured``) and are never proposed as missing annotations:

* per image (covariates of the confound-controlled association, and tertile concepts ``intensity``, ``contrast``,
  ``edges``, ``mass_row``, ``mass_col``): ``mean_intensity`` (mean
  grey level in [0, 1]), ``contrast`` (standard deviation of the grey levels), ``edge_density`` (share of pixels
  whose Sobel gradient magnitude is in the top quarter of all pixels of the image set), ``centroid_y`` /
  ``centroid_x`` (intensity-weighted centre of mass, 0 = top / left, 1 = bottom / right: where the bright mass sits
  in the frame);
* per position of the analysed layer's grid: ``frame_row`` (top / middle / bottom third), ``frame_col`` (left /
  centre / right third), ``frame`` (border ring or interior), ``patch_intensity`` and ``patch_edges`` (tertiles,
  over all positions, of the mean grey level and edge share of the pixels under the position).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from workbench.concepts import ConceptLabels
    from workbench.store import ActivationStore

    from .readers import ImageRecord

__all__ = ["PROPERTY_COLUMNS", "grey_images", "image_properties", "position_values", "image_labels", "tertiles"]

PROPERTY_COLUMNS = ["mean_intensity", "contrast", "edge_density", "centroid_y", "centroid_x"]
TERTILE_NAMES = ("low", "mid", "high")


def grey_images(records: Sequence[ImageRecord]) -> np.ndarray:
    """The records as one ``(n, H, W)`` float32 array of grey levels in [0, 1] (channels averaged)."""
    out = []
    for rec in records:
        img = np.asarray(rec.image)
        scale = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(img.dtype, 1.0)
        out.append(img.astype(np.float32).mean(0) / scale)
    shapes = {g.shape for g in out}
    if len(shapes) > 1:
        raise InputError(f"images of different sizes {sorted(shapes)[:3]}: measure them after resizing to one size")
    return np.stack(out) if out else np.zeros((0, 0, 0), np.float32)


_SOBEL = np.array([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])


def _gradient(grey: np.ndarray) -> np.ndarray:
    """Sobel gradient magnitude of each ``(H, W)`` image of the stack (images never mix)."""
    from scipy.ndimage import correlate

    gx = correlate(grey, _SOBEL[None], mode="nearest")
    gy = correlate(grey, _SOBEL.T[None], mode="nearest")
    return np.hypot(gx, gy)


def image_properties(records: Sequence[ImageRecord], *, edge_quantile: float = 0.75) -> pd.DataFrame:
    """Per image (index = image id): the measured properties of :data:`PROPERTY_COLUMNS`."""
    import pandas as pd

    grey = grey_images(records)
    grad = _gradient(grey)
    cut = float(np.quantile(grad, edge_quantile)) if grad.size else 0.0
    n, h, w = grey.shape
    mass = grey.sum((1, 2))
    safe = np.where(mass > 0, mass, 1.0)
    yy = (np.arange(h) + 0.5) / h
    xx = (np.arange(w) + 0.5) / w
    return pd.DataFrame({
        "mean_intensity": grey.mean((1, 2)),
        "contrast": grey.std((1, 2)),
        "edge_density": (grad > cut).mean((1, 2)),
        "centroid_y": np.where(mass > 0, (grey.sum(2) * yy).sum(1) / safe, 0.5),
        "centroid_x": np.where(mass > 0, (grey.sum(1) * xx).sum(1) / safe, 0.5),
    }, index=pd.Index([r.id for r in records], name="image_id")).astype(np.float64)


def tertiles(values: np.ndarray, names: tuple[str, str, str] = TERTILE_NAMES) -> np.ndarray:
    """``names`` (default ``low`` / ``mid`` / ``high``) by the 1/3 and 2/3 quantiles of ``values``."""
    lo, hi = np.quantile(values, [1 / 3, 2 / 3])
    return np.where(values <= lo, names[0], np.where(values <= hi, names[1], names[2])).astype(object)


def _thirds(index: np.ndarray, size: int, names: tuple[str, str, str]) -> np.ndarray:
    third = np.minimum((index * 3) // max(size, 1), 2)
    return np.asarray(names, dtype=object)[third]


def position_values(obs: pd.DataFrame, grey: np.ndarray, grid: tuple[int, int], image_row: np.ndarray) -> pd.DataFrame:
    """Per store row (one per grid position of an image): frame region and patch tertile concepts.

    ``obs`` holds ``y`` and ``x`` (grid coordinates); ``image_row[i]`` is the index into ``grey`` of row ``i``'s image.
    """
    import pandas as pd

    gh, gw = grid
    n, h, w = grey.shape
    y = obs["y"].to_numpy(dtype=np.int64)
    x = obs["x"].to_numpy(dtype=np.int64)
    if len(y) and (y.max() >= gh or x.max() >= gw):
        raise InputError(f"store positions go beyond the {gh}x{gw} grid")
    # pixel blocks under each grid cell (np.array_split boundaries handle sizes that do not divide)
    ry = np.array_split(np.arange(h), gh)
    rx = np.array_split(np.arange(w), gw)
    grad = _gradient(grey)
    cut = float(np.quantile(grad, 0.75)) if grad.size else 0.0
    edges = (grad > cut).astype(np.float32)
    cell_mean = np.empty((n, gh, gw), np.float32)
    cell_edge = np.empty((n, gh, gw), np.float32)
    for i, ys in enumerate(ry):
        for j, xs in enumerate(rx):
            cell_mean[:, i, j] = grey[:, ys[0] : ys[-1] + 1, xs[0] : xs[-1] + 1].mean((1, 2))
            cell_edge[:, i, j] = edges[:, ys[0] : ys[-1] + 1, xs[0] : xs[-1] + 1].mean((1, 2))
    pm = cell_mean[image_row, y, x]
    pe = cell_edge[image_row, y, x]
    border = (y == 0) | (x == 0) | (y == gh - 1) | (x == gw - 1)
    return pd.DataFrame({
        "frame_row": _thirds(y, gh, ("top", "middle", "bottom")),
        "frame_col": _thirds(x, gw, ("left", "centre", "right")),
        "frame": np.where(border, "border", "interior").astype(object),
        "patch_intensity": tertiles(pm),
        "patch_edges": tertiles(pe),
    })


def image_labels(
    store: ActivationStore,
    records: Sequence[ImageRecord],
    *,
    label_names: Mapping[int, str] | None = None,
    grid: tuple[int, int] | None = None,
) -> tuple[ConceptLabels, pd.DataFrame]:
    """Concept labels for an image store and the per-image property table (index = image id, store order).

    ``records`` must hold every image of the store (extra ones are ignored); ``label_names`` maps label codes to
    names (default: the records' ``label_name``); ``grid`` is the layer's ``(h, w)`` (default: from the store's
    ``y`` / ``x`` columns).
    """
    import pandas as pd

    from workbench.concepts import concat_labels, labels_from_token_values

    ids = store.sequences["sequence_id"].astype(str).tolist()
    by_id = {r.id: r for r in records}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise InputError(f"{len(missing)} store images have no record, e.g. {missing[:3]}")
    ordered = [by_id[i] for i in ids]
    obs = store.obs(["sequence_id", "y", "x"])
    if grid is None:
        grid = (int(obs["y"].max()) + 1, int(obs["x"].max()) + 1)
    token_image = store.token_sequence()
    grey = grey_images(ordered)
    props = image_properties(ordered)

    def name_of(rec: ImageRecord) -> Any:
        code = rec.meta.get("label")
        if code is None or (isinstance(code, float) and np.isnan(code)) or (isinstance(code, (int, np.integer)) and code < 0):
            return None
        if label_names is not None:
            return label_names.get(int(code), str(code))
        return rec.meta.get("label_name") or str(code)

    label = np.asarray([name_of(r) for r in ordered], dtype=object)
    seq_label = pd.DataFrame({"sequence_id": ids, "label": label})
    tok_label = pd.DataFrame({"label": label[token_image]})
    dataset = labels_from_token_values(obs, tok_label, sequence_ids=ids, sequence_values=seq_label, source="dataset")
    seq_measured = pd.DataFrame({"sequence_id": ids, **{
        name: tertiles(props[col].to_numpy(), names) for name, col, names in
        (("intensity", "mean_intensity", TERTILE_NAMES), ("contrast", "contrast", TERTILE_NAMES),
         ("edges", "edge_density", TERTILE_NAMES), ("mass_row", "centroid_y", ("upper", "middle", "lower")),
         ("mass_col", "centroid_x", ("left", "centre", "right")))
    }})
    measured = labels_from_token_values(obs, position_values(obs, grey, grid, token_image), sequence_ids=ids,
                                        sequence_values=seq_measured, source="measured")
    return concat_labels([dataset, measured]), props
