"""Sequence records and their validation against a model's alphabet and length limit.

:class:`SequenceRecord` is the core's (:mod:`workbench.records`, ``workbench.SequenceRecord``), re-exported here.
"""

from __future__ import annotations

from collections.abc import Iterable

from workbench.errors import InputError
from workbench.records import SequenceRecord

__all__ = ["SequenceRecord", "validate_records"]


def validate_records(
    records: Iterable[SequenceRecord],
    *,
    alphabet: str | frozenset[str],
    max_length: int | None = None,
    truncate: bool = False,
    source: str = "input",
) -> list[SequenceRecord]:
    """Check records and return them as a list.

    Raises :class:`~workbench.errors.InputError` naming the first offending record for an empty input, an
    empty sequence, a duplicate id, a residue outside ``alphabet`` or a sequence longer than ``max_length``
    (unless ``truncate`` is set, in which case the sequence is cut to ``max_length`` and ``meta['truncated_from']``
    records the original length).
    """
    allowed = frozenset(alphabet)
    out: list[SequenceRecord] = []
    seen: set[str] = set()
    for rec in records:
        if not rec.id:
            raise InputError(f"{source}: record #{len(out) + 1} has an empty id")
        if rec.id in seen:
            raise InputError(f"{source}: duplicate id {rec.id!r}")
        seen.add(rec.id)
        if not rec.sequence:
            raise InputError(f"{source}: record {rec.id!r} has an empty sequence")
        bad = next((i for i, c in enumerate(rec.sequence) if c not in allowed), None)
        if bad is not None:
            raise InputError(
                f"{source}: record {rec.id!r} has invalid residue {rec.sequence[bad]!r} at position {bad + 1}"
                f" (allowed: {''.join(sorted(allowed))})"
            )
        if max_length is not None and len(rec.sequence) > max_length:
            if not truncate:
                raise InputError(
                    f"{source}: record {rec.id!r} has {len(rec.sequence)} residues, over the model's maximum of"
                    f" {max_length} (use --truncate to cut it)"
                )
            rec = SequenceRecord(rec.id, rec.sequence[:max_length], {**rec.meta, "truncated_from": len(rec.sequence)})
        out.append(rec)
    if not out:
        raise InputError(f"{source}: no sequences found")
    return out
