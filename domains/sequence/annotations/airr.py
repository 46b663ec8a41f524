"""Somatic hypermutation read off an AIRR Rearrangement file's own alignment (source ``"airr"``), without ANARCI.

An AIRR Rearrangement file (the AIRR Community's standard for annotated immune-receptor sequences: Vander Heiden
et al. 2018, "AIRR Community Standardized Representations for Annotated Immune Repertoires", Front. Immunol.
9:2206) holds, per rearrangement, ``sequence_alignment`` (the read, aligned from the start of the V region, with
IMGT numbering gaps ``.``) and ``germline_alignment`` (the inferred germline V(D)J sequence, the same length and
gapped the same way) as written by the aligner that annotated it (IgBLAST, IMGT/HighV-QUEST, MiXCR...). Comparing
the two codon by codon says which residues somatic hypermutation changed, by the aligner's own germline call,
with no IMGT numbering of the protein and no germline set of our own. It complements the ANARCI-based
``germline`` source (:mod:`.germline`), whose germline is ANARCI's closest amino-acid V / J gene.

The walk: both alignments are cut into triplets from their first nucleotide. A triplet that is all gaps in the
sequence is skipped (an IMGT gap or a deletion: no residue); a triplet of nucleotides is residue ``k`` of the
translated sequence (``k`` counts up; the translation is the one :func:`~domains.sequence.readers.read_airr`
makes, so a store extracted from the same file has the same residues). Residue ``k`` is *compared* when both
triplets are plain A/C/G/T and the germline triplet is not a stop codon; otherwise (a germline gap, an ``N`` of
the junction's N/P additions, an ambiguous base) it is unlabelled. A triplet that is only partly gapped breaks the
frame: labelling of that sequence stops there (what came before is kept) and the sequence is counted.

Concepts (per residue, in the scope ``airr:compared``, the residues that were compared):

* ``shm_airr=mutated``: the residue's codon translates to another amino acid than the germline codon (silent
  mutations are not counted);
* ``germline_airr=conserved``: same amino acid as the germline;
* ``germline_residue_airr=<aa>``: for a mutated residue, the germline amino acid it replaced.

Measures (per sequence, store order): ``shm_airr_count`` (mutated residues) and ``shm_airr_fraction`` (mutated /
compared), NaN where nothing was compared. Rows are matched to the store by ``sequence_id``; the translated
residues must equal the store's residues (a store truncated to the model's length may be shorter), else the
sequence is skipped. Counters in ``token_concepts.attrs``: ``airr_sequences_matched``, ``airr_not_in_file``,
``airr_no_germline``, ``airr_length_mismatches``, ``airr_frame_breaks``, ``airr_residue_mismatches``,
``airr_compared_sequences``, ``airr_compared_residues``, ``airr_mutated_residues``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple


from workbench.concepts import ConceptLabels, scope_labels
from workbench.errors import InputError

from ._common import (
    PathLike,
    _build,
    _empty_spans,
    _obs,
    _sequence_ids,
    _sequences_from_obs,
    _token_mask,
    residue_spans,
)

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from workbench.store import ActivationStore

__all__ = ["airr_labels", "residue_germline_labels", "airr_walk", "AirrWalk", "AIRR_SCOPE", "AIRR_COUNTERS"]

log = logging.getLogger(__name__)

#: Name of the token scope: the residues compared with their germline codon.
AIRR_SCOPE = "airr:compared"
#: The counters the source writes into ``token_concepts.attrs``, and what each counts.
AIRR_COUNTERS: dict[str, str] = {
    "airr_sequences_matched": "store sequences with a row of the same sequence_id in the file",
    "airr_not_in_file": "store sequences the file has no row for",
    "airr_no_germline": "matched rows with an empty germline_alignment",
    "airr_length_mismatches": "matched rows whose sequence_alignment and germline_alignment differ in length",
    "airr_frame_breaks": "sequences whose walk stopped at a partly gapped codon",
    "airr_residue_mismatches": "sequences skipped because the translated alignment is not the store's sequence",
    "airr_compared_sequences": "sequences with at least one compared residue",
    "airr_compared_residues": "residues compared with their germline codon",
    "airr_mutated_residues": "compared residues whose amino acid differs from the germline's",
}
_GAPS = frozenset(".-")
_BASES = frozenset("ACGT")


class AirrWalk(NamedTuple):
    """One rearrangement's codon walk (see the module docstring)."""

    residues: str
    """The translated residues, in order (up to a frame break)."""
    compared: list[tuple[int, str]]
    """``(residue position, 1-based; germline amino acid)`` of every compared residue."""
    frame_break: bool
    """True when a partly gapped triplet stopped the walk."""


def _codon_table() -> dict[str, str]:
    from Bio.Data.CodonTable import standard_dna_table

    return dict(standard_dna_table.forward_table)  # stop codons are absent


def airr_walk(sequence_alignment: str, germline_alignment: str) -> AirrWalk:
    """Walk an IMGT-gapped ``sequence_alignment`` against its ``germline_alignment`` codon by codon."""
    from domains.sequence.readers import _translate

    seq = "".join(str(sequence_alignment).split()).upper()
    germ = "".join(str(germline_alignment).split()).upper()
    table = _codon_table()
    codons: list[str] = []
    compared: list[tuple[int, str]] = []
    frame_break = False
    for i in range(0, len(seq) - len(seq) % 3, 3):
        s3, g3 = seq[i:i + 3], germ[i:i + 3]
        gaps = sum(c in _GAPS for c in s3)
        if gaps == 3:
            continue
        if gaps:
            frame_break = True
            break
        codons.append(s3)
        if len(g3) == 3 and set(s3) <= _BASES and set(g3) <= _BASES and g3 in table:
            compared.append((len(codons), table[g3]))
    residues = _translate("".join(codons)) if codons else ""
    return AirrWalk(residues or "", compared, frame_break)


