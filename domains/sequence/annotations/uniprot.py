"""UniProtKB feature tables as concepts (source ``"uniprot"``): per residue, plus GO and Pfam per sequence.

``uniprot:<KEY>`` per feature (``uniprot:HELIX``, ``uniprot:DISULFID``...), ``uniprot:<KEY>:<note>`` for frequent
notes (``uniprot:DOMAIN:Protein kinase``), ``go=GO:0005524``, ``pfam=PF00069``. Entries are parsed by Biopython
(UniProt Consortium, Nucleic Acids Res. 2023, 51:D523; the flat-file user manual defines the keys).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench.concepts import ConceptLabels
from workbench.errors import InputError

from ._common import SPAN_COLUMNS, PathLike, _build, _obs, _sequence_ids, _sequences_from_obs

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from workbench.store import ActivationStore

__all__ = ["uniprot_labels", "UNIPROT_FEATURE_KEYS", "UNIPROT_XML_FEATURE_TYPES"]

log = logging.getLogger(__name__)

#: Feature keys of the UniProtKB/Swiss-Prot flat file (user manual, FT line), including retired keys still
#: found in older files: METAL, NP_BIND and CA_BIND (merged into BINDING in 2022), VARSPLIC (now VAR_SEQ),
#: THIOETH / THIOLEST (now CROSSLNK), SE_CYS (now NON_STD) and SIMILAR.
UNIPROT_FEATURE_KEYS: frozenset[str] = frozenset({
    # molecule processing
    "INIT_MET", "SIGNAL", "TRANSIT", "PROPEP", "CHAIN", "PEPTIDE",
    # regions
    "TOPO_DOM", "TRANSMEM", "INTRAMEM", "DOMAIN", "REPEAT", "ZN_FING", "DNA_BIND", "REGION", "COILED", "MOTIF",
    "COMPBIAS",
    # sites
    "ACT_SITE", "BINDING", "SITE",
    # amino-acid modifications
    "NON_STD", "MOD_RES", "LIPID", "CARBOHYD", "DISULFID", "CROSSLNK",
    # natural variations, experimental info
    "VAR_SEQ", "VARIANT", "MUTAGEN", "UNSURE", "CONFLICT", "NON_CONS", "NON_TER",
    # secondary structure
    "HELIX", "STRAND", "TURN",
    # retired keys
    "METAL", "NP_BIND", "CA_BIND", "VARSPLIC", "THIOETH", "THIOLEST", "SE_CYS", "SIMILAR",
})

#: UniProt XML feature ``type`` -> flat-file key, so both formats give the same concept names.
UNIPROT_XML_FEATURE_TYPES: Mapping[str, str] = {
    "initiator methionine": "INIT_MET",
    "signal peptide": "SIGNAL",
    "transit peptide": "TRANSIT",
    "propeptide": "PROPEP",
    "chain": "CHAIN",
    "peptide": "PEPTIDE",
    "topological domain": "TOPO_DOM",
    "transmembrane region": "TRANSMEM",
    "intramembrane region": "INTRAMEM",
    "domain": "DOMAIN",
    "repeat": "REPEAT",
    "zinc finger region": "ZN_FING",
    "DNA-binding region": "DNA_BIND",
    "region of interest": "REGION",
    "coiled-coil region": "COILED",
    "short sequence motif": "MOTIF",
    "compositionally biased region": "COMPBIAS",
    "active site": "ACT_SITE",
    "binding site": "BINDING",
    "site": "SITE",
    "non-standard amino acid": "NON_STD",
    "modified residue": "MOD_RES",
    "lipid moiety-binding region": "LIPID",
    "glycosylation site": "CARBOHYD",
    "disulfide bond": "DISULFID",
    "cross-link": "CROSSLNK",
    "splice variant": "VAR_SEQ",
    "sequence variant": "VARIANT",
    "mutagenesis site": "MUTAGEN",
    "unsure residue": "UNSURE",
    "sequence conflict": "CONFLICT",
    "non-consecutive residues": "NON_CONS",
    "non-terminal residue": "NON_TER",
    "helix": "HELIX",
    "strand": "STRAND",
    "turn": "TURN",
    # retired types still found in older XML files
    "metal ion-binding site": "METAL",
    "nucleotide phosphate-binding region": "NP_BIND",
    "calcium-binding region": "CA_BIND",
}
# Feature keys whose notes describe one sequence change each ("V -> I (in dbSNP...)"): no note sub-concepts.
_NO_NOTE_KEYS = frozenset({"VARIANT", "VAR_SEQ", "VARSPLIC", "CONFLICT", "MUTAGEN", "UNSURE", "NON_CONS", "NON_TER"})
_EVIDENCE_NOTES = frozenset({"by similarity", "potential", "probable"})


def _uniprot_format(path: Path) -> str:
    with path.open("rb") as fh:
        head = fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return "uniprot-xml" if head.startswith(b"<") else "swiss"


def _note_concept(note: str) -> str:
    """A feature note reduced to a label features can share: the first ';' part, without evidence tags, a final
    '.' or a trailing number.

    ``"Protein kinase."`` -> ``"Protein kinase"``; ``"ATP 1 (By similarity)."`` -> ``"ATP"``;
    ``"Helical; Name=1; (By similarity)."`` -> ``"Helical"``; ``"By similarity."`` and ``"2"`` -> ``""`` (none).
    """
    text = re.sub(r"\{ECO:[^}]*\}", "", note).split(";")[0]
    text = re.sub(r"\s*\((?:By similarity|Potential|Probable|Ref\.\s*\d+)\)\s*", " ", text, flags=re.I)
    text = re.sub(r"\s+\d+$", "", " ".join(text.split()).rstrip(". "))
    # Nothing left to share between features: bare evidence ("By similarity.") or a bare number ("1").
    return "" if text.isdigit() or text.lower() in _EVIDENCE_NOTES else text


def _iter_uniprot(path: Path, fmt: str) -> Iterable[tuple[str, str, list[tuple[str, Any, str]], list[str], list[str]]]:
    """``(accession, sequence, [(key, location, note)], GO ids, Pfam ids)`` per entry, parsed by Biopython."""
    if fmt == "swiss":
        from Bio import SwissProt

        with path.open(encoding="utf-8") as fh:
            for entry in SwissProt.parse(fh):
                if not entry.accessions:
                    raise InputError(f"{path}: entry {entry.entry_name!r} has no accession")
                acc = entry.accessions[0]
                feats = []
                for f in entry.features:
                    if f.type not in UNIPROT_FEATURE_KEYS:
                        raise InputError(f"{path}: entry {acc}: unknown UniProt feature key {f.type!r}")
                    note = f.qualifiers.get("note") or f.qualifiers.get("description") or ""
                    feats.append((f.type, f.location, str(note)))
                go = [x[1] for x in entry.cross_references if x[0] == "GO" and len(x) > 1]
                pfam = [x[1] for x in entry.cross_references if x[0] == "Pfam" and len(x) > 1]
                yield acc, re.sub(r"\s+", "", entry.sequence).upper(), feats, go, pfam
    else:
        from Bio import SeqIO

        for rec in SeqIO.parse(path, "uniprot-xml"):
            feats = []
            for f in rec.features:
                key = UNIPROT_XML_FEATURE_TYPES.get(f.type)
                if key is None:
                    raise InputError(f"{path}: entry {rec.id}: unknown UniProt feature type {f.type!r}")
                feats.append((key, f.location, str(f.qualifiers.get("description") or "")))
            go = [x.split(":", 1)[1] for x in rec.dbxrefs if x.startswith("GO:")]
            pfam = [x.split(":", 1)[1] for x in rec.dbxrefs if x.startswith("Pfam:")]
            yield rec.id, str(rec.seq).upper(), feats, go, pfam


def _uniprot_from(obs: pd.DataFrame, sequence_ids: Sequence[str], path: PathLike, min_count: int,
                  format: str | None) -> ConceptLabels:
    import pandas as pd
    from Bio.SeqFeature import ExactPosition

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such file")
    fmt = format or _uniprot_format(p)
    if fmt not in ("swiss", "uniprot-xml"):
        raise InputError(f"{p}: unknown UniProt format {fmt!r} (use swiss or uniprot-xml)")
    stored = _sequences_from_obs(obs)
    counts = Counter({"uniprot_features": 0, "uniprot_skipped_fuzzy": 0, "uniprot_clipped": 0,
                      "uniprot_dropped_truncated": 0, "uniprot_entries_matched": 0})
    # One row per labelled residue range: the feature it comes from gives its instance.
    rows: list[tuple[str, int, int, str, str, int]] = []
    go_rows: list[tuple[str, str]] = []
    pfam_rows: list[tuple[str, str]] = []
    feature_no = 0
    seen: set[str] = set()
    try:
        entries = list(_iter_uniprot(p, fmt))
    except InputError:
        raise
    except (ValueError, AssertionError, SyntaxError, KeyError, IndexError, AttributeError) as exc:
        raise InputError(f"{p}: malformed UniProt file ({' '.join(str(exc).split())[:200]})") from exc
    for acc, full, feats, go, pfam in entries:
        if acc not in stored or acc in seen:
            continue
        seen.add(acc)
        counts["uniprot_entries_matched"] += 1
        seq = stored[acc]
        if not full.startswith(seq):
            raise InputError(f"{p}: entry {acc}'s sequence differs from the store's sequence {acc!r}")
        length = len(seq)
        truncated = length < len(full)
        go_rows.extend((acc, g) for g in dict.fromkeys(go))
        pfam_rows.extend((acc, x) for x in dict.fromkeys(pfam))
        for key, loc, note in feats:
            counts["uniprot_features"] += 1
            if loc is None or not (isinstance(loc.start, ExactPosition) and isinstance(loc.end, ExactPosition)):
                counts["uniprot_skipped_fuzzy"] += 1
                continue
            start, end = int(loc.start) + 1, int(loc.end)
            if key == "DISULFID" and end > start:
                pieces = [(start, start), (end, end)]  # the two bonded cysteines, one instance
            else:
                pieces = [(start, end)]
            if truncated:
                kept = [(s, min(e, length)) for s, e in pieces if s <= length]
                if not kept:
                    counts["uniprot_dropped_truncated"] += 1
                    continue
                if kept != pieces:
                    counts["uniprot_clipped"] += 1
                pieces = kept
            feature_no += 1
            label = _note_concept(note) if key not in _NO_NOTE_KEYS else ""
            for s, e in pieces:
                rows.append((acc, s, e, key, label, feature_no))
    frame = pd.DataFrame(rows, columns=["sequence_id", "start", "end", "key", "note", "feature"])
    frame["concept"] = "uniprot:" + frame["key"]
    if len(frame):
        per_feature = frame.drop_duplicates("feature")
        note_counts = Counter(zip(per_feature["key"], per_feature["note"]))
        frequent = frame[[bool(n) and note_counts[(k, n)] >= min_count for k, n in zip(frame["key"], frame["note"])]]
        frame = pd.concat([frame, frequent.assign(concept="uniprot:" + frequent["key"] + ":" + frequent["note"])],
                          ignore_index=True)
    values = pd.concat([pd.DataFrame(go_rows, columns=["sequence_id", "go"]),
                        pd.DataFrame(pfam_rows, columns=["sequence_id", "pfam"])], ignore_index=True)
    missing = [s for s in sequence_ids if s not in seen]
    counts_out: dict[str, Any] = dict(counts)
    counts_out["uniprot_store_ids_not_in_file"] = len(missing)
    labels = _build(obs, sequence_ids, frame[list(SPAN_COLUMNS)], values, "uniprot", counts_out)
    _instances_by_feature(labels, frame)
    skipped = {k: v for k, v in counts_out.items() if k != "uniprot_features" and v and k != "uniprot_entries_matched"}
    if skipped:
        detail = ", ".join(f"{k.removeprefix('uniprot_')}={v}" for k, v in skipped.items())
        log.info("UniProt labels from %s: %s", p, detail)
    return labels


def _instances_by_feature(labels: ConceptLabels, frame: pd.DataFrame) -> None:
    """Renumber instances so that all spans of one UniProt feature (a disulfide's two cysteines) share an id.

    labels_from_spans numbers the spans of each concept 1, 2, ... in ``frame`` order; map span number k of a
    concept to the dense rank of its feature among that concept's features.
    """
    names = labels.token_concepts["concept"].tolist()
    mapping: dict[int, np.ndarray] = {}
    n_instances = labels.token_concepts["n_instances"].to_numpy().copy()
    for concept, group in frame.groupby("concept", sort=False):
        features = group["feature"].to_numpy()
        _, dense = np.unique(features, return_inverse=True)
        # np.unique sorts; feature numbers increase with span order, so sorted order == first-appearance order.
        j = names.index(concept)
        mapping[j] = np.r_[0, dense + 1].astype(np.int32)
        n_instances[j] = int(dense.max()) + 1 if len(dense) else 0
    inst = labels.instances.tocoo()
    data = inst.data.copy()
    for j, lookup in mapping.items():
        sel = inst.col == j
        data[sel] = lookup[data[sel]]
    import scipy.sparse as sp

    labels.instances = sp.csr_matrix((data, (inst.row, inst.col)), shape=inst.shape)
    labels.token_concepts["n_instances"] = n_instances


def uniprot_labels(store: ActivationStore, path: PathLike, *, min_count: int = 5,
                   format: str | None = None) -> ConceptLabels:
    """UniProt feature-table concepts for a store whose sequence ids are UniProt accessions (source ``"uniprot"``).

    ``path`` is the UniProt flat file (``Bio.SwissProt``) or XML (``Bio.SeqIO`` ``"uniprot-xml"``; detected from
    the content unless ``format`` is given) the store was extracted from; entries are matched by primary
    accession and must have the store's sequence (a prefix of it when the store truncated the sequence).

    Every feature becomes one instance of ``uniprot:<KEY>`` (flat-file keys; XML types are mapped to them), plus
    ``uniprot:<KEY>:<note>`` when the same reduced note (first ';' part, no evidence tags or trailing number)
    occurs in at least ``min_count`` of the store's features of that key (not for variant-like keys). A disulfide
    bond labels its two cysteines as one instance. Features with unknown or fuzzy (``<``, ``>``, ``?``)
    positions are skipped; in a truncated store, features past the end are dropped and features crossing it are
    clipped. Sequence concepts: ``go=<GO id>`` and ``pfam=<Pfam accession>`` from the cross-references. A
    feature key outside :data:`UNIPROT_FEATURE_KEYS` is an :class:`InputError` naming it.

    ``token_concepts.attrs`` holds the counters ``uniprot_features``, ``uniprot_skipped_fuzzy``,
    ``uniprot_clipped``, ``uniprot_dropped_truncated``, ``uniprot_entries_matched`` and
    ``uniprot_store_ids_not_in_file``.
    """
    return _uniprot_from(_obs(store), _sequence_ids(store), path, min_count, format)

