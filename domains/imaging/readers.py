"""Read medical images (MedMNIST ``.npz`` files, folders of PNG / JPEG / TIFF files) into :class:`ImageRecord` lists.

Every reader returns images channel-first, ``(C, H, W)``, in their stored type: ``uint8``, ``uint16`` (16-bit
images stay 16-bit) or ``float32`` in ``[0, 1]``. Grey images have one channel, colour images three (an alpha
channel is dropped). Scaling to a common size and range is :class:`domains.imaging.transforms.Preprocess`'s job.

Readers reject missing, empty or malformed inputs with a one-line :class:`~workbench.errors.InputError` that names
the file (and, for ``.npz`` files, the key) at fault.
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from workbench.errors import InputError

__all__ = [
    "ImageRecord",
    "LABEL_NAMES",
    "POSITIVE_LABEL",
    "IMAGE_EXTENSIONS",
    "bundled",
    "read_medmnist",
    "read_folder",
    "read_images",
    "read_any",
]

PathLike = str | os.PathLike[str]

#: Label codes of the bundled MedMNIST datasets and what they mean.
LABEL_NAMES: dict[str, dict[int, str]] = {
    "pneumoniamnist": {0: "normal", 1: "pneumonia"},
    "breastmnist": {0: "malignant", 1: "normal_or_benign"},
}
#: The pathology (positive) class of each bundled dataset, by label name.
POSITIVE_LABEL: dict[str, str] = {"pneumoniamnist": "pneumonia", "breastmnist": "malignant"}
#: File name endings (lower case) the folder and file readers accept.
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff")

_DATA_DIR = Path(__file__).resolve().parent / "data"
_SPLITS = ("train", "val", "test")
_TAB_EXTENSIONS = (".tsv", ".tab")
_SHOW = 3  # offenders named in an error message


@dataclass(frozen=True)
class ImageRecord:
    """One image to classify or to run through a model.

    ``image`` is channel-first, ``(C, H, W)``, of type ``uint8``, ``uint16`` or ``float32`` (values in ``[0, 1]``).
    ``meta`` holds at least ``split`` (``"train"``, ``"val"``, ``"test"`` or None), ``label`` (int or None) and
    ``label_name`` (str or None), plus any columns carried from a label table and, for files, ``file``.
    """

    id: str
    image: np.ndarray
    meta: Mapping[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------- helpers


def _reason(exc: BaseException) -> str:
    """An exception's message on one line (its type name if it has none), cut to 160 characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _some(names: Sequence[str]) -> str:
    """The first few names joined by commas, with a count of the rest."""
    shown = ", ".join(str(n) for n in names[:_SHOW])
    return shown + (f" and {len(names) - _SHOW} more" if len(names) > _SHOW else "")


def _as_image_dtype(arr: np.ndarray, where: str) -> np.ndarray:
    """``arr`` as uint8, uint16 or float32 in [0, 1]; other integer types are accepted when their values fit."""
    if arr.dtype in (np.uint8, np.uint16):
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * np.uint8(255)
    if np.issubdtype(arr.dtype, np.floating):
        if arr.size and (not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1):
            raise InputError(f"{where}: float images must hold finite values in [0, 1]")
        return arr.astype(np.float32, copy=False)
    if np.issubdtype(arr.dtype, np.integer):
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise InputError(f"{where}: integer image values must lie in 0..65535 (found {lo}..{hi})")
        return arr.astype(np.uint8 if hi <= 255 else np.uint16)
    raise InputError(f"{where}: unsupported image type {arr.dtype}")


def _label_name(dataset: str | None, label: int | None) -> str | None:
    if dataset is None or label is None:
        return None
    return LABEL_NAMES.get(dataset, {}).get(label)


# --------------------------------------------------------------------------------------------------- bundled data


def bundled(name: str) -> Path:
    """Path of a dataset bundled in ``domains/imaging/data`` (``"pneumoniamnist"`` or ``"pneumoniamnist.npz"``)."""
    available = sorted(f.name for f in _DATA_DIR.glob("*.npz"))
    for candidate in available:
        if name in (candidate, Path(candidate).stem):
            return _DATA_DIR / candidate
    names = ", ".join(Path(a).stem for a in available)
    raise InputError(f"unknown bundled imaging dataset {name!r}; available: {names}")


# --------------------------------------------------------------------------------------------------- MedMNIST npz


