"""Private helpers of the feature catalog: token layout, pooling, example selection and packing, HDF5-safe values.

Nothing here is public API; :mod:`workbench.catalog` documents what the results mean.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench.errors import StoreError, WorkbenchError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import scipy.sparse as sp

    from workbench.store import ActivationStore

__all__: list[str] = []

CATEGORY_MIN_ROWS = 1000
"""Table string columns with at least this many rows and few distinct values are stored as categoricals (fast reads)."""


# --------------------------------------------------------------------------------------------------- token layout


@dataclass
class Layout:
    """How the store's tokens map onto its sequences (store order)."""

    sequence_ids: list[str]
    token_sequence: np.ndarray
    """``(n_tokens,)`` index into ``sequence_ids`` of each token's sequence."""
    starts: np.ndarray
    """First token row of each sequence."""
    lengths: np.ndarray
    """Tokens per sequence."""
    sequences: list[str]
    """Residues of each sequence joined by ``separator``."""
    separator: str


def token_layout(store: ActivationStore) -> Layout:
    """Sequence ids, the sequence of every token and each sequence's residue string, checked for contiguity."""
    import pandas as pd

    ids = store.sequences["sequence_id"].astype(str).tolist()
    has_residues = "residue" in store.obs_columns
    obs = store.obs(["sequence_id", "residue"] if has_residues else ["sequence_id"])
    codes = pd.Categorical(obs["sequence_id"].astype(str), categories=ids).codes.astype(np.int64)
    if len(codes) != store.n_tokens:
        raise StoreError(f"{store.path}: token table has {len(codes)} rows, manifest says {store.n_tokens}")
    if len(codes) and (codes.min() < 0 or np.any(np.diff(codes) < 0)):
        raise StoreError(f"{store.path}: token table is not in the store's sequence order")
    lengths = np.bincount(codes, minlength=len(ids)).astype(np.int64)
    starts = np.r_[0, np.cumsum(lengths)[:-1]].astype(np.int64) if len(ids) else np.zeros(0, dtype=np.int64)
    if not has_residues:  # images and other inputs without letters: no sequence strings
        return Layout(ids, codes, starts, lengths, [""] * len(ids), "")
    residues = obs["residue"].astype(str).to_numpy()
    separator = "" if all(len(r) == 1 for r in pd.unique(residues)) else " "
    sequences = [separator.join(residues[s : s + n]) for s, n in zip(starts.tolist(), lengths.tolist())]
    return Layout(ids, codes, starts, lengths, sequences, separator)


# --------------------------------------------------------------------------------------------------- pooling


def pool_sequences(values: sp.csr_matrix, token_sequence: np.ndarray, lengths: np.ndarray) -> tuple[Any, Any]:
    """Per sequence and feature, the max and the mean over the sequence's tokens: two ``(n_seq, n_features)`` CSR."""
    import scipy.sparse as sp

    n_seq, n_feat = len(lengths), values.shape[1]
    coo = values.tocoo()
    if coo.nnz == 0:
        empty = sp.csr_matrix((n_seq, n_feat), dtype=np.float32)
        return empty, empty.copy()
    key = token_sequence[coo.row].astype(np.int64) * n_feat + coo.col.astype(np.int64)
    order = np.argsort(key, kind="stable")
    key, data = key[order], coo.data[order].astype(np.float32)
    first = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    ukey = key[first]
    rows, cols = ukey // n_feat, ukey % n_feat
    mx = np.maximum.reduceat(data, first)
    total = np.add.reduceat(data.astype(np.float64), first)
    mean = (total / np.maximum(lengths[rows], 1)).astype(np.float32)
    shape = (n_seq, n_feat)
    return (sp.csr_matrix((mx, (rows, cols)), shape=shape, dtype=np.float32),
            sp.csr_matrix((mean, (rows, cols)), shape=shape, dtype=np.float32))


# --------------------------------------------------------------------------------------------------- examples


def quantile_kinds(quantiles: Sequence[float]) -> list[str]:
    return ["top"] + [f"q{lo:g}-{hi:g}" for lo, hi in zip(quantiles[:-1], quantiles[1:])]