def _alignments(path: Path, wanted: set[str]) -> dict[str, tuple[str, str]]:
    """``{sequence_id: (sequence_alignment, germline_alignment)}`` of the file's rows whose id is in ``wanted``."""
    from domains.sequence.readers import _airr_rows, _existing_file, _text

    p = _existing_file(path)
    out: dict[str, tuple[str, str]] = {}
    for number, row in _airr_rows(p):
        sid = _text(row.get("sequence_id"))
        if sid not in wanted:
            continue
        if sid in out:
            raise InputError(f"{p}: duplicate sequence_id {sid!r} (data row {number})")
        out[sid] = (_text(row.get("sequence_alignment")), _text(row.get("germline_alignment")))
    return out


def residue_germline_labels(path: PathLike, sequences: Mapping[str, str]) -> pd.DataFrame:
    """Per compared residue of ``sequences`` (``{sequence_id: protein}``, e.g. a store's or a reader's records):
    ``sequence_id``, ``position`` (1-based), ``germline`` (the germline codon's amino acid) and ``mutated``, from
    the AIRR file ``path``; the ``airr_*`` counters of what was skipped are in the frame's ``attrs``."""
    import pandas as pd

    rows = _alignments(Path(path), set(sequences))
    counts = dict.fromkeys(AIRR_COUNTERS, 0)
    records: list[tuple[str, int, str, bool]] = []  # (sequence_id, position, germline aa, mutated)
    for sid, store in sequences.items():
        if sid not in rows:
            counts["airr_not_in_file"] += 1
            continue
        counts["airr_sequences_matched"] += 1
        seq_aln, germ_aln = rows[sid]
        if not germ_aln.strip(".-"):
            counts["airr_no_germline"] += 1
            continue
        if len(seq_aln) != len(germ_aln):
            counts["airr_length_mismatches"] += 1
            continue
        walk = airr_walk(seq_aln, germ_aln)
        counts["airr_frame_breaks"] += int(walk.frame_break)
        n = min(len(walk.residues), len(store))
        if walk.residues[:n] != store[:n] or (len(walk.residues) < len(store) and not walk.frame_break):
            counts["airr_residue_mismatches"] += 1
            continue
        kept = [(k, g) for k, g in walk.compared if k <= len(store)]
        records.extend((sid, k, g, walk.residues[k - 1] != g) for k, g in kept)
        counts["airr_compared_sequences"] += int(bool(kept))
    compared = pd.DataFrame(records, columns=["sequence_id", "position", "germline", "mutated"])
    counts["airr_compared_residues"] = int(len(compared))
    counts["airr_mutated_residues"] = int(compared["mutated"].sum())
    compared.attrs.update(counts)
    return compared


def _airr_from(obs: pd.DataFrame, sequence_ids: Sequence[str], path: PathLike) -> ConceptLabels:
    import pandas as pd

    store_seqs = _sequences_from_obs(obs)
    compared = residue_germline_labels(path, {sid: store_seqs.get(sid, "") for sid in sequence_ids})
    counts = dict(compared.attrs)
    mutated = compared[compared["mutated"]]

    span_table = pd.concat([
        residue_spans(mutated, "shm_airr=mutated"),
        residue_spans(compared[~compared["mutated"]], "germline_airr=conserved"),
        residue_spans(mutated, "germline_residue_airr=" + mutated["germline"].astype(str)),
    ], ignore_index=True) if len(compared) else _empty_spans()
    per_sequence = compared.groupby("sequence_id", sort=False)["mutated"].agg(["sum", "size"])
    per_sequence = per_sequence.reindex(pd.Index(list(sequence_ids)))
    measures = pd.DataFrame({
        "shm_airr_count": per_sequence["sum"].to_numpy(dtype=float),
        "shm_airr_fraction": (per_sequence["sum"] / per_sequence["size"]).to_numpy(dtype=float),
    })
    skipped = {k: v for k, v in counts.items()
               if v and k in ("airr_not_in_file", "airr_no_germline", "airr_length_mismatches", "airr_frame_breaks",
                              "airr_residue_mismatches")}
    if skipped:
        log.info("airr: %s", ", ".join(f"{k.removeprefix('airr_').replace('_', ' ')}: {v}" for k, v in skipped.items()))
    labels = _build(obs, list(sequence_ids), span_table, None, "airr", counts)
    labels.measures = measures
    mask = _token_mask(obs, compared)
    return scope_labels(labels, tokens=mask, name=AIRR_SCOPE, token_concepts=labels.token_concepts["concept"].tolist())


def airr_labels(store: ActivationStore, path: PathLike) -> ConceptLabels:
    """Somatic-hypermutation concepts of the store's sequences from the AIRR Rearrangement file ``path``.

    ``path`` is the file the store was read from (:func:`~domains.sequence.readers.read_airr`), or any AIRR file
    whose ``sequence_id`` values name store sequences; see the module docstring for the concepts, the scope
    ``airr:compared``, the measures ``shm_airr_count`` / ``shm_airr_fraction`` and the ``airr_*`` counters in
    ``token_concepts.attrs``. Store sequences absent from the file, rows absent from the store, frame breaks and
    residue mismatches never raise: they are counted and left unlabelled.
    """
    return _airr_from(_obs(store), _sequence_ids(store), path)

