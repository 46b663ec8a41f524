"""ANARCI / IMGT numbering of antibody and TCR variable domains, and the concepts it gives (source ``"anarci"``).

ANARCI (Dunbar & Deane 2016, Bioinformatics 32:298) aligns each chain to profile HMMs of germline V domains of
several species with HMMER and numbers it in the IMGT scheme (Lefranc et al. 2003, Dev. Comp. Immunol. 27:55).
Per residue: ``region=CDR3`` (IMGT regions FR1, CDR1, FR2, CDR2, FR3, CDR3, FR4), ``chain_region=H:CDR3`` (the
same split by chain type H, K, L, A, B, G, D) and ``imgt=111`` (the IMGT position, insertion letters ignored:
111, 111A, 111B form one span). Per sequence: ``chain_type=H``, ``species=human``, ``v_gene=IGHV1-2*02``,
``v_family=IGHV1``, ``j_gene=IGHJ4*01``.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench.concepts import ConceptLabels
from workbench.errors import InputError, WorkbenchError

from ._common import SPAN_COLUMNS, _build, _empty_spans, _long_values, _obs, _runs, _sequence_ids, _sequences_from_obs

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from workbench.store import ActivationStore

__all__ = ["anarci_numbering", "anarci_labels", "number_sequences", "assign_germlines", "labels_from_numbering", "Numbering", "imgt_region",
           "ANARCI_SPECIES", "IMGT_REGIONS", "IMGT_ANCHORS", "ANARCI_ATTRIBUTES", "NUMBERED_SCOPE"]

log = logging.getLogger(__name__)

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

#: Per-sequence ANARCI attributes (names of sequence concepts).
ANARCI_ATTRIBUTES: tuple[str, ...] = ("chain_type", "species", "v_gene", "v_family", "j_gene")


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


#: IMGT's conserved anchors of every V domain: first Cys, conserved Trp, second Cys (Lefranc et al. 2003).
IMGT_ANCHORS: tuple[tuple[int, str], ...] = ((23, "C"), (41, "W"), (104, "C"))

#: Species whose HMMs are tried first, in order, when a chain's numbering breaks an IMGT anchor.
ANCHOR_RESCUE_ORDER: tuple[str, ...] = ("human", "mouse")


@dataclass
class Numbering:
    """ANARCI's numbering of a set of sequences (what :func:`number_sequences` returns; every antibody source that
    needs IMGT positions shares one)."""

    residues: pd.DataFrame
    """One row per numbered residue: ``sequence_id``, ``domain``, ``position`` (1-based in the sequence),
    ``<scheme>_position``, ``insertion``, ``region``, ``chain_type``, ``residue``."""
    domains: pd.DataFrame
    """One row per numbered domain: span, chain type, species, germline V / J genes with their species and identity,
    HMM e-value and bit score, ``hmm_species_used`` (``"all"``, or the species whose HMM kept the IMGT anchors),
    ``hmm_species_first`` (the HMM's species in the first, all-species run) and
    ``anchor_breaks`` / ``anchor_breaks_first`` (``"23:S;104:Y"``, ``""`` when all anchors hold; after and before
    the anchor rescue)."""
    unnumbered: list[str]
    """Ids of the sequences in which ANARCI numbered no domain."""
    scheme: str
    """Numbering scheme (``imgt``, ``kabat``...)."""

    @property
    def position_col(self) -> str:
        return f"{self.scheme}_position"

    def anchor_report(self) -> dict[str, Any]:
        """Counts of domains breaking an IMGT anchor before and after the rescue, and the ids still breaking one."""
        d = self.domains
        if self.scheme != "imgt" or d.empty:
            return {}
        before = d["anchor_breaks_first"].astype(bool)
        after = d["anchor_breaks"].astype(bool)
        return {"anarci_anchor_breaks_before": int(before.sum()), "anarci_anchor_breaks_after": int(after.sum()),
                "anarci_renumbered": int((d["hmm_species_used"] != "all").sum()),
                "anarci_anchor_broken_ids": d.loc[after, "sequence_id"].astype(str).tolist()[:50]}


def _anchor_breaks(numbered: Sequence[tuple[tuple[int, str], str]]) -> str:
    """``"23:S;104:Y"`` for the IMGT anchors a numbered domain breaks (``-``: position absent); ``""`` if none."""
    at = {n: aa for (n, ins), aa in numbered if not ins}
    return ";".join(f"{pos}:{at.get(pos, '-')}" for pos, aa in IMGT_ANCHORS if at.get(pos) != aa)


@functools.lru_cache(maxsize=None)
def _germline_matrix(segment: str, chain_type: str, species: tuple[str, ...]) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """ANARCI's IMGT-gapped germlines of one segment and chain type as a ``(genes, 128)`` byte matrix, in ANARCI's
    own iteration order (species as given, genes in its dictionary order), with their ``(species, gene)`` keys."""
    from anarci.germlines import all_germlines

    keys: list[tuple[str, str]] = []
    rows: list[bytes] = []
    for sp in species:
        for gene, seq in all_germlines[segment].get(chain_type, {}).get(sp, {}).items():
            keys.append((sp, gene))
            rows.append(seq.encode("ascii"))
    matrix = np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(len(rows), 128) if rows else np.zeros((0, 128), np.uint8)
    return matrix, keys


def _closest(matrix: np.ndarray, keys: list[tuple[str, str]], state: np.ndarray) -> list[Any]:
    """``[(species, gene), identity]`` of the germline row closest to ``state`` by ANARCI's identity (matches over
    the germline's non-gap positions; the first of equals wins, as ``max`` over ANARCI's dictionary does)."""
    present = matrix != ord("-")
    n = present.sum(1)
    m = ((matrix == state[None, :]) & present).sum(1)
    identity = np.divide(m, n, out=np.zeros(len(n)), where=n > 0)
    best = int(np.argmax(identity))
    return [keys[best], float(identity[best])]


def assign_germlines(state_vector: Sequence[tuple[tuple[int, str], int]], sequence: str, chain_type: str,
                     species: Sequence[str]) -> dict[str, list[Any]]:
    """ANARCI's ``run_germline_assignment``, vectorised over the germline set (the same genes, identities and
    tie-breaks, about 50 times faster): the closest V gene over ``species`` by identity at IMGT match states, then
    the closest J gene of the V gene's species. ``{"v_gene": [(species, gene), identity], "j_gene": ...}``."""
    genes: dict[str, list[Any]] = {"v_gene": [None, None], "j_gene": [None, None]}
    index = {state: i for state, i in state_vector if state[1] == "m"}
    state = np.frombuffer("".join(sequence[index[(k, "m")]].upper() if index.get((k, "m")) is not None else "-"
                                  for k in range(1, 129)).encode("ascii"), dtype=np.uint8)
    v_matrix, v_keys = _germline_matrix("V", chain_type, tuple(species))
    if not len(v_keys):
        return genes
    genes["v_gene"] = _closest(v_matrix, v_keys, state)
    j_matrix, j_keys = _germline_matrix("J", chain_type, (genes["v_gene"][0][0],))
    if len(j_keys):
        genes["j_gene"] = _closest(j_matrix, j_keys, state)
    return genes


