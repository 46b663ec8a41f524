"""The input record of sequence models: :class:`SequenceRecord`, and :func:`as_records` for plain strings.

A record is what an adapter's ``make_batch`` / ``batches`` / ``validate`` take and what ``read`` returns: an id, the
sequence (one letter per residue) and optional per-sequence metadata copied onto every token row of a store. It
lives in the core (``workbench.SequenceRecord``) so that notebooks and the core's own helpers
(:meth:`workbench.catalog.Catalog.encode`) can build records without importing a domain;
``domains.sequence.records`` re-exports it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from workbench.errors import InputError

__all__ = ["SequenceRecord", "as_records"]


@dataclass(frozen=True)
class SequenceRecord:
    """One biological sequence to run through a model.

    ``meta`` holds per-sequence columns carried from the input (for example ``chain``); they are copied onto
    every token row of the activation store.
    """

    id: str
    sequence: str
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.sequence)


def as_records(items: Iterable[Any]) -> tuple[list[SequenceRecord], bool]:
    """``items`` as records, and whether any had to be converted.

    Each item is a :class:`SequenceRecord` (or any object with ``id`` and ``sequence``, kept as it is), a plain
    string (the sequence; its id is ``seq<i>``, ``i`` its position in ``items``) or an ``(id, sequence)`` pair.
    Anything else raises :class:`InputError`; so does a single string (it would be read as one record per letter).
    """
    if isinstance(items, (str, bytes)):
        raise InputError("pass a list of sequences (or records), not a single string: make_batch([sequence])")
    out: list[SequenceRecord] = []
    converted = False
    for i, item in enumerate(items):
        if isinstance(item, SequenceRecord) or (hasattr(item, "id") and hasattr(item, "sequence")):
            out.append(item)
            continue
        converted = True
        if isinstance(item, str):
            out.append(SequenceRecord(f"seq{i}", item))
        elif isinstance(item, tuple) and len(item) == 2 and all(isinstance(v, str) for v in item):
            out.append(SequenceRecord(item[0], item[1]))
        else:
            raise InputError(f"item #{i + 1} is a {type(item).__name__}; give SequenceRecord(id, sequence) objects, "
                             "plain sequence strings or (id, sequence) pairs")
    return out, converted
