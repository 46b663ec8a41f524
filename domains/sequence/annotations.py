"""Concept labels for sequence stores: antibody numbering, table columns, user files, UniProt features, motifs.

Every source returns a :class:`~workbench.concepts.ConceptLabels` aligned to a store's token order, built with
:func:`~workbench.concepts.labels_from_spans` (residue spans, 1-based inclusive) and its sequence-level
``"<attribute>=<value>"`` concepts. Concept names by source:

``anarci`` (per residue, for residues ANARCI numbers)
    ``region=CDR3`` (IMGT regions FR1, CDR1, FR2, CDR2, FR3, CDR3, FR4), ``chain_region=H:CDR3`` (the same split
    by chain type H, K, L, A, B, G, D) and ``imgt=111`` (the IMGT position, insertion letters ignored: 111, 111A,
    111B form one span). Per sequence: ``chain_type=H``, ``species=human``, ``v_gene=IGHV1-2*02``,
    ``v_family=IGHV1``, ``j_gene=IGHJ4*01``. Counts of sequences ANARCI could not number are in
    ``token_concepts.attrs`` (see :func:`anarci_labels`).
``table`` (per sequence)
    ``"<column>=<value>"`` for columns the store carries (``CH1 Isotype=G1``, ``VD LC=Kappa``...).
``user`` (per residue or per sequence)
    The concepts of a user CSV/TSV file (see :func:`user_labels`).
``uniprot`` (per residue, plus GO / Pfam per sequence)
    ``uniprot:<KEY>`` per feature (``uniprot:HELIX``, ``uniprot:DISULFID``...), ``uniprot:<KEY>:<note>`` for
    frequent notes (``uniprot:DOMAIN:Protein kinase``), ``go=GO:0005524``, ``pfam=PF00069``.
``motif`` (per residue)
    ``motif=N-glycosylation sequon``, ``motif=Cys``, ``aa=A`` ... ``aa=Y``.

Counters of what a source skipped (unnumbered sequences, fuzzy UniProt positions, clipped spans...) are written
into ``labels.token_concepts.attrs`` under keys prefixed with the source name, and logged.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench.concepts import ConceptLabels, concat_labels, labels_from_spans
from workbench.errors import InputError, WorkbenchError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from workbench.store import ActivationStore

__all__ = [
    "store_sequences",
    "anarci_numbering",
    "anarci_labels",
    "table_labels",
    "user_labels",
    "uniprot_labels",
    "motif_labels",
    "sequence_labels",
    "imgt_region",
    "ANARCI_SPECIES",
    "IMGT_REGIONS",
    "UNIPROT_FEATURE_KEYS",
    "UNIPROT_XML_FEATURE_TYPES",
    "SOURCES",
]

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

#: Species ANARCI has germlines for (H chains; K/L lack alpaca, TCR chains have human and mouse only).
ANARCI_SPECIES: tuple[str, ...] = ("human", "mouse", "rat", "rabbit", "rhesus", "pig", "alpaca", "cow")

#: IMGT regions of a V domain as ``(name, first, last)`` IMGT positions (insertions belong to their base position).
IMGT_REGIONS: tuple[tuple[str, int, int], ...] = (
    ("FR1", 1, 26),
    ("CDR1", 27, 38),
    ("FR2", 39, 55),
    ("CDR2", 56, 65),
    ("FR3", 66, 104),
    ("CDR3", 105, 117),
    ("FR4", 118, 128),
)

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

#: Source names :func:`sequence_labels` accepts.
SOURCES: tuple[str, ...] = ("anarci", "table", "motif", "uniprot", "user", "pfam")

# Feature keys whose notes describe one sequence change each ("V -> I (in dbSNP...)"): no note sub-concepts.
_NO_NOTE_KEYS = frozenset({"VARIANT", "VAR_SEQ", "VARSPLIC", "CONFLICT", "MUTAGEN", "UNSURE", "NON_CONS", "NON_TER"})
# Per-sequence ANARCI attributes (names of sequence concepts).
_ANARCI_ATTRIBUTES = ("chain_type", "species", "v_gene", "v_family", "j_gene")
_STANDARD_AA = "ACDEFGHIKLMNPQRSTVWY"
_EVIDENCE_NOTES = frozenset({"by similarity", "potential", "probable"})
_SEQUON = re.compile(r"(?=N[^P][ST])")
_SPAN_COLUMNS = ("sequence_id", "start", "end", "concept")


# --------------------------------------------------------------------------------------------------- helpers


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


# --------------------------------------------------------------------------------------------------- ANARCI


def imgt_region(imgt_position: int | np.ndarray) -> str | None | np.ndarray:
    """IMGT region name(s) (``FR1`` ... ``FR4``) of IMGT position(s) 1-128 (``None`` outside that range)."""
    bounds = np.array([last for _, _, last in IMGT_REGIONS])
    names = np.array([name for name, _, _ in IMGT_REGIONS] + [None], dtype=object)
    pos = np.asarray(imgt_position)
    idx = np.searchsorted(bounds, pos, side="left")
    idx = np.where((pos < 1) | (pos > 128), len(IMGT_REGIONS), idx)
    return names[idx] if pos.ndim else names[int(idx)]


def _v_family(gene: str | None) -> str | None:
    """``IGHV1-2*02`` -> ``IGHV1``; ``IGKV12-44*01`` -> ``IGKV12``; ``TRBV5-1*01`` -> ``TRBV5``."""
    if not gene:
        return None
    m = re.match(r"[A-Za-z]+V\d+", gene)
    return m.group(0) if m else re.split(r"[-*/S]", gene, maxsplit=1)[0]


def _anarci_module() -> Any:
    import importlib

    try:
        # The package re-exports the function anarci() over its submodule's name, so fetch the module itself.
        module = importlib.import_module("anarci.anarci")
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise WorkbenchError("antibody numbering needs ANARCI (pip install anarci) and HMMER's hmmscan") from exc
    return module


def _run_anarci(sequences: Mapping[str, str], *, scheme: str, ncpu: int | None, allowed_species: Sequence[str],
                allow: Iterable[str], bit_score_threshold: float, batch_size: int,
                ) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Number ``sequences``; return (residue table, domain table, ids ANARCI could not number).

    This is the body of ``anarci.anarci()`` (hmmscan, long-CDR3 rescue, numbering), with the germline assignment
    done per domain against the species ANARCI has germlines for *for that chain type*: ``anarci()`` gives up on
    germlines altogether when ``allowed_species`` names a species the chain type lacks (alpaca for K/L chains).
    """
    import pandas as pd

    an = _anarci_module()
    try:
        long_scheme = an.scheme_short_to_long[scheme.lower()]
    except KeyError:
        raise InputError(f"unknown numbering scheme {scheme!r}; use one of imgt, kabat, chothia, martin, aho") from None
    unknown_species = [s for s in allowed_species if s not in an.all_species]
    if unknown_species:
        raise InputError(f"ANARCI has no germlines for species {unknown_species}; use some of {an.all_species}")
    allow = set(allow)
    if long_scheme not in ("imgt", "aho"):
        allow &= {"H", "K", "L"}  # ANARCI numbers TCR chains in IMGT and AHo only
    species = list(allowed_species)
    position_col = f"{long_scheme}_position"

    items = [(str(k), str(v)) for k, v in sequences.items()]
    residue_cols = ("sequence_id", "domain", "position", position_col, "insertion", "chain_type")
    residues: dict[str, list[Any]] = {k: [] for k in residue_cols}
    domains: list[dict[str, Any]] = []
    unnumbered: list[str] = []
    for b in range(0, len(items), max(1, batch_size)):
        batch = items[b : b + batch_size]
        noise = io.StringIO()
        try:
            with contextlib.redirect_stdout(noise):  # ANARCI prints its species fall-back notes to stdout
                alignments = an.run_hmmer(batch, hmm_database="ALL", ncpu=ncpu,
                                          bit_score_threshold=bit_score_threshold, hmmer_species=species)
                an.check_for_j(batch, alignments, long_scheme)
        except FileNotFoundError as exc:
            raise WorkbenchError("ANARCI needs HMMER's hmmscan on the PATH (Debian: apt-get install hmmer)") from exc
        except an.HMMscanError as exc:
            raise WorkbenchError(f"hmmscan failed: {' '.join(str(exc).split())[:300]}") from exc
        if noise.getvalue().strip():
            log.debug("ANARCI: %s", noise.getvalue().strip())
        for (sid, seq), (_hits, state_vectors, details_list) in zip(batch, alignments):
            n_domains = 0
            for state_vector, details in zip(state_vectors, details_list):
                chain = details["chain_type"]
                if not state_vector or chain not in allow:
                    continue
                try:
                    numbering, start, _end = an.number_sequence_from_alignment(
                        state_vector, seq, scheme=long_scheme, chain_type=chain)
                except AssertionError as exc:  # ANARCI's own checks of a numbering it cannot apply
                    log.warning("ANARCI could not number a %s domain of %r (%s)", chain, sid, exc)
                    continue
                numbered = [((int(n), ins.strip()), aa) for (n, ins), aa in numbering if aa != "-"]
                text = "".join(aa for _, aa in numbered)
                offset = start if seq[start : start + len(text)] == text else seq.find(text)
                if offset < 0 or not text:  # pragma: no cover - ANARCI validates this itself
                    log.warning("ANARCI numbered a segment that is not in sequence %r; domain skipped", sid)
                    continue
                chain_species = [s for s in species if s in an.all_germlines["V"].get(chain, {})]
                germ = (an.run_germline_assignment(state_vector, seq, chain, allowed_species=chain_species)
                        if chain_species else {})
                (v_species, v_gene), v_identity = _germline(germ.get("v_gene"))
                (_j_species, j_gene), j_identity = _germline(germ.get("j_gene"))
                for k, ((n, ins), _aa) in enumerate(numbered):
                    residues["sequence_id"].append(sid)
                    residues["domain"].append(n_domains)
                    residues["position"].append(offset + k + 1)
                    residues[position_col].append(n)
                    residues["insertion"].append(ins)
                    residues["chain_type"].append(chain)
                domains.append({
                    "sequence_id": sid, "domain": n_domains, "chain_type": chain,
                    "start": offset + 1, "end": offset + len(text),
                    "species": v_species or details.get("species"), "hmm_species": details.get("species"),
                    "v_gene": v_gene, "v_identity": v_identity, "j_gene": j_gene, "j_identity": j_identity,
                    "evalue": details.get("evalue"), "bitscore": details.get("bitscore"),
                })
                n_domains += 1
            if not n_domains:
                unnumbered.append(sid)
    table = pd.DataFrame(residues)
    table["position"] = table["position"].astype(np.int64)
    table[position_col] = table[position_col].astype(np.int64)
    table["domain"] = table["domain"].astype(np.int64)
    table["region"] = imgt_region(table[position_col].to_numpy()) if long_scheme == "imgt" else None
    table = table[["sequence_id", "domain", "position", position_col, "insertion", "region", "chain_type"]]
    domain_cols = ["sequence_id", "domain", "chain_type", "start", "end", "species", "hmm_species", "v_gene",
                   "v_identity", "j_gene", "j_identity", "evalue", "bitscore"]
    return table, pd.DataFrame(domains, columns=domain_cols), unnumbered