def _number_batch(an: Any, batch: Sequence[tuple[str, str]], *, long_scheme: str, allow: set[str],
                  hmm_species: Sequence[str], germline_species: Sequence[str], ncpu: int | None,
                  bit_score_threshold: float) -> dict[str, list[dict[str, Any]]]:
    """ANARCI's ``anarci()`` body for one batch: per sequence id, its numbered domains (``chain``, ``offset``,
    ``numbered``, ``details``, ``germ``). Germlines are assigned per domain over ``germline_species`` that have
    germlines for the chain type (``anarci()`` gives up when one species lacks them, e.g. alpaca K/L chains)."""
    noise = io.StringIO()
    try:
        with contextlib.redirect_stdout(noise):  # ANARCI prints its species fall-back notes to stdout
            alignments = an.run_hmmer(list(batch), hmm_database="ALL", ncpu=ncpu,
                                      bit_score_threshold=bit_score_threshold, hmmer_species=list(hmm_species))
            an.check_for_j(list(batch), alignments, long_scheme)
    except FileNotFoundError as exc:
        raise WorkbenchError("ANARCI needs HMMER's hmmscan on the PATH (Debian: apt-get install hmmer)") from exc
    except an.HMMscanError as exc:
        raise WorkbenchError(f"hmmscan failed: {' '.join(str(exc).split())[:300]}") from exc
    if noise.getvalue().strip():
        log.debug("ANARCI: %s", noise.getvalue().strip())
    out: dict[str, list[dict[str, Any]]] = {}
    for (sid, seq), (_hits, state_vectors, details_list) in zip(batch, alignments):
        found = out.setdefault(sid, [])
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
            chain_species = [s for s in germline_species if s in an.all_germlines["V"].get(chain, {})]
            germ = assign_germlines(state_vector, seq, chain, chain_species) if chain_species else {}
            found.append({"chain": chain, "offset": offset, "numbered": numbered, "details": details, "germ": germ})
    return out