def select_examples(pooled_max: sp.csr_matrix, *, n_top: int, n_per_bin: int, quantiles: Sequence[float],
                    seed: int) -> dict[str, np.ndarray]:
    """Top sequences per feature by max activation, plus seeded samples from quantile bins of the others.

    Bins are quantiles of the feature's per-sequence maxima over all sequences it fires in; the top examples are
    excluded from the bins, so no sequence appears twice for a feature. Rows come sorted by feature, kind, rank.
    """
    q = np.asarray(quantiles, dtype=np.float64)
    if len(q) < 2 or q[0] != 0 or q[-1] != 1 or np.any(np.diff(q) <= 0):
        raise WorkbenchError(f"example quantiles must rise from 0 to 1, not {list(quantiles)}")
    rng = np.random.default_rng(seed)
    csc = pooled_max.tocsc()
    csc.sort_indices()
    feats, kinds, ranks, seqs, vals = [], [], [], [], []
    for j in range(csc.shape[1]):
        s, e = csc.indptr[j], csc.indptr[j + 1]
        if s == e:
            continue
        rows, v = csc.indices[s:e], csc.data[s:e]
        order = np.lexsort((rows, -v))
        top = order[:n_top]
        chosen = [top]
        kind = [np.zeros(len(top), dtype=np.int16)]
        rank = [np.arange(len(top), dtype=np.int32)]
        if n_per_bin > 0 and len(order) > len(top):
            rest = np.ones(len(v), dtype=bool)
            rest[top] = False
            edges = np.quantile(v, q)
            for b in range(len(q) - 1):
                upper = v <= edges[b + 1] if b == len(q) - 2 else v < edges[b + 1]
                cand = np.flatnonzero(rest & (v >= edges[b]) & upper)
                if len(cand) == 0:
                    continue
                pick = rng.choice(cand, size=min(n_per_bin, len(cand)), replace=False)
                pick = pick[np.lexsort((rows[pick], -v[pick]))]
                chosen.append(pick)
                kind.append(np.full(len(pick), b + 1, dtype=np.int16))
                rank.append(np.arange(len(pick), dtype=np.int32))
        idx = np.concatenate(chosen)
        feats.append(np.full(len(idx), j, dtype=np.int64))
        kinds.append(np.concatenate(kind))
        ranks.append(np.concatenate(rank))
        seqs.append(rows[idx].astype(np.int64))
        vals.append(v[idx].astype(np.float32))
    cat = (lambda parts, dt: np.concatenate(parts) if parts else np.zeros(0, dtype=dt))
    return {"feature": cat(feats, np.int64), "kind": cat(kinds, np.int16), "rank": cat(ranks, np.int32),
            "sequence": cat(seqs, np.int64), "max_activation": cat(vals, np.float32)}


def quantize(v: np.ndarray) -> np.ndarray:
    """Normalised activations (0..1] to uint8 0..255; any firing token maps to at least 1 so it stays visible."""
    out = np.clip(np.rint(np.asarray(v, dtype=np.float64) * 255), 0, 255).astype(np.uint8)
    out[(out == 0) & (np.asarray(v) > 0)] = 1
    return out


