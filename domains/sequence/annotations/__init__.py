"""Concept labels for sequence stores: one module per annotation database, combined by :func:`sequence_labels`.

Every source returns a :class:`~workbench.concepts.ConceptLabels` aligned to a store's token order. Sources and
their modules (each module's docstring names its concepts and cites its reference):

============  =====================  ==========================================================================
source        module                 concepts
============  =====================  ==========================================================================
``anarci``    :mod:`.anarci`         IMGT regions and positions, chain type, species, V / J genes (ANARCI)
``germline``  :mod:`.germline`       somatic hypermutation against the assigned germline (ANARCI's IMGT set)
``humanness`` :mod:`.germline`       residues seen at their IMGT position in no human germline
``liability`` :mod:`.liabilities`    developability liabilities (deamidation, isomerisation, ...), CDR vs FR
``cdr``       :mod:`.cdrs`           CDR lengths (CDR-H3 bins, CDR-L1 classes)
``airr``      :mod:`.airr`           somatic hypermutation from an AIRR file's ``germline_alignment``
``table``     :mod:`.tables`         the store's carried table columns
``user``      :mod:`.tables`         a user CSV/TSV of spans or per-sequence labels
``uniprot``   :mod:`.uniprot`        UniProtKB feature tables, GO and Pfam cross-references
``pfam``      :mod:`.pfam`           Pfam (or any HMMER3) profile hits, with pyhmmer
``motif``     :mod:`.motifs`         N-glycosylation sequons, Cys, amino-acid identity
============  =====================  ==========================================================================

The antibody sources that need IMGT numbering (``anarci``, ``germline``, ``humanness``, ``liability``, ``cdr``)
share one ANARCI run per call. Counters of what a source skipped (unnumbered sequences, germlines not assigned,
fuzzy UniProt positions...) are written into ``labels.token_concepts.attrs`` under keys prefixed with the
source name, and logged. Where a source cannot decide (a chain without an assigned germline, an unnumbered
chain), its concepts are *unlabelled* there, not negative (:attr:`~workbench.concepts.ConceptLabels.scopes`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from workbench.concepts import ConceptLabels, concat_labels
from workbench.errors import InputError

from ._common import PathLike, _obs, _sequence_ids, _sequences_from_obs, store_sequences
from .anarci import (
    ANARCI_ATTRIBUTES,
    ANARCI_DEFAULTS,
    ANARCI_SPECIES,
    IMGT_ANCHORS,
    IMGT_REGIONS,
    Numbering,
    anarci_labels,
    anarci_numbering,
    imgt_region,
    labels_from_numbering,
    number_sequences,
)
from .cdrs import cdr_labels
from .germline import germline_labels, humanness_labels
from .liabilities import LIABILITY_MOTIFS, liability_labels
from .motifs import motif_labels
from .tables import table_labels, user_labels
from .uniprot import UNIPROT_FEATURE_KEYS, UNIPROT_XML_FEATURE_TYPES, uniprot_labels

if TYPE_CHECKING:  # pragma: no cover
    from workbench.store import ActivationStore

__all__ = [
    "store_sequences",
    "anarci_numbering",
    "number_sequences",
    "Numbering",
    "anarci_labels",
    "germline_labels",
    "humanness_labels",
    "liability_labels",
    "cdr_labels",
    "airr_labels",
    "table_labels",
    "user_labels",
    "uniprot_labels",
    "motif_labels",
    "sequence_labels",
    "imgt_region",
    "ANARCI_SPECIES",
    "IMGT_REGIONS",
    "IMGT_ANCHORS",
    "LIABILITY_MOTIFS",
    "UNIPROT_FEATURE_KEYS",
    "UNIPROT_XML_FEATURE_TYPES",
    "SOURCES",
    "NUMBERING_SOURCES",
]

#: Source names :func:`sequence_labels` accepts.
SOURCES: tuple[str, ...] = ("anarci", "germline", "humanness", "liability", "cdr", "airr", "table", "motif", "uniprot",
                            "user", "pfam")
#: Sources that rest on ANARCI's IMGT numbering (one ANARCI run serves them all).
NUMBERING_SOURCES: tuple[str, ...] = ("anarci", "germline", "humanness", "liability", "cdr")


def airr_labels(store: ActivationStore, path: PathLike) -> ConceptLabels:
    """Somatic hypermutation from the AIRR Rearrangement file the store was read from (see :mod:`.airr`)."""
    from .airr import airr_labels as _airr_labels

    return _airr_labels(store, path)


def sequence_labels(
    store: ActivationStore,
    *,
    sources: Sequence[str] = ("anarci", "table", "motif"),
    table_columns: Sequence[str] = (),
    uniprot: PathLike | None = None,
    user: PathLike | None = None,
    airr: PathLike | None = None,
    min_count: int = 5,
    anarci_options: Mapping[str, Any] | None = None,
    germline_options: Mapping[str, Any] | None = None,
    pfam_hmm: PathLike | None = None,
) -> ConceptLabels:
    """Run the requested annotation sources on ``store`` and combine their labels (:func:`concat_labels`).

    ``sources`` are names from :data:`SOURCES`. ``"table"`` uses ``table_columns`` (nothing when empty);
    ``"uniprot"``, ``"user"``, ``"airr"`` and ``"pfam"`` need their file (``uniprot`` / ``user`` / ``airr`` /
    ``pfam_hmm``, a HMMER3 profile file for :func:`.pfam.pfam_labels`), and giving the file adds the source. A
    table column named like an ANARCI attribute (``v_family``, ``species``...) is named ``table:<column>`` when
    both sources run, so the two can be compared; a ``user`` column (or span concept group) named like a concept
    group of another source (``region``, ``v_family``...) is refused with an :class:`InputError` naming it
    (:func:`.tables.check_user_groups`). ``anarci_options`` go to :func:`number_sequences` (one run for every source
    in :data:`NUMBERING_SOURCES`); ``germline_options`` to :func:`germline_labels`. The sources' counters are merged
    in ``token_concepts.attrs``.
    """
    wanted = list(dict.fromkeys([sources] if isinstance(sources, str) else sources))
    for source, given in (("uniprot", uniprot), ("user", user), ("airr", airr), ("pfam", pfam_hmm)):
        if given is not None and source not in wanted:
            wanted.append(source)
    unknown = [s for s in wanted if s not in SOURCES]
    if unknown:
        raise InputError(f"unknown annotation source(s) {unknown}; use some of {', '.join(SOURCES)}")
    for source, given, what in (("uniprot", uniprot, "the UniProt file the store was extracted from"),
                                ("user", user, "a labels file"), ("airr", airr, "the AIRR file the store was read from"),
                                ("pfam", pfam_hmm, "a HMMER3 profile file (pfam_hmm)")):
        if source in wanted and given is None:
            raise InputError(f"the {source} source needs {what}")
    obs = _obs(store)
    ids = _sequence_ids(store)
    numbering: Numbering | None = None
    if any(s in NUMBERING_SOURCES for s in wanted):
        numbering = number_sequences(_sequences_from_obs(obs), **{**ANARCI_DEFAULTS, **dict(anarci_options or {})})
    parts: list[ConceptLabels] = []
    user_part: ConceptLabels | None = None
    for source in wanted:
        if source == "anarci":
            parts.append(labels_from_numbering(obs, ids, numbering))  # type: ignore[arg-type]
        elif source == "germline":
            from .germline import _germline_from

            parts.append(_germline_from(obs, ids, numbering, store.sequences, **dict(germline_options or {})))  # type: ignore[arg-type]
        elif source == "humanness":
            from .germline import _humanness_from

            parts.append(_humanness_from(obs, ids, numbering))  # type: ignore[arg-type]
        elif source == "liability":
            from .liabilities import _liability_from

            parts.append(_liability_from(obs, ids, numbering))
        elif source == "cdr":
            from .cdrs import _cdr_from

            parts.append(_cdr_from(obs, ids, numbering))  # type: ignore[arg-type]
        elif source == "airr":
            from .airr import _airr_from

            parts.append(_airr_from(obs, ids, airr))  # type: ignore[arg-type]
        elif source == "table":
            if table_columns:
                from .tables import _table_from

                columns = [table_columns] if isinstance(table_columns, str) else list(table_columns)
                rename = {c: f"table:{c}" for c in columns if c in ANARCI_ATTRIBUTES and "anarci" in wanted}
                parts.append(_table_from(obs, store.sequences, columns, ";", rename))
        elif source == "motif":
            from .motifs import _motif_from

            parts.append(_motif_from(obs, ids))
        elif source == "uniprot":
            from .uniprot import _uniprot_from

            parts.append(_uniprot_from(obs, ids, uniprot, min_count, None))  # type: ignore[arg-type]
        elif source == "pfam":
            from .pfam import _pfam_from

            parts.append(_pfam_from(obs, ids, pfam_hmm))  # type: ignore[arg-type]
        else:
            from .tables import _user_from

            user_part = _user_from(obs, ids, user, None, "user")  # type: ignore[arg-type]
            parts.append(user_part)
    if not parts:
        raise InputError("no annotation source produced labels (give table_columns for the table source)")
    if user_part is not None:
        from .tables import check_user_groups

        check_user_groups(user_part, [p for p in parts if p is not user_part], user)  # type: ignore[arg-type]
    combined = concat_labels(parts)
    attrs: dict[str, Any] = {}
    for part in parts:
        attrs.update(part.token_concepts.attrs)
    combined.token_concepts.attrs = attrs
    return combined