def _germline(entry: Any) -> tuple[tuple[str | None, str | None], float | None]:
    """ANARCI's ``[(species, gene), identity]`` (or ``[None, None]`` / missing) as a tuple."""
    if not entry or entry[0] is None:
        return (None, None), None
    (sp, gene), identity = entry
    return (str(sp), str(gene)), float(identity)


def anarci_numbering(
    sequences: Mapping[str, str],
    *,
    scheme: str = "imgt",
    ncpu: int | None = 1,
    allowed_species: Sequence[str] = ANARCI_SPECIES,
    allow: Iterable[str] = ("H", "K", "L", "A", "B", "G", "D"),
    bit_score_threshold: float = 80,
    batch_size: int = 20000,
) -> pd.DataFrame:
    """Number antibody / TCR variable domains with ANARCI; one row per numbered residue.

    Columns: ``sequence_id``, ``domain`` (0-based index of the domain within the sequence, for scFvs and other
    multi-domain chains), ``position`` (1-based residue position in the input sequence), ``imgt_position`` (int;
    named ``<scheme>_position`` for other schemes), ``insertion`` (insertion letter, ``""`` if none), ``region``
    (IMGT region ``FR1`` ... ``FR4``; None unless ``scheme`` is IMGT), ``chain_type`` (H, K, L, A, B, G, D).
    Residues outside the numbered domain(s) and sequences ANARCI cannot number have no rows. All sequences go to
    hmmscan in one run per ``batch_size`` sequences (``ncpu`` threads); ``allowed_species`` limits the HMMs
    and germlines considered.
    """
    table, _domains, _unnumbered = _run_anarci(
        sequences, scheme=scheme, ncpu=ncpu, allowed_species=allowed_species, allow=allow,
        bit_score_threshold=bit_score_threshold, batch_size=batch_size,
    )
    return table