def pack_activations(values: sp.csr_matrix, examples: Mapping[str, np.ndarray],
                     layout: Layout) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-token activations of every example, quantised and concatenated: ``(offset, length, flat uint8)``."""
    feat, seq = examples["feature"], examples["sequence"]
    lengths = layout.lengths[seq]
    offsets = np.r_[0, np.cumsum(lengths)[:-1]].astype(np.int64) if len(seq) else np.zeros(0, dtype=np.int64)
    flat = np.zeros(int(lengths.sum()), dtype=np.uint8)
    if len(seq) == 0:
        return offsets, lengths.astype(np.int32), flat
    csc = values.tocsc()
    csc.sort_indices()
    slot = np.full(len(layout.lengths), -1, dtype=np.int64)
    bounds = np.flatnonzero(np.r_[True, feat[1:] != feat[:-1], True])
    for a, b in zip(bounds[:-1], bounds[1:]):
        j = int(feat[a])
        slot[seq[a:b]] = np.arange(a, b)
        s, e = csc.indptr[j], csc.indptr[j + 1]
        rows, v = csc.indices[s:e], csc.data[s:e]
        ts = layout.token_sequence[rows]
        k = slot[ts]
        hit = k >= 0
        pos = offsets[k[hit]] + rows[hit] - layout.starts[ts[hit]]
        flat[pos] = quantize(v[hit])
        slot[seq[a:b]] = -1
    return offsets, lengths.astype(np.int32), flat


# --------------------------------------------------------------------------------------------------- HDF5-safe values


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def to_h5(value: Any) -> Any:
    """A value anndata writes natively without pickling: dicts, str, numbers, bool, None, arrays, DataFrames.

    Lists become arrays when homogeneous (numbers, bools or strings); anything else (mixed lists, lists of dicts,
    lists holding None, other objects) is stored as its JSON text. Dict keys become strings, '/' replaced by '_'.
    """
    import pandas as pd

    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, pd.DataFrame):
        return clean_frame(value)
    if isinstance(value, Mapping):
        return {str(k).replace("/", "_"): to_h5(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "biuf":
            return value
        if value.dtype.kind in "USO":
            return to_h5(value.tolist())
    if isinstance(value, (list, tuple)):
        items = list(value)
        if not items:
            return np.zeros(0, dtype=np.float64)
        if all(isinstance(v, str) for v in items):
            return np.asarray(items, dtype=object)
        if all(isinstance(v, (bool, np.bool_)) for v in items):
            return np.asarray(items, dtype=bool)
        if all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)) for v in items):
            return np.asarray(items)
        try:
            arr = np.asarray(items)
        except ValueError:
            arr = None
        if arr is not None and arr.dtype.kind in "biuf":
            return arr
        return json.dumps(items, default=_json_default)
    if isinstance(value, (os.PathLike,)):
        return str(value)
    return str(value)


def clean_frame(frame: pd.DataFrame, *, categorize: bool = False, keep_index: bool = False) -> pd.DataFrame:
    """A copy of ``frame`` that anndata writes natively.

    Column names become strings; a non-default index becomes columns (unless ``keep_index``); object columns of
    mixed types become strings (missing values kept as NaN through a categorical); nullable strings become plain
    object strings; datetimes become ISO strings. With ``categorize``, long string columns with few distinct values
    become categoricals.
    """
    import pandas as pd

    df = frame.copy()
    if not keep_index and not isinstance(df.index, pd.RangeIndex):
        df = df.reset_index()
    df.columns = [str(c).replace("/", "_") for c in df.columns]
    if df.columns.duplicated().any():
        raise WorkbenchError(f"table has duplicate columns: {list(df.columns[df.columns.duplicated()])}")
    for col in df.columns:
        s = df[col]
        kind = s.dtype
        if isinstance(kind, pd.CategoricalDtype):
            cats = s.cat.categories
            if cats.dtype.kind not in "biuf" and not all(isinstance(c, str) for c in cats):
                df[col] = s.astype(object).map(lambda v: v if _missing(v) else str(v)).astype("category")
            continue
        if pd.api.types.is_datetime64_any_dtype(kind) or pd.api.types.is_timedelta64_dtype(kind):
            df[col] = _strings(s.astype(object).map(lambda v: None if _missing(v) else str(v)), categorize)
            continue
        if isinstance(kind, pd.StringDtype):
            df[col] = _strings(s.astype(object).map(lambda v: None if _missing(v) else v), categorize)
            continue
        if kind == object:
            values = s.to_numpy()
            missing = np.array([_missing(v) for v in values], dtype=bool)
            present = values[~missing]
            if len(present) and all(isinstance(v, (bool, np.bool_)) for v in present):
                df[col] = pd.array([None if m else bool(v) for v, m in zip(values, missing)], dtype="boolean")
            elif len(present) and all(isinstance(v, (int, float, np.integer, np.floating)) for v in present):
                df[col] = pd.to_numeric(s.where(~missing, np.nan), errors="coerce").astype(np.float64)
            else:
                df[col] = _strings(pd.Series([None if m else (v if isinstance(v, str) else _as_text(v))
                                              for v, m in zip(values, missing)], index=s.index, dtype=object), categorize)
    return df


def _as_text(value: Any) -> str:
    if isinstance(value, (list, tuple, dict, np.ndarray)):
        return json.dumps(value, default=_json_default)
    return str(value)


def _missing(value: Any) -> bool:
    import pandas as pd

    if value is None:
        return True
    if isinstance(value, (list, tuple, dict, np.ndarray, str)):
        return False
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _strings(s: pd.Series, categorize: bool) -> pd.Series:
    """Object strings; a categorical when values are missing (anndata writes no None in string arrays) or repeat."""
    has_missing = bool(s.isna().any())
    repeat = categorize and len(s) >= CATEGORY_MIN_ROWS and s.nunique(dropna=True) <= len(s) // 4
    if has_missing or repeat:
        return s.astype("category")
    return s.astype(object)


# --------------------------------------------------------------------------------------------------- atomic folders


def fresh_partial(out: Path) -> Path:
    """``<out>.partial``, emptied (a previous failed run may have left one)."""
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
    tmp.mkdir(parents=True)
    return tmp


def check_target(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise WorkbenchError(f"{out} exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise WorkbenchError(f"{out} exists and is not empty (pass --overwrite or overwrite=True to replace it)")


def publish(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` folder to ``out``, replacing an existing ``out`` (renames only)."""
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        os.replace(out, old)
        try:
            os.replace(tmp, out)
        except BaseException:
            os.replace(old, out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def to_python(value: Any) -> Any:
    """What anndata reads back (numpy scalars and arrays) as plain Python for JSON and for users."""
    if isinstance(value, Mapping):
        return {str(k): to_python(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return [to_python(v) for v in value.tolist()] if value.dtype == object else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [to_python(v) for v in value]
    if isinstance(value, bytes):
        return value.decode()
    return value


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(to_python(data), indent=2, sort_keys=True, default=_json_default, allow_nan=True) + "\n")