def _medmnist_split(data: Mapping[str, np.ndarray], path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The checked ``(images (N, C, H, W), labels (N,) int64)`` of one split of a MedMNIST npz."""
    keys = (f"{split}_images", f"{split}_labels")
    missing = [k for k in keys if k not in data]
    if missing:
        raise InputError(f"{path}: missing key {missing[0]!r} (keys present: {', '.join(sorted(data)) or 'none'})")
    try:
        images, labels = data[keys[0]], data[keys[1]]
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(f"{path}: cannot read {keys[0]!r}/{keys[1]!r}: {_reason(exc)}") from None
    if images.ndim == 3:
        images = images[:, None, :, :]
    elif images.ndim == 4:
        if images.shape[-1] not in (1, 3, 4):
            raise InputError(f"{path}: key {keys[0]!r} has {images.shape[-1]} channels in its last axis "
                             "(expected 1, 3 or 4)")
        images = np.moveaxis(images[..., :3], -1, 1)
    else:
        raise InputError(f"{path}: key {keys[0]!r} has {images.ndim} dimensions (expected (N, H, W) or (N, H, W, C))")
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    elif labels.ndim != 1:
        raise InputError(f"{path}: key {keys[1]!r} has shape {labels.shape} "
                         "(expected (N,) or (N, 1): one label per image)")
    if len(labels) != len(images):
        raise InputError(f"{path}: key {keys[0]!r} holds {len(images)} images "
                         f"but {keys[1]!r} holds {len(labels)} labels")
    if np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_:
        labels = labels.astype(np.int64)
    elif np.issubdtype(labels.dtype, np.floating) and np.isfinite(labels).all() and (labels == np.round(labels)).all():
        labels = labels.astype(np.int64)
    else:
        raise InputError(f"{path}: key {keys[1]!r} holds non-integer labels (type {labels.dtype})")
    if labels.size and labels.min() < 0:
        raise InputError(f"{path}: key {keys[1]!r} holds negative labels")
    return _as_image_dtype(images, f"{path}: key {keys[0]!r}"), labels


def read_medmnist(
    path: PathLike,
    *,
    splits: Sequence[str] = _SPLITS,
    name: str | None = None,
    limit: int | None = None,
) -> list[ImageRecord]:
    """Read the images and labels of a MedMNIST-layout ``.npz`` file.

    The file holds ``{split}_images`` of shape ``(N, H, W)`` or ``(N, H, W, C)`` and ``{split}_labels`` of shape
    ``(N,)`` or ``(N, 1)`` for each split. Records come split by split in file order, with ids
    ``"{name}:{split}:{i:05d}"`` (``name`` defaults to the file stem) and ``meta`` ``split``, ``label``,
    ``label_name`` (from :data:`LABEL_NAMES` for known datasets, else None) and ``source`` (the file's path).
    ``limit`` keeps the first ``limit`` images of each split.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file")
    if not p.is_file():
        raise InputError(f"{p}: not a file")
    if isinstance(splits, str):
        splits = (splits,)
    if not splits:
        raise InputError(f"{p}: no splits asked for")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InputError(f"limit must be a positive integer, not {limit!r}")
    dataset = name or p.stem
    try:
        npz = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"{p}: not a readable .npz file: {_reason(exc)}") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise InputError(f"{p}: not an .npz archive (a single array: expected keys like 'train_images')")
    records: list[ImageRecord] = []
    source = str(p.resolve())  # lets a store's images be read again (the causal check, the model loss)
    with npz:
        for split in splits:
            images, labels = _medmnist_split(npz, p, split)
            if limit is not None:
                images, labels = images[:limit], labels[:limit]
            images = np.ascontiguousarray(images)
            images.setflags(write=False)
            for i in range(len(images)):
                label = int(labels[i])
                meta = {"split": split, "label": label, "label_name": _label_name(dataset, label), "source": source}
                records.append(ImageRecord(id=f"{dataset}:{split}:{i:05d}", image=images[i], meta=meta))
    return records


# --------------------------------------------------------------------------------------------------- image files


def _load_image(path: Path) -> np.ndarray:
    """One image file as ``(C, H, W)``; raises OSError / ValueError (caught by the callers) on unreadable files."""
    from PIL import Image

    with Image.open(path) as img:
        if getattr(img, "n_frames", 1) > 1:
            raise ValueError(f"{img.n_frames} frames (only single-frame images are read)")
        img.load()
        mode = img.mode
        if mode.startswith("I;16"):
            arr = np.asarray(img).astype(np.uint16)
        elif mode in ("I", "F"):
            arr = np.asarray(img)
        else:
            if mode in ("1", "LA", "La"):
                img = img.convert("L")
            elif mode in ("P", "PA"):
                img = img.convert("RGBA" if mode == "PA" or "transparency" in img.info else "RGB")
            elif mode not in ("L", "RGB", "RGBA"):
                img = img.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX, RGBa
            arr = np.asarray(img)
            if arr.ndim == 3:
                arr = arr[..., :3]  # drop alpha
    if arr.ndim == 2:
        arr = arr[None, :, :]
    elif arr.ndim == 3:
        arr = np.moveaxis(arr, -1, 0)
    else:
        raise ValueError(f"unexpected array shape {arr.shape}")
    if arr.dtype == np.float64 or arr.dtype == np.float32:
        if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
            raise ValueError("floating-point image with values outside [0, 1]")
    elif arr.dtype not in (np.uint8, np.uint16):
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 65535:
            raise ValueError(f"integer values {lo}..{hi} outside 0..65535")
    return np.ascontiguousarray(_as_image_dtype(arr, str(path)))


def _load_many(paths: Sequence[Path], where: str) -> list[np.ndarray]:
    """Load all ``paths``; one InputError naming the first few unreadable files."""
    images: list[np.ndarray] = []
    bad: list[str] = []
    for path in paths:
        try:
            images.append(_load_image(path))
        except (OSError, ValueError, SyntaxError, InputError) as exc:  # PIL raises these on corrupt / truncated files
            bad.append(f"{path.name} ({_reason(exc)})")
    if bad:
        raise InputError(f"{where}: {len(bad)} unreadable image file(s): {_some(bad)}")
    return images


def _is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def _read_label_table(labels: Path, *, id_col: str, label_col: str, split_col: str | None, meta_cols: Sequence[str]):
    """The label table as a DataFrame of strings (missing cells as None), its columns checked."""
    import pandas as pd

    if not labels.is_file():
        raise InputError(f"{labels}: no such label file")
    sep = "\t" if labels.suffix.lower() in _TAB_EXTENSIONS else ","
    try:
        table = pd.read_csv(labels, sep=sep, dtype=str, keep_default_na=True)
    except (ValueError, OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(f"{labels}: cannot read label table: {_reason(exc)}") from None
    if table.empty:
        raise InputError(f"{labels}: label table has no rows")
    table.columns = [str(c).strip() for c in table.columns]
    wanted = [id_col, label_col] + ([split_col] if split_col else []) + list(meta_cols)
    missing = [c for c in wanted if c not in table.columns]
    if missing:
        raise InputError(f"{labels}: missing column(s) {', '.join(map(repr, missing))} "
                         f"(columns: {', '.join(table.columns)})")
    table = table.astype(object).where(table.notna(), None)
    for col in (id_col, label_col):
        empty = [str(i + 2) for i, v in enumerate(table[col]) if v is None or not str(v).strip()]
        if empty:
            raise InputError(f"{labels}: empty {col!r} cell in {len(empty)} row(s), line(s) {_some(empty)}")
    return table


def _label_codes(values: Sequence[str], where: str) -> tuple[list[int], list[str | None]]:
    """Integer labels as they are; string labels coded 0..K-1 in sorted order (names kept)."""
    text = [str(v).strip() for v in values]
    if all(re.fullmatch(r"[+-]?\d+(\.0*)?", v) for v in text):
        codes = [int(float(v)) for v in text]
        if min(codes) < 0:
            raise InputError(f"{where}: negative label {min(codes)}")
        return codes, [None] * len(codes)
    classes = sorted(set(text))
    index = {c: i for i, c in enumerate(classes)}
    return [index[v] for v in text], list(text)


def read_folder(
    folder: PathLike,
    *,
    labels: PathLike | None = None,
    id_col: str = "image",
    label_col: str = "label",
    split_col: str | None = None,
    meta_cols: Sequence[str] = (),
) -> list[ImageRecord]:
    """Read every PNG / JPEG / TIFF file in ``folder`` (not its subfolders), sorted by file name.

    Ids are file names. Without ``labels`` every record has ``split``, ``label`` and ``label_name`` None. With
    ``labels``, a CSV (TSV for ``.tsv`` / ``.tab``) naming each image in ``id_col`` (with or without its
    extension) and its class in ``label_col``: integer labels are kept; string labels are coded ``0..K-1`` in
    sorted order and kept in ``label_name``. ``split_col`` fills ``meta['split']``; ``meta_cols`` are copied into
    ``meta``. Images without a label row, label rows without an image, duplicate rows, unreadable files and images
    of different shapes raise an InputError naming the first few offenders.
    """
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"{root}: no such folder")
    paths = sorted((p for p in root.iterdir() if _is_image_file(p)), key=lambda p: p.name)
    if not paths:
        raise InputError(f"{root}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
    stems: dict[str, list[str]] = {}
    for p in paths:
        stems.setdefault(p.stem, []).append(p.name)

    metas: dict[str, dict[str, Any]] = {p.name: {"split": None, "label": None, "label_name": None} for p in paths}
    if labels is not None:
        label_path = Path(labels)
        table = _read_label_table(label_path, id_col=id_col, label_col=label_col, split_col=split_col,
                                  meta_cols=meta_cols)
        rows: dict[str, int] = {}
        orphans: list[str] = []
        for i, raw in enumerate(table[id_col]):
            key = Path(str(raw).strip()).name
            if key in metas:
                target = key
            elif key in stems and len(stems[key]) == 1:
                target = stems[key][0]
            elif key in stems:
                raise InputError(f"{label_path}: row {key!r} matches several images: {_some(stems[key])}")
            else:
                orphans.append(key)
                continue
            if target in rows:
                raise InputError(f"{label_path}: image {target!r} has more than one label row")
            rows[target] = i
        if orphans:
            raise InputError(f"{label_path}: {len(orphans)} label row(s) without an image in {root}: {_some(orphans)}")
        unlabelled = [p.name for p in paths if p.name not in rows]
        if unlabelled:
            raise InputError(f"{label_path}: {len(unlabelled)} image(s) in {root} without a label row: "
                             f"{_some(unlabelled)}")
        order = [rows[p.name] for p in paths]
        codes, names = _label_codes([table[label_col].iloc[i] for i in order], str(label_path))
        for p, i, code, lname in zip(paths, order, codes, names):
            meta = metas[p.name]
            meta.update(label=code, label_name=lname)
            if split_col:
                value = table[split_col].iloc[i]
                meta["split"] = None if value is None else str(value).strip()
            for col in meta_cols:
                meta[col] = table[col].iloc[i]

    images = _load_many(paths, str(root))
    shapes: dict[tuple[int, ...], list[str]] = {}
    for p, img in zip(paths, images):
        shapes.setdefault(img.shape, []).append(p.name)
    if len(shapes) > 1:
        parts = sorted(shapes.items(), key=lambda kv: -len(kv[1]))
        desc = "; ".join(f"{'x'.join(map(str, s))} ({len(n)} file(s), e.g. {_some(n)})" for s, n in parts[:_SHOW])
        raise InputError(f"{root}: images differ in shape (C x H x W): {desc}")
    return [ImageRecord(id=p.name, image=img, meta={**metas[p.name], "file": str(p)}) for p, img in zip(paths, images)]


def read_images(paths: Iterable[PathLike]) -> list[ImageRecord]:
    """Read explicit PNG / JPEG / TIFF files (no labels; shapes may differ); ids are the (unique) file names."""
    files = [Path(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
    if not files:
        raise InputError("no image files given")
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise InputError(f"{len(missing)} image file(s) not found: {_some(missing)}")
    wrong = [str(p) for p in files if p.suffix.lower() not in IMAGE_EXTENSIONS]
    if wrong:
        raise InputError(f"not PNG / JPEG / TIFF ({', '.join(IMAGE_EXTENSIONS)}): {_some(wrong)}")
    seen: set[str] = set()
    for p in files:
        if p.name in seen:
            raise InputError(f"two image files share the name {p.name!r}; ids must be unique")
        seen.add(p.name)
    images = _load_many(files, "images")
    return [ImageRecord(id=p.name, image=img, meta={"split": None, "label": None, "label_name": None, "file": str(p)})
            for p, img in zip(files, images)]


def read_any(path: PathLike, **options: Any) -> list[ImageRecord]:
    """Read a MedMNIST ``.npz`` (:func:`read_medmnist`), a folder (:func:`read_folder`) or one image file.

    ``options`` are passed to the reader chosen; a single image file takes none.
    """
    import inspect

    def call(reader: Any) -> list[ImageRecord]:
        try:
            inspect.signature(reader).bind(p, **options)
        except TypeError as exc:
            raise InputError(f"{p}: bad option for {reader.__name__}: {_reason(exc)}") from None
        return reader(p, **options)

    p = Path(path)
    if p.is_dir():
        return call(read_folder)
    if not p.exists():
        raise InputError(f"{p}: no such file or folder")
    if p.suffix.lower() == ".npz":
        return call(read_medmnist)
    if p.suffix.lower() in IMAGE_EXTENSIONS:
        if options:
            raise InputError(f"{p}: a single image file takes no options (got {', '.join(sorted(options))})")
        return read_images([p])
    raise InputError(f"{p}: unknown image input (expected a .npz file, a folder or a "
                     f"{'/'.join(IMAGE_EXTENSIONS)} file)")
