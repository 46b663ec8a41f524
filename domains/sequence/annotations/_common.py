"""Helpers every sequence annotation source shares: the store's tokens, span tables, and ``_build``.

Every source returns a :class:`~workbench.concepts.ConceptLabels` aligned to a store's token order, built with
:func:`~workbench.concepts.labels_from_spans` (residue spans, 1-based inclusive) and its sequence-level
``"<attribute>=<value>"`` concepts.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench.concepts import ConceptLabels, labels_from_spans
from workbench.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from workbench.store import ActivationStore

__all__ = ["store_sequences"]

PathLike = str | os.PathLike[str]

STANDARD_AA = "ACDEFGHIKLMNPQRSTVWY"
SPAN_COLUMNS = ("sequence_id", "start", "end", "concept")


def _empty_spans() -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame({"sequence_id": pd.Series(dtype=str), "start": pd.Series(dtype=np.int64),
                         "end": pd.Series(dtype=np.int64), "concept": pd.Series(dtype=str)})


def _obs(store: ActivationStore) -> pd.DataFrame:
    """The store's token table with just what labels need (``sequence_id``, ``position``, ``residue``)."""
    return store.obs(["sequence_id", "position", "residue"])


def _sequence_ids(store: ActivationStore) -> list[str]:
    return [str(s) for s in store.sequences["sequence_id"]]


def _sequences_from_obs(obs: pd.DataFrame) -> dict[str, str]:
    ids = obs["sequence_id"].astype(str).to_numpy()
    residues = obs["residue"].astype(str).to_numpy()
    change = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if len(ids) else np.zeros(0, dtype=int)
    ends = np.r_[change[1:], len(ids)]
    out: dict[str, str] = {}
    for s, e in zip(change, ends):
        if ids[s] in out:
            raise InputError(f"store tokens of sequence {ids[s]!r} are not contiguous")
        out[str(ids[s])] = "".join(residues[s:e])
    return out


def _build(obs: pd.DataFrame, sequence_ids: Sequence[str], spans: pd.DataFrame | None,
           values: pd.DataFrame | None, source: str, counts: Mapping[str, Any] | None = None) -> ConceptLabels:
    """labels_from_spans with the store's sequence order, and the source's counters in ``token_concepts.attrs``."""
    labels = labels_from_spans(obs, spans if spans is not None else _empty_spans(), sequence_ids=sequence_ids,
                               sequence_values=values, source=source)
    if counts:
        labels.token_concepts.attrs.update(counts)
    return labels


def _format_value(value: object) -> str | None:
    """A table cell as concept text: None for missing/blank, integral floats without '.0'."""
    if value is None:
        return None
    if isinstance(value, float):
        if value != value:  # NaN
            return None
        if value.is_integer():
            return str(int(value))
    text = str(value).strip()
    return text or None


def _long_values(frame: pd.DataFrame, columns: Sequence[str], multi_sep: str | None,
                 rename: Mapping[str, str] | None = None) -> pd.DataFrame:
    """``sequence_id`` + one column per attribute, one row per (sequence, attribute, value), values as text."""
    import pandas as pd

    rename = rename or {}
    parts = []
    for column in columns:
        rows: list[tuple[str, str]] = []
        for sid, raw in zip(frame["sequence_id"].astype(str), frame[column]):
            text = _format_value(raw)
            if text is None:
                continue
            values = [v.strip() for v in text.split(multi_sep)] if multi_sep else [text]
            rows.extend((sid, v) for v in dict.fromkeys(values) if v)
        name = rename.get(column, column)
        parts.append(pd.DataFrame(rows, columns=["sequence_id", name]).drop_duplicates())
    if not parts:
        return pd.DataFrame({"sequence_id": pd.Series(dtype=str)})
    return pd.concat(parts, ignore_index=True)


def _check_ids(ids: Iterable[str], known: Iterable[str], what: str) -> None:
    known_set = set(known)
    unknown = list(dict.fromkeys(i for i in ids if i not in known_set))
    if unknown:
        shown = ", ".join(map(repr, unknown[:5])) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise InputError(f"{what}: {len(unknown)} sequence id(s) not in the store: {shown}")


def _runs(frame: pd.DataFrame, value: str, group: Sequence[str] = ("sequence_id",)) -> pd.DataFrame:
    """Merge per-residue rows (sorted by group, then position) into spans of one ``value`` at consecutive positions."""
    import pandas as pd

    if frame.empty:
        return pd.DataFrame({"sequence_id": pd.Series(dtype=str), "start": pd.Series(dtype=np.int64),
                             "end": pd.Series(dtype=np.int64), value: pd.Series(dtype=object)})
    pos = frame["position"].to_numpy(dtype=np.int64)
    new = np.r_[True, pos[1:] != pos[:-1] + 1]
    for col in (*group, value):
        v = frame[col].to_numpy()
        new |= np.r_[True, v[1:] != v[:-1]]
    starts = np.flatnonzero(new)
    ends = np.r_[starts[1:], len(frame)] - 1
    return pd.DataFrame({
        "sequence_id": frame["sequence_id"].to_numpy()[starts],
        "start": pos[starts], "end": pos[ends], value: frame[value].to_numpy()[starts],
    })


# --------------------------------------------------------------------------------------------------- store


def store_sequences(store: ActivationStore) -> dict[str, str]:
    """Sequences rebuilt from the store's ``residue`` column: ``{sequence_id: sequence}`` in store order."""
    return _sequences_from_obs(_obs(store))


def _token_mask(obs: pd.DataFrame, residues: pd.DataFrame) -> np.ndarray:
    """Boolean token mask of ``residues`` (``sequence_id``, 1-based ``position``) in the store's token order."""
    ids = obs["sequence_id"].astype(str).to_numpy()
    change = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if len(ids) else np.zeros(0, dtype=np.int64)
    first = dict(zip(ids[change], change))
    mask = np.zeros(len(obs), dtype=bool)
    if len(residues):
        rows = np.array([first[s] for s in residues["sequence_id"].astype(str)], dtype=np.int64)
        mask[rows + residues["position"].to_numpy(dtype=np.int64) - 1] = True
    return mask


def residue_spans(frame: pd.DataFrame, concept: pd.Series | str) -> pd.DataFrame:
    """One-residue spans (``sequence_id, start, end, concept``) of the rows of ``frame`` (``sequence_id``,
    1-based ``position``)."""
    return frame.assign(start=frame["position"], end=frame["position"], concept=concept)[list(SPAN_COLUMNS)]
