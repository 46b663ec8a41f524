"""Reading a catalog's HDF5 elements without importing anndata, and small helpers of :class:`workbench.catalog.Catalog`.

anndata's own reader costs about a second to import (it pulls zarr and the async machinery) and dispatches every
element through a registry; a catalog's ``var``, summaries and tables use a handful of anndata encodings that are
read here directly with h5py (dicts, strings, scalars, arrays, string arrays, categoricals, data frames, nullable
integers and booleans, nulls). Anything else (sparse matrices, newer encodings) is handed to anndata.
Nothing here is public API.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from workbench.errors import WorkbenchError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__: list[str] = []


def _attr(node: Any, key: str, default: Any = None) -> Any:
    value = node.attrs.get(key, default)
    return value.decode() if isinstance(value, bytes) else value


def read_elem(node: Any) -> Any:
    """One anndata-encoded element (what ``anndata.io.read_elem`` returns for it)."""
    import h5py

    if isinstance(node, h5py.Dataset):  # scalars, arrays, strings and nulls: the dtype and shape say which
        return _read_dataset(node)
    enc = _attr(node, "encoding-type")
    if enc == "dict" and isinstance(node, h5py.Group):
        return {str(k): read_elem(node[k]) for k in node.keys()}
    if enc == "categorical":
        import pandas as pd

        return pd.Categorical.from_codes(codes=node["codes"][()], categories=read_elem(node["categories"]),
                                         ordered=bool(_attr(node, "ordered", False)))
    if enc == "dataframe":
        return read_frame(node)
    if enc in ("nullable-integer", "nullable-boolean"):
        import pandas as pd

        kind = pd.arrays.IntegerArray if enc == "nullable-integer" else pd.arrays.BooleanArray
        return kind(node["values"][()], mask=node["mask"][()])
    return _anndata_read_elem(node)


def _read_dataset(node: Any) -> Any:
    """A dataset as anndata reads it: ``string`` / ``numeric-scalar`` as a Python value, ``array`` /
    ``string-array`` as an array (strings as an object array of ``str``), ``null`` as None; other encodings (an
    older or newer anndata's) are handed to anndata. Reading the dtype and shape spares an attribute read."""
    import h5py

    if node.shape is None:  # h5py.Empty: anndata's null
        return None
    is_text = h5py.check_string_dtype(node.dtype) is not None
    if node.dtype.kind not in "biufcS" and not is_text:
        return _anndata_read_elem(node)
    if node.ndim == 0:
        value = node.asstr()[()] if is_text else node[()]
        return value.item() if isinstance(value, np.generic) else value
    return node.asstr()[()] if is_text else node[()]


def _anndata_read_elem(node: Any) -> Any:
    try:
        from anndata.io import read_elem as read
    except ImportError:  # pragma: no cover - anndata < 0.11
        from anndata.experimental import read_elem as read
    return read(node)


def read_frame(group: Any) -> pd.DataFrame:
    """An anndata-encoded DataFrame, column by column (anndata's own reader turns integer indexes into strings, which
    takes seconds on million-row tables); a ``0..n-1`` integer index comes back as a RangeIndex."""
    import pandas as pd

    if _attr(group, "encoding-type") != "dataframe":
        return read_elem(group)
    order = [str(c) for c in np.atleast_1d(group.attrs.get("column-order", []))]
    key = str(_attr(group, "_index", "_index"))
    columns = {c: read_elem(group[c]) for c in order}
    index = read_elem(group[key]) if key in group else None
    frame = pd.DataFrame(columns, columns=order, copy=False)
    if index is not None:
        index = np.asarray(index)
        if index.dtype.kind in "iu" and np.array_equal(index, np.arange(len(index))):
            frame.index = pd.RangeIndex(len(index))
        else:
            values = index.astype(str) if index.dtype == object else index
            frame.index = pd.Index(values, name=None if key == "_index" else key)
    return frame


def frame_index(group: Any) -> list[str]:
    """The index of an anndata-encoded DataFrame as strings, without reading its columns (or pandas)."""
    key = str(_attr(group, "_index", "_index"))
    values = read_elem(group[key])
    return [str(v) for v in np.asarray(values).tolist()]


def example_index(examples: pd.DataFrame | None, names: list[str]) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """The examples table (``uns["examples"]``; None: an empty one) sorted by feature, and each feature's first and
    end row in it (rows of one feature form one block; catalogs are written sorted, anything else is sorted here)."""
    import pandas as pd

    if examples is None:
        examples = pd.DataFrame({"feature": pd.Series(dtype=object), "kind": pd.Series(dtype=object),
                                 "rank": pd.Series(dtype=np.int32), "sequence_id": pd.Series(dtype=object),
                                 "max_activation": pd.Series(dtype=np.float32), "offset": pd.Series(dtype=np.int64),
                                 "length": pd.Series(dtype=np.int32)})
    col = examples["feature"]
    if not len(examples):
        feat = np.zeros(0, np.int64)
    elif hasattr(col, "cat") and list(col.cat.categories.astype(str)) == names:
        feat = col.cat.codes.to_numpy().astype(np.int64)
    else:
        feat = pd.Categorical(col.astype(str), categories=names).codes.astype(np.int64)
    order = np.argsort(feat, kind="stable")
    if np.any(order != np.arange(len(order))):
        examples = examples.iloc[order].reset_index(drop=True)
        feat = feat[order]
    n = np.arange(len(names))
    return examples, np.searchsorted(feat, n, side="left"), np.searchsorted(feat, n, side="right")


def equals(series: pd.Series, value: str) -> np.ndarray:
    """``series == value`` as strings, through the codes when the column is categorical (fast on big tables)."""
    if hasattr(series, "cat"):
        hit = np.flatnonzero(series.cat.categories.astype(str) == value)
        return series.cat.codes.to_numpy() == (int(hit[0]) if len(hit) else -2)
    return (series.astype(str) == value).to_numpy()


def schema_major(version: str) -> int:
    """The major number of a ``major.minor`` schema version."""
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        raise WorkbenchError(f"catalog schema version {version!r} is not 'major.minor'") from None


def as_float(v: Any) -> float:
    """``float(v)``, NaN for anything that is not a number."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def search_frame(rows: list[tuple[str, str, Any, float]], var: pd.DataFrame, limit: int) -> pd.DataFrame:
    """The rows of :meth:`Catalog.search`, first hit per feature, with the features' description and family."""
    import pandas as pd

    seen: set[str] = set()
    keep = []
    for r in rows:
        if r[0] not in seen:
            seen.add(r[0])
            keep.append(r)
        if len(keep) >= limit:
            break
    df = pd.DataFrame(keep, columns=["feature", "match", "concept", "test_f1"])
    sub = var.reindex(df["feature"])
    df["concept"] = [None if c is None or (isinstance(c, float) and np.isnan(c)) else str(c) for c in df["concept"]]
    df["description"] = sub["description"].astype(str).to_numpy() if len(df) else pd.Series(dtype=object)
    df["family"] = sub["family"].astype(str).to_numpy() if len(df) else pd.Series(dtype=object)
    return df