def _anarci_from(obs: pd.DataFrame, sequence_ids: Sequence[str], **options: Any) -> ConceptLabels:
    import pandas as pd

    sequences = _sequences_from_obs(obs)
    table, domains, unnumbered = _run_anarci(sequences, **options)
    position_col = next(c for c in table.columns if c.endswith("_position"))
    scheme = position_col.removesuffix("_position")
    table = table.sort_values(["sequence_id", "domain", "position"], kind="stable").reset_index(drop=True)
    spans = _empty_spans()
    if len(table):
        # Position: runs of one number (e.g. 111, 111A, 111B) within a domain.
        runs = _runs(table, position_col, group=("sequence_id", "domain"))
        parts = [runs.assign(concept=[f"{scheme}={n}" for n in runs[position_col]])]
        if scheme == "imgt":
            runs = _runs(table.assign(chain_region=table["chain_type"] + ":" + table["region"]), "chain_region",
                         group=("sequence_id", "domain"))
            parts.append(runs.assign(concept="chain_region=" + runs["chain_region"].astype(str)))
            parts.append(runs.assign(concept="region=" + runs["chain_region"].astype(str).str.split(":").str[1]))
        spans = pd.concat([p[list(_SPAN_COLUMNS)] for p in parts], ignore_index=True)
    values = domains[["sequence_id", "chain_type", "species", "v_gene", "j_gene"]].copy()
    values["v_family"] = [_v_family(g) for g in values["v_gene"]]
    values = _long_values(values, list(_ANARCI_ATTRIBUTES), None)
    counts = {"anarci_scheme": scheme, "anarci_numbered": len(sequences) - len(unnumbered),
              "anarci_unnumbered": len(unnumbered), "anarci_unnumbered_ids": unnumbered[:20]}
    if unnumbered:
        log.info("ANARCI numbered no domain in %d of %d sequences (e.g. %s)", len(unnumbered), len(sequences),
                 ", ".join(unnumbered[:3]))
    return _build(obs, sequence_ids, spans, values, "anarci", counts)