def _germline(entry: Any) -> tuple[tuple[str | None, str | None], float | None]:
    """ANARCI's ``[(species, gene), identity]`` (or ``[None, None]`` / missing) as a tuple."""
    if not entry or entry[0] is None:
        return (None, None), None
    (sp, gene), identity = entry
    return (str(sp), str(gene)), float(identity)


def _domains_breaks(domains: list[dict[str, Any]]) -> int:
    return sum(len(_anchor_breaks(d["numbered"]).split(";")) if _anchor_breaks(d["numbered"]) else 0 for d in domains)


def number_sequences(sequences: Mapping[str, str], *, scheme: str = "imgt", ncpu: int | None = 1,
                     allowed_species: Sequence[str] = ANARCI_SPECIES,
                     allow: Iterable[str] = ("H", "K", "L", "A", "B", "G", "D"), bit_score_threshold: float = 80,
                     batch_size: int = 20000, check_anchors: bool = True) -> Numbering:
    """Number ``sequences`` with ANARCI (hmmscan, long-CDR3 rescue, numbering, germline assignment).

    With the IMGT scheme and ``check_anchors``, every numbered domain is checked against IMGT's conserved anchors
    (:data:`IMGT_ANCHORS`: Cys 23, Trp 41, Cys 104). ANARCI run over all species picks the best-scoring HMM, and
    a close but wrong one can shift the numbering (the rhesus kappa HMM skips IMGT 21 on some human kappa
    chains, putting S at 23 and Y at 104). A sequence with a broken anchor is numbered again with the HMMs of
    one species at a time, :data:`ANCHOR_RESCUE_ORDER` first and then the other ``allowed_species``; the first
    numbering that keeps every anchor is taken (else the one breaking fewest, the original on a tie). Germlines
    are still assigned over all ``allowed_species``. The domains table records what was used and what still
    breaks (:meth:`Numbering.anchor_report`).
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
    options = {"long_scheme": long_scheme, "allow": allow, "germline_species": species, "ncpu": ncpu,
               "bit_score_threshold": bit_score_threshold}

    items = [(str(k), str(v)) for k, v in sequences.items()]
    found: dict[str, list[dict[str, Any]]] = {}
    for b in range(0, len(items), max(1, batch_size)):
        found.update(_number_batch(an, items[b : b + batch_size], hmm_species=species, **options))
    used = dict.fromkeys(found, "all")
    first_breaks: dict[str, list[str]] = {sid: [_anchor_breaks(d["numbered"]) for d in doms] for sid, doms in found.items()}
    first_species = {sid: [d["details"].get("species") for d in doms] for sid, doms in found.items()}
    if check_anchors and long_scheme == "imgt":
        broken = [(sid, seq) for sid, seq in items if any(first_breaks.get(sid, []))]
        rescue = [s for s in ANCHOR_RESCUE_ORDER if s in species] + [s for s in species if s not in ANCHOR_RESCUE_ORDER]
        best_n = {sid: _domains_breaks(found[sid]) for sid, _ in broken}
        for sp_name in rescue:
            todo = [(sid, seq) for sid, seq in broken if best_n[sid] > 0]
            if not todo:
                break
            again = _number_batch(an, todo, hmm_species=[sp_name], **options)
            for sid, doms in again.items():
                n = _domains_breaks(doms)
                if doms and len(doms) >= len(found[sid]) and n < best_n[sid]:
                    found[sid], best_n[sid], used[sid] = doms, n, sp_name
                    first_breaks[sid] = (first_breaks[sid] + [""] * len(doms))[: len(doms)]
                    first_species[sid] = (first_species[sid] + [None] * len(doms))[: len(doms)]

    residue_cols = ("sequence_id", "domain", "position", position_col, "insertion", "chain_type", "residue")
    residues: dict[str, list[Any]] = {k: [] for k in residue_cols}
    domains: list[dict[str, Any]] = []
    unnumbered: list[str] = []
    for sid, _seq in items:
        doms = found.get(sid, [])
        if not doms:
            unnumbered.append(sid)
        for k_dom, dom in enumerate(doms):
            (v_species, v_gene), v_identity = _germline(dom["germ"].get("v_gene"))
            (j_species, j_gene), j_identity = _germline(dom["germ"].get("j_gene"))
            for k, ((n, ins), aa) in enumerate(dom["numbered"]):
                residues["sequence_id"].append(sid)
                residues["domain"].append(k_dom)
                residues["position"].append(dom["offset"] + k + 1)
                residues[position_col].append(n)
                residues["insertion"].append(ins)
                residues["chain_type"].append(dom["chain"])
                residues["residue"].append(aa)
            details = dom["details"]
            domains.append({
                "sequence_id": sid, "domain": k_dom, "chain_type": dom["chain"],
                "start": dom["offset"] + 1, "end": dom["offset"] + len(dom["numbered"]),
                "species": v_species or details.get("species"), "hmm_species": details.get("species"),
                "v_gene": v_gene, "v_species": v_species, "v_identity": v_identity,
                "j_gene": j_gene, "j_species": j_species, "j_identity": j_identity,
                "evalue": details.get("evalue"), "bitscore": details.get("bitscore"),
                "hmm_species_used": used.get(sid, "all"), "hmm_species_first": first_species[sid][k_dom],
                "anchor_breaks": _anchor_breaks(dom["numbered"]) if long_scheme == "imgt" else "",
                "anchor_breaks_first": first_breaks[sid][k_dom] if long_scheme == "imgt" else "",
            })
    table = pd.DataFrame(residues)
    for col in ("position", position_col, "domain"):
        table[col] = table[col].astype(np.int64)
    table["region"] = imgt_region(table[position_col].to_numpy()) if long_scheme == "imgt" else None
    table = table[["sequence_id", "domain", "position", position_col, "insertion", "region", "chain_type", "residue"]]
    domain_cols = ["sequence_id", "domain", "chain_type", "start", "end", "species", "hmm_species", "v_gene",
                   "v_species", "v_identity", "j_gene", "j_species", "j_identity", "evalue", "bitscore",
                   "hmm_species_used", "hmm_species_first", "anchor_breaks", "anchor_breaks_first"]
    numbering = Numbering(table, pd.DataFrame(domains, columns=domain_cols), unnumbered, long_scheme)
    report = numbering.anchor_report()
    if report.get("anarci_anchor_breaks_before"):
        log.info("IMGT anchors (C23, W41, C104): %d domain(s) broke one; %d renumbered; %d still break one",
                 report["anarci_anchor_breaks_before"], report["anarci_renumbered"], report["anarci_anchor_breaks_after"])
    return numbering


def anarci_numbering(
    sequences: Mapping[str, str],
    *,
    scheme: str = "imgt",
    ncpu: int | None = 1,
    allowed_species: Sequence[str] = ANARCI_SPECIES,
    allow: Iterable[str] = ("H", "K", "L", "A", "B", "G", "D"),
    bit_score_threshold: float = 80,
    batch_size: int = 20000,
    check_anchors: bool = True,
) -> pd.DataFrame:
    """Number antibody / TCR variable domains with ANARCI; one row per numbered residue.

    Columns: ``sequence_id``, ``domain`` (0-based index of the domain within the sequence, for scFvs and other
    multi-domain chains), ``position`` (1-based residue position in the input sequence), ``imgt_position`` (int;
    named ``<scheme>_position`` for other schemes), ``insertion`` (insertion letter, ``""`` if none), ``region``
    (IMGT region ``FR1`` ... ``FR4``; None unless ``scheme`` is IMGT), ``chain_type`` (H, K, L, A, B, G, D),
    ``residue``. Residues outside the numbered domain(s) and sequences ANARCI cannot number have no rows. All
    sequences go to hmmscan in one run per ``batch_size`` sequences (``ncpu`` threads); ``allowed_species`` limits
    the HMMs and germlines considered; numberings that break an IMGT anchor are redone as
    :func:`number_sequences` describes (the domains, germlines and anchor report are on its result).
    """
    return number_sequences(sequences, scheme=scheme, ncpu=ncpu, allowed_species=allowed_species, allow=allow,
                            bit_score_threshold=bit_score_threshold, batch_size=batch_size,
                            check_anchors=check_anchors).residues


def numbering_of(obs: pd.DataFrame, anarci_options: Mapping[str, Any] | None = None) -> Numbering:
    """:func:`number_sequences` of the sequences in a store's token table, with :data:`ANARCI_DEFAULTS` under
    ``anarci_options``."""
    return number_sequences(_sequences_from_obs(obs), **{**ANARCI_DEFAULTS, **dict(anarci_options or {})})


NUMBERED_SCOPE = "anarci:numbered"
"""Scope of the ANARCI concepts: the tokens (and sequences) of the sequences ANARCI numbered."""


def numbered_scope(obs: pd.DataFrame, sequence_ids: Sequence[str], numbering: Numbering) -> tuple[np.ndarray, np.ndarray]:
    """Token and sequence masks of the sequences in which ANARCI numbered at least one domain."""
    numbered = set(numbering.domains["sequence_id"].astype(str))
    tokens = obs["sequence_id"].astype(str).isin(numbered).to_numpy()
    sequences = np.array([s in numbered for s in sequence_ids], dtype=bool)
    return tokens, sequences


def labels_from_numbering(obs: pd.DataFrame, sequence_ids: Sequence[str], numbering: Numbering) -> ConceptLabels:
    """The ``anarci`` concepts (see :func:`anarci_labels`) from a numbering of the store's sequences."""
    import pandas as pd

    from workbench.concepts import scope_labels

    position_col, scheme = numbering.position_col, numbering.scheme
    table = numbering.residues.sort_values(["sequence_id", "domain", "position"], kind="stable").reset_index(drop=True)
    domains, unnumbered = numbering.domains, numbering.unnumbered
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
        spans = pd.concat([p[list(SPAN_COLUMNS)] for p in parts], ignore_index=True)
    values = domains[["sequence_id", "chain_type", "species", "v_gene", "j_gene"]].copy()
    values["v_family"] = [_v_family(g) for g in values["v_gene"]]
    values = _long_values(values, list(ANARCI_ATTRIBUTES), None)
    n_seq = len(sequence_ids)
    counts = {"anarci_scheme": scheme, "anarci_numbered": n_seq - len(unnumbered),
              "anarci_unnumbered": len(unnumbered), "anarci_unnumbered_ids": unnumbered[:20], **numbering.anchor_report()}
    if unnumbered:
        log.info("ANARCI numbered no domain in %d of %d sequences (e.g. %s)", len(unnumbered), n_seq,
                 ", ".join(unnumbered[:3]))
    labels = _build(obs, sequence_ids, spans, values, "anarci", counts)
    tokens, sequences = numbered_scope(obs, sequence_ids, numbering)
    return scope_labels(labels, tokens=tokens, sequences=sequences, name=NUMBERED_SCOPE)


