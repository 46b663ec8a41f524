"""Annotation specs from the command line (``workbench annotate --source ...``) for sequence stores.

Specs: ``anarci`` (IMGT numbering, regions, germlines, species), ``germline`` (somatic hypermutation against the
assigned germline), ``humanness`` (residues no human germline has), ``liability`` (developability motifs, CDR vs
FR), ``cdr`` (CDR-H3 / CDR-L1 lengths), ``motif`` (sequons, Cys, amino-acid identity),
``table:COL1,COL2`` (the store's carried table columns), ``uniprot:FILE`` (UniProt flat file or XML the store was
extracted from), ``user:FILE`` (CSV/TSV of per-sequence labels or per-residue spans), ``pfam:FILE`` (an HMM file
searched with pyhmmer), ``airr:FILE`` (the AIRR Rearrangement file the store was read from: somatic hypermutation
from its germline_alignment).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from workbench.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from workbench.concepts import ConceptLabels
    from workbench.store import ActivationStore

__all__ = ["labels_from_specs", "parse_specs"]

_PLAIN = ("anarci", "germline", "humanness", "liability", "cdr", "motif")
_WITH_ARGUMENT = ("table", "uniprot", "user", "pfam", "airr")


def parse_specs(specs: Sequence[str]) -> dict[str, Any]:
    """Keyword arguments of :func:`~domains.sequence.annotations.sequence_labels` for ``specs``."""
    sources: list[str] = []
    options: dict[str, Any] = {}
    for spec in specs:
        name, sep, argument = spec.partition(":")
        name = name.strip()
        if name in _PLAIN:
            if sep:
                raise InputError(f"annotation source {name!r} takes no argument (got {spec!r})")
        elif name in _WITH_ARGUMENT:
            if not argument.strip():
                raise InputError(f"annotation source {name!r} needs an argument: {name}:{'COL1,COL2' if name == 'table' else 'FILE'}")
            if name == "table":
                options.setdefault("table_columns", []).extend(c.strip() for c in argument.split(",") if c.strip())
            elif name in options or (name == "pfam" and "pfam_hmm" in options):
                raise InputError(f"annotation source {name!r} given twice")
            else:
                options["pfam_hmm" if name == "pfam" else name] = argument.strip()
        else:
            raise InputError(f"unknown annotation source {spec!r}; use anarci, germline, humanness, liability, cdr, motif, table:COL1,COL2, uniprot:FILE, user:FILE, pfam:FILE or airr:FILE")
        if name not in sources:
            sources.append(name)
    if not sources:
        raise InputError("no annotation source given (for example --source anarci --source motif)")
    options["sources"] = tuple(sources)
    return options


def labels_from_specs(store: ActivationStore, specs: Sequence[str]) -> ConceptLabels:
    """Concept labels for ``store`` from command-line specs (see the module docstring)."""
    from .annotations import sequence_labels

    return sequence_labels(store, **parse_specs(specs))