def anarci_labels(
    store: ActivationStore,
    *,
    scheme: str = "imgt",
    ncpu: int | None = 1,
    allowed_species: Sequence[str] = ANARCI_SPECIES,
    allow: Iterable[str] = ("H", "K", "L", "A", "B", "G", "D"),
    bit_score_threshold: float = 80,
    batch_size: int = 20000,
) -> ConceptLabels:
    """Antibody-numbering concepts of every sequence in ``store`` (source ``"anarci"``).

    Token concepts, for residues ANARCI numbers: ``region=<IMGT region>``, ``chain_region=<chain>:<region>`` and
    ``imgt=<position>`` (insertions belong to their base position; a run of one position is one span). With
    another ``scheme`` only ``<scheme>=<position>`` concepts are made (the regions are IMGT-defined). Sequence
    concepts from the best domain hit and its closest germline: ``chain_type``, ``species`` (the germline's
    species, else the HMM's), ``v_gene``, ``v_family`` (derived from the V gene), ``j_gene``.

    Sequences ANARCI cannot number get no labels. ``token_concepts.attrs`` holds ``anarci_numbered``,
    ``anarci_unnumbered`` (counts), ``anarci_unnumbered_ids`` (the first 20 such ids) and ``anarci_scheme``; the
    count is also logged at INFO level.
    """
    return _anarci_from(_obs(store), _sequence_ids(store), scheme=scheme, ncpu=ncpu, allowed_species=allowed_species,
                        allow=allow, bit_score_threshold=bit_score_threshold, batch_size=batch_size)