def _anarci_from(obs: pd.DataFrame, sequence_ids: Sequence[str], **options: Any) -> ConceptLabels:
    return labels_from_numbering(obs, sequence_ids, number_sequences(_sequences_from_obs(obs), **options))


def anarci_labels(
    store: ActivationStore,
    *,
    scheme: str = "imgt",
    ncpu: int | None = 1,
    allowed_species: Sequence[str] = ANARCI_SPECIES,
    allow: Iterable[str] = ("H", "K", "L", "A", "B", "G", "D"),
    bit_score_threshold: float = 80,
    batch_size: int = 20000,
    check_anchors: bool = True,
) -> ConceptLabels:
    """Antibody-numbering concepts of every sequence in ``store`` (source ``"anarci"``).

    Token concepts, for residues ANARCI numbers: ``region=<IMGT region>``, ``chain_region=<chain>:<region>`` and
    ``imgt=<position>`` (insertions belong to their base position; a run of one position is one span). With
    another ``scheme`` only ``<scheme>=<position>`` concepts are made (the regions are IMGT-defined). Sequence
    concepts from the best domain hit and its closest germline: ``chain_type``, ``species`` (the germline's
    species, else the HMM's), ``v_gene``, ``v_family`` (derived from the V gene), ``j_gene``.

    Sequences ANARCI cannot number are unlabelled (outside the scope :data:`NUMBERED_SCOPE`), not negative.
    ``token_concepts.attrs`` holds ``anarci_numbered``, ``anarci_unnumbered`` (counts), ``anarci_unnumbered_ids``
    (the first 20 such ids), ``anarci_scheme`` and the IMGT anchor report (``anarci_anchor_breaks_before`` /
    ``_after``, ``anarci_renumbered``, ``anarci_anchor_broken_ids``; see :func:`number_sequences`).
    """
    return _anarci_from(_obs(store), _sequence_ids(store), scheme=scheme, ncpu=ncpu, allowed_species=allowed_species,
                        allow=allow, bit_score_threshold=bit_score_threshold, batch_size=batch_size,
                        check_anchors=check_anchors)


ANARCI_DEFAULTS: dict[str, Any] = {
    "scheme": "imgt", "ncpu": 1, "allowed_species": ANARCI_SPECIES,
    "allow": ("H", "K", "L", "A", "B", "G", "D"), "bit_score_threshold": 80, "batch_size": 20000,
    "check_anchors": True,
}
