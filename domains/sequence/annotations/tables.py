"""Concepts from tables: the store's carried columns (source ``"table"``) and user CSV/TSV files (``"user"``).

``table``: per sequence, ``"<column>=<value>"`` for columns the store carries (Thera-SAbDab's ``CH1 Isotype=G1``,
``VD LC=Kappa``...). ``user``: the concepts of a user file, per residue (spans) or per sequence.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from workbench.concepts import ConceptLabels
from workbench.errors import InputError

from ._common import SPAN_COLUMNS, PathLike, _build, _check_ids, _long_values, _obs, _sequence_ids

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from workbench.store import ActivationStore

__all__ = ["table_labels", "user_labels", "check_user_groups"]


def _table_from(obs: pd.DataFrame, sequences: pd.DataFrame, columns: Sequence[str], multi_sep: str | None,
                rename: Mapping[str, str] | None = None, source: str = "table") -> ConceptLabels:
    columns = [columns] if isinstance(columns, str) else list(columns)
    carried = [c for c in sequences.columns if c not in ("sequence_id", "shard", "offset", "n_tokens")]
    missing = [c for c in columns if c not in carried]
    if missing:
        raise InputError(f"the store carries no column(s) {', '.join(map(repr, missing))}; "
                         f"it has: {', '.join(map(repr, carried)) or '(none)'}")
    values = _long_values(sequences, columns, multi_sep, rename)
    return _build(obs, [str(s) for s in sequences["sequence_id"]], None, values, source)


def table_labels(store: ActivationStore, columns: Sequence[str], *, multi_sep: str | None = ";") -> ConceptLabels:
    """Sequence concepts ``"<column>=<value>"`` from per-sequence columns the store carries (source ``"table"``).

    ``columns`` are columns of ``store.sequences`` (the metadata carried from the input table: Thera-SAbDab's
    ``CH1 Isotype``, ``VD LC``, ``Genetics (Bispecifics delimited with semicolon)``, OAS's ``v_family``...).
    Cells holding several values separated by ``multi_sep`` (``"Kappa;Lambda"``) give one concept per value
    (None: take cells whole); empty cells give none. Unknown columns are an :class:`InputError` listing the
    carried ones.
    """
    return _table_from(_obs(store), store.sequences, columns, multi_sep)


def _read_user_table(path: Path) -> pd.DataFrame:
    import pandas as pd

    if not path.is_file():
        raise InputError(f"{path}: no such file")
    suffix = path.suffix.lower()
    sep = "\t" if suffix in (".tsv", ".tab") else "," if suffix == ".csv" else None
    try:
        frame = pd.read_csv(path, sep=sep, engine="python" if sep is None else "c", dtype={"sequence_id": str},
                            skipinitialspace=True)
    except pd.errors.EmptyDataError as exc:
        raise InputError(f"{path}: empty table") from exc
    except (pd.errors.ParserError, ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: malformed table ({' '.join(str(exc).split())[:200]})") from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    frame = frame.dropna(how="all")
    if "sequence_id" not in frame.columns:
        raise InputError(f"{path}: no 'sequence_id' column (columns: {', '.join(map(repr, frame.columns))})")
    if frame["sequence_id"].isna().any():
        row = int(np.flatnonzero(frame["sequence_id"].isna().to_numpy())[0]) + 1
        raise InputError(f"{path}: data row {row} has no sequence_id")
    frame["sequence_id"] = frame["sequence_id"].astype(str).str.strip()
    return frame


def _is_residue_number(value: object) -> bool:
    """True for an integer cell (int, integral float or digit string)."""
    if isinstance(value, (int, np.integer)):
        return True
    if isinstance(value, float):
        return value.is_integer()
    return isinstance(value, str) and value.strip().isdigit()


def _user_from(obs: pd.DataFrame, sequence_ids: Sequence[str], path: PathLike, multi_sep: str | None,
               source: str) -> ConceptLabels:
    p = Path(path)
    frame = _read_user_table(p)
    _check_ids(frame["sequence_id"], sequence_ids, str(p))
    span_cols = {"start", "end", "concept"}
    present = span_cols & set(frame.columns)
    if present == span_cols:
        spans = frame[list(SPAN_COLUMNS)]
        for col in ("start", "end"):
            numeric = spans[col].map(_is_residue_number)
            if not numeric.all():
                row = int(np.flatnonzero(~numeric.to_numpy())[0])
                raise InputError(f"{p}: data row {row + 1}: {col} {spans[col].iloc[row]!r} is not a residue number")
        spans = spans.assign(start=spans["start"].astype(float).astype(np.int64),
                             end=spans["end"].astype(float).astype(np.int64),
                             concept=spans["concept"].astype(str).str.strip())
        if spans["concept"].isin(["", "nan"]).any():
            raise InputError(f"{p}: a span has no concept")
        return _build(obs, sequence_ids, spans, None, source)
    if present:
        raise InputError(f"{p}: a span file needs the columns sequence_id, start, end, concept "
                         f"(missing: {', '.join(sorted(span_cols - present))})")
    columns = [c for c in frame.columns if c != "sequence_id"]
    if not columns:
        raise InputError(f"{p}: no label columns besides sequence_id")
    values = _long_values(frame, columns, multi_sep)
    return _build(obs, sequence_ids, None, values, source)


def _groups(table: pd.DataFrame) -> dict[str, str]:
    """Concept group (the text before ``=``) -> a concept of it, for the grouped concepts of a concept table."""
    return {c.split("=", 1)[0]: c for c in table["concept"].astype(str) if "=" in c}


def check_user_groups(user: ConceptLabels, others: Sequence[ConceptLabels], path: PathLike) -> None:
    """Refuse user concepts whose group (a per-sequence column, or the text before ``=`` of a span concept) is a
    concept group of another source: merged into it, they would be read as that source's labels."""
    taken: dict[str, str] = {}
    for part in others:
        for table in (part.token_concepts, part.sequence_concepts):
            source = str(table["source"].iloc[0]) if len(table) and "source" in table.columns else "another"
            taken.update({g: source for g in _groups(table) if g not in taken})
    for table, what in ((user.sequence_concepts, "column"), (user.token_concepts, "span concept group")):
        for group, concept in _groups(table).items():
            if group in taken:
                example = f"'user_{group}'" if what == "column" else f"'user_{concept}'"
                raise InputError(f"{path}: user {what} {group!r} is also a concept group of the {taken[group]} "
                                 f"source; rename it (e.g. {example}) so the two stay apart")


def user_labels(store: ActivationStore, path: PathLike, *, multi_sep: str | None = None,
                source: str = "user") -> ConceptLabels:
    """Concepts from a user CSV/TSV file (source ``"user"``); the layout is decided by the columns.

    * Residue spans: columns ``sequence_id, start, end, concept`` (1-based inclusive positions; other columns are
      ignored). Each row is one instance of token concept ``concept``.
    * Per-sequence labels: ``sequence_id`` plus any columns; each becomes sequence concepts ``"<column>=<value>"``
      (``multi_sep`` splits multi-valued cells).

    With other sources (:func:`~domains.sequence.annotations.sequence_labels`), a column or span concept group
    named like one of their concept groups is refused (:func:`check_user_groups`).
    Separator: tab for .tsv/.tab, comma for .csv, sniffed otherwise. Ids not in the store are an
    :class:`InputError` naming them, as are positions outside a sequence.
    """
    return _user_from(_obs(store), _sequence_ids(store), path, multi_sep, source)