# --------------------------------------------------------------------------------------------------- tables


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
        spans = frame[list(_SPAN_COLUMNS)]
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


def user_labels(store: ActivationStore, path: PathLike, *, multi_sep: str | None = None,
                source: str = "user") -> ConceptLabels:
    """Concepts from a user CSV/TSV file (source ``"user"``); the layout is decided by the columns.

    * Residue spans: columns ``sequence_id, start, end, concept`` (1-based inclusive positions; other columns are
      ignored). Each row is one instance of token concept ``concept``.
    * Per-sequence labels: ``sequence_id`` plus any columns; each becomes sequence concepts ``"<column>=<value>"``
      (``multi_sep`` splits multi-valued cells).

    Separator: tab for .tsv/.tab, comma for .csv, sniffed otherwise. Ids not in the store are an
    :class:`InputError` naming them, as are positions outside a sequence.
    """
    return _user_from(_obs(store), _sequence_ids(store), path, multi_sep, source)


# --------------------------------------------------------------------------------------------------- UniProt


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
    labels = _build(obs, sequence_ids, frame[list(_SPAN_COLUMNS)], values, "uniprot", counts_out)
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


# --------------------------------------------------------------------------------------------------- motifs


def _motif_from(obs: pd.DataFrame, sequence_ids: Sequence[str]) -> ConceptLabels:
    import pandas as pd

    sequences = _sequences_from_obs(obs)
    rows: list[tuple[str, int, int, str]] = []
    for sid, seq in sequences.items():
        rows.extend((sid, m.start() + 1, m.start() + 3, "motif=N-glycosylation sequon") for m in _SEQUON.finditer(seq))
    spans = [pd.DataFrame(rows, columns=list(_SPAN_COLUMNS))]
    residues = obs["residue"].astype(str).to_numpy()
    for aa in _STANDARD_AA:
        hit = np.flatnonzero(residues == aa)
        if not len(hit):
            continue
        pos = obs["position"].to_numpy()[hit]
        ids = obs["sequence_id"].astype(str).to_numpy()[hit]
        spans.append(pd.DataFrame({"sequence_id": ids, "start": pos, "end": pos, "concept": f"aa={aa}"}))
        if aa == "C":
            spans.append(pd.DataFrame({"sequence_id": ids, "start": pos, "end": pos, "concept": "motif=Cys"}))
    return _build(obs, sequence_ids, pd.concat(spans, ignore_index=True), None, "motif")


def motif_labels(store: ActivationStore) -> ConceptLabels:
    """Sequence-motif concepts (source ``"motif"``), found in the store's own residues.

    ``motif=N-glycosylation sequon``: N-x-S/T with x not P, one 3-residue span per sequon (overlapping sequons
    are all found); ``motif=Cys``: each cysteine; ``aa=A`` ... ``aa=Y``: each residue's amino acid (the 20
    standard ones; X, B, Z, U, O get none).
    """
    return _motif_from(_obs(store), _sequence_ids(store))


