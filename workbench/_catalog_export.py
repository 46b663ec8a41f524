"""Exporting a catalog to Parquet / CSV / JSON files (:meth:`workbench.catalog.Catalog.export`).

Nothing here is public API; :meth:`~workbench.catalog.Catalog.export` documents the files.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from workbench.catalog import Catalog

__all__: list[str] = []

FORMATS = ("parquet", "csv", "json")


def parse_formats(formats: str | Sequence[str]) -> tuple[str, ...]:
    """Export formats from ``"parquet"``, ``"parquet,csv"`` or a list / tuple of names (order kept, repeats dropped);
    an unknown or empty choice raises :class:`InputError`."""
    if isinstance(formats, str):
        names = [f.strip().lower() for f in formats.split(",")]
    else:
        names = [str(f).strip().lower() for f in formats]
    out = tuple(dict.fromkeys(f for f in names if f))
    bad = [f for f in out if f not in FORMATS]
    if bad or not out:
        raise InputError(f"unknown export format(s) {bad or list(out)}; use {', '.join(FORMATS)}")
    return out


def export_catalog(cat: Catalog, out: str | os.PathLike[str], *, formats: str | Sequence[str],
                   overwrite: bool) -> list[Path]:
    """What :meth:`Catalog.export` does (see there)."""
    import shutil

    from workbench._catalog_build import check_target, fresh_partial, publish, write_json
    from workbench.catalog import SCHEMA_FILE

    chosen = parse_formats(formats)
    out = Path(out)
    check_target(out, overwrite)
    tmp = fresh_partial(out)
    written: list[Path] = []
    try:
        frames = {"features": _features(cat), "sequences": cat.sequences.rename_axis("sequence_id").reset_index(),
                  "examples": _examples(cat)}
        frames.update({f"tables/{name}": cat.table(name) for name in cat.tables})
        for stem, frame in frames.items():
            for fmt in chosen:
                path = tmp / f"{stem}.{fmt}"
                path.parent.mkdir(parents=True, exist_ok=True)
                write_frame(frame, path, fmt)
                written.append(path)
        for stem, data in (("summary", cat.summary), ("provenance", cat.provenance), ("metrics", cat.metrics)):
            write_json(tmp / f"{stem}.json", data)
            written.append(tmp / f"{stem}.json")
        schema = cat.path.with_name(SCHEMA_FILE)
        if schema.is_file():
            shutil.copyfile(schema, tmp / SCHEMA_FILE)
            written.append(tmp / SCHEMA_FILE)
        publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [out / p.relative_to(tmp) for p in written]


def _features(cat: Catalog) -> pd.DataFrame:
    df = cat.features.rename_axis("feature").reset_index()
    xy = cat.umap
    df["umap_1"], df["umap_2"] = xy[:, 0], xy[:, 1]
    return df


def _examples(cat: Catalog) -> pd.DataFrame:
    ex = cat._example_table().copy()
    flat = cat._example_activations()
    seqs = cat.sequences["sequence"]
    ex["sequence"] = seqs.reindex(ex["sequence_id"].astype(str)).to_numpy()
    ex["activations"] = [(flat[o : o + n].astype(np.float32) / 255.0).round(4).tolist()
                         for o, n in zip(ex["offset"].to_numpy(), ex["length"].to_numpy())]
    return ex.drop(columns=["offset"])


def write_frame(frame: pd.DataFrame, path: Path, fmt: str) -> None:
    """One DataFrame in one format (list columns become space-separated text in CSV)."""
    import pandas as pd

    df = frame.reset_index(drop=True) if isinstance(frame.index, pd.RangeIndex) else frame.reset_index()
    if fmt == "parquet":
        df.to_parquet(path, index=False)
    elif fmt == "csv":
        csv = df.copy()
        for col in csv.columns:
            if csv[col].dtype == object and len(csv) and isinstance(csv[col].iloc[0], list):
                csv[col] = [" ".join(f"{v:g}" for v in values) for values in csv[col]]
        csv.to_csv(path, index=False)
    else:
        _write_json_records(df, path)


def _write_json_records(df: pd.DataFrame, path: Path, chunk: int = 100_000) -> None:
    """A JSON array of row objects with exact floats (Python's repr; pandas' writer keeps only 15 decimals, which
    turns small p-values to 0) and null for missing values."""
    import json

    import pandas as pd

    from workbench._catalog_build import _json_default

    names = [str(c) for c in df.columns]
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("[")
        first = True
        for start in range(0, len(df), chunk):
            part = df.iloc[start : start + chunk]
            columns: list[Any] = []
            for c in part.columns:
                col = part[c]
                values = col.astype(object).tolist() if isinstance(col.dtype, pd.CategoricalDtype) else col.tolist()
                missing = part[c].isna().to_numpy()
                if missing.any():
                    values = [None if m else v for v, m in zip(values, missing)]
                columns.append(values)
            for row in zip(*columns):
                text = json.dumps(dict(zip(names, row)), ensure_ascii=False, default=_json_default)
                fh.write(("" if first else ",") + text)
                first = False
        fh.write("]")