# --------------------------------------------------------------------------------------------------- all


def sequence_labels(
    store: ActivationStore,
    *,
    sources: Sequence[str] = ("anarci", "table", "motif"),
    table_columns: Sequence[str] = (),
    uniprot: PathLike | None = None,
    user: PathLike | None = None,
    min_count: int = 5,
    anarci_options: Mapping[str, Any] | None = None,
    pfam_hmm: PathLike | None = None,
) -> ConceptLabels:
    """Run the requested annotation sources on ``store`` and combine their labels (:func:`concat_labels`).

    ``sources`` are names from :data:`SOURCES`. ``"table"`` uses ``table_columns`` (nothing when empty);
    ``"uniprot"``, ``"user"`` and ``"pfam"`` need their file (``uniprot`` / ``user`` / ``pfam_hmm``, a HMMER3
    profile file for :func:`domains.sequence.pfam.pfam_labels`), and giving the file adds the source. A
    table column named like an ANARCI attribute (``v_family``, ``species``...) is named ``table:<column>`` when
    both sources run, so the two can be compared. ``anarci_options`` go to :func:`anarci_labels`. The sources'
    counters are merged in ``token_concepts.attrs``.
    """
    wanted = list(dict.fromkeys(sources))
    if uniprot is not None and "uniprot" not in wanted:
        wanted.append("uniprot")
    if user is not None and "user" not in wanted:
        wanted.append("user")
    if pfam_hmm is not None and "pfam" not in wanted:
        wanted.append("pfam")
    unknown = [s for s in wanted if s not in SOURCES]
    if unknown:
        raise InputError(f"unknown annotation source(s) {unknown}; use some of {', '.join(SOURCES)}")
    if "uniprot" in wanted and uniprot is None:
        raise InputError("the uniprot source needs the UniProt file the store was extracted from")
    if "user" in wanted and user is None:
        raise InputError("the user source needs a labels file")
    if "pfam" in wanted and pfam_hmm is None:
        raise InputError("the pfam source needs a HMMER3 profile file (pfam_hmm)")
    obs = _obs(store)
    ids = _sequence_ids(store)
    parts: list[ConceptLabels] = []
    for source in wanted:
        if source == "anarci":
            parts.append(_anarci_from(obs, ids, **{**_ANARCI_DEFAULTS, **dict(anarci_options or {})}))
        elif source == "table":
            if table_columns:
                columns = [table_columns] if isinstance(table_columns, str) else list(table_columns)
                rename = {c: f"table:{c}" for c in columns if c in _ANARCI_ATTRIBUTES and "anarci" in wanted}
                parts.append(_table_from(obs, store.sequences, columns, ";", rename))
        elif source == "motif":
            parts.append(_motif_from(obs, ids))
        elif source == "uniprot":
            parts.append(_uniprot_from(obs, ids, uniprot, min_count, None))  # type: ignore[arg-type]
        elif source == "pfam":
            from domains.sequence.pfam import _pfam_from

            parts.append(_pfam_from(obs, ids, pfam_hmm))  # type: ignore[arg-type]
        else:
            parts.append(_user_from(obs, ids, user, None, "user"))  # type: ignore[arg-type]
    if not parts:
        raise InputError("no annotation source produced labels (give table_columns for the table source)")
    combined = concat_labels(parts)
    attrs: dict[str, Any] = {}
    for part in parts:
        attrs.update(part.token_concepts.attrs)
    combined.token_concepts.attrs = attrs
    return combined


_ANARCI_DEFAULTS: dict[str, Any] = {
    "scheme": "imgt", "ncpu": 1, "allowed_species": ANARCI_SPECIES,
    "allow": ("H", "K", "L", "A", "B", "G", "D"), "bit_score_threshold": 80, "batch_size": 20000,
}
