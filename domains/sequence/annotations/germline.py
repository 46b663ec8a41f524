"""Germline-derived concepts: somatic hypermutation (source ``"germline"``) and humanness (``"humanness"``).

Both compare a chain's residues, at their IMGT positions (ANARCI's numbering, :mod:`.anarci`), with the IMGT
germline V and J genes that ship with ANARCI (``anarci.germlines``, taken from IMGT/GENE-DB: Giudicelli et al.
2005, Nucleic Acids Res. 33:D256; IMGT-gapped, one character per IMGT position 1-128). Only germline-encoded
positions are compared: the V gene's FR1-FR3 (IMGT 1-104) and the J gene's FR4 (118-128); CDR3 (105-117) is
the V(D)J junction, with N additions and a D gene, and insertion positions (``111A``) have no germline
counterpart, so those residues are unlabelled.

``germline`` (per residue, in the scope ``germline:compared``)
    ``shm=mutated``: the residue differs from the residue of the chain's assigned germline V (or J) gene at the
    same IMGT position; ``germline=conserved``: it is the germline residue; ``germline_residue=<aa>``: for a
    mutated residue, the germline residue it replaced. The germline is the closest V / J gene by ANARCI's
    identity over all species it has (IMGT/V-QUEST's approach: Brochet et al. 2008, Nucleic Acids Res. 36:W503),
    or the gene a store column names (``v_call_column``, e.g. an AIRR file's ``v_call``). Per sequence (scope
    ``germline:assigned``): ``shm_count=<bin>`` (mutations of the chain, bins :data:`SHM_BINS`); measures
    ``shm_count``, ``shm_fraction`` (mutated / compared residues) and ``germline_v_identity``. Chains whose
    germline cannot be assigned (not numbered, no germline for their species and chain type, a named gene absent
    from ANARCI's set) are unlabelled, not negative, and counted.

``humanness`` (per residue, in the scope ``humanness:covered``)
    ``non_human_residue``: the residue is seen at its IMGT position in no human germline V (or J) gene of the
    chain's type in ANARCI's set, the question humanisation asks (Sapiens and OASis in BioPhi: Prihoda et al.
    2022, mAbs 14:2020203). Split by why: ``non_human_residue=other_species`` (a germline of another species has
    it) and ``non_human_residue=no_germline`` (no germline of any species has it: a somatic or engineered
    change). Per sequence (scope ``humanness:covered``): ``non_human_fraction=<bin>`` and the measure
    ``non_human_fraction`` (non-human / compared residues).
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench.concepts import ConceptLabels, scope_labels
from workbench.errors import InputError

from ._common import _build, _empty_spans, _obs, _sequence_ids, _token_mask, residue_spans
from .anarci import Numbering, numbering_of

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from workbench.store import ActivationStore

__all__ = [
    "germline_labels", "humanness_labels", "germline_residues", "germline_sequence", "SHM_BINS",
    "NON_HUMAN_BINS", "GERMLINE_SCOPE", "HUMANNESS_SCOPE", "V_POSITIONS", "J_POSITIONS",
]

log = logging.getLogger(__name__)

#: IMGT positions encoded by the V gene (FR1, CDR1, FR2, CDR2, FR3) and by the J gene (FR4).
V_POSITIONS: tuple[int, int] = (1, 104)
J_POSITIONS: tuple[int, int] = (118, 128)

#: Mutation-count bins of ``shm_count=<bin>``: (label, lowest, highest) counts per chain.
SHM_BINS: tuple[tuple[str, int, int], ...] = (
    ("0", 0, 0), ("1-3", 1, 3), ("4-7", 4, 7), ("8-12", 8, 12), ("13-20", 13, 20), ("21+", 21, 10**9),
)
#: Bins of ``non_human_fraction=<bin>``: (label, lowest, highest) fraction, lowest exclusive except for 0.
NON_HUMAN_BINS: tuple[tuple[str, float, float], ...] = (
    ("0%", -1.0, 0.0), ("0-5%", 0.0, 0.05), ("5-10%", 0.05, 0.10), ("10-20%", 0.10, 0.20), ("20%+", 0.20, 1.0),
)

GERMLINE_SCOPE = "germline:compared"
"""Token scope of the SHM concepts: residues compared with an assigned germline."""
ASSIGNED_SCOPE = "germline:assigned"
"""Sequence scope of ``shm_count``: chains with an assigned germline."""
HUMANNESS_SCOPE = "humanness:covered"
"""Token / sequence scope of the humanness concepts: germline-encoded residues of numbered chains."""


# --------------------------------------------------------------------------------------------------- germlines


@functools.lru_cache(maxsize=1)
def _germlines() -> dict[str, Any]:
    try:
        from anarci.germlines import all_germlines
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise InputError("germline concepts need ANARCI (pip install anarci)") from exc
    return all_germlines


def germline_sequence(segment: str, chain_type: str, species: str, gene: str) -> str | None:
    """ANARCI's IMGT-gapped germline (128 characters, ``-`` for gaps) of ``gene``; None if ANARCI lacks it."""
    return _germlines()[segment].get(chain_type, {}).get(species, {}).get(gene)


@functools.lru_cache(maxsize=None)
def _gene_index(segment: str) -> dict[str, list[tuple[str, str]]]:
    """Gene name (``IGHV1-2*02``) -> [(chain type, species)] over ANARCI's germline set."""
    index: dict[str, list[tuple[str, str]]] = {}
    for chain, by_species in _germlines()[segment].items():
        for species, genes in by_species.items():
            for gene in genes:
                index.setdefault(gene, []).append((chain, species))
    return index


@functools.lru_cache(maxsize=None)
def _residue_sets(chain_type: str, human: bool) -> tuple[frozenset[str], ...]:
    """Per IMGT position 1-128 (index 0-127), the residues seen in the V and J germlines of ``chain_type``: human
    ones only, or every species'."""
    sets: list[set[str]] = [set() for _ in range(128)]
    for segment in ("V", "J"):
        for species, genes in _germlines()[segment].get(chain_type, {}).items():
            if human and species != "human":
                continue
            for seq in genes.values():
                for i, aa in enumerate(seq[:128]):
                    if aa not in "-X":
                        sets[i].add(aa)
    return tuple(frozenset(s) for s in sets)


def _encoded(imgt: np.ndarray, insertion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Masks of residues at V-encoded and J-encoded IMGT positions (no insertion code)."""
    plain = insertion == ""
    v = plain & (imgt >= V_POSITIONS[0]) & (imgt <= V_POSITIONS[1])
    j = plain & (imgt >= J_POSITIONS[0]) & (imgt <= J_POSITIONS[1])
    return v, j


def _first_call(call: object) -> str | None:
    """An AIRR ``v_call`` cell (``"IGHV3-23*01,IGHV3-23*04"``) -> its first gene, or None."""
    if call is None or (isinstance(call, float) and call != call):
        return None
    first = re.split(r"[,;|\s]+", str(call).strip())[0]
    return first or None


def _assignments(numbering: Numbering, sequences: pd.DataFrame | None, v_call_column: str | None,
                 j_call_column: str | None, species: str, counts: dict[str, Any]) -> pd.DataFrame:
    """Per numbered domain: the V and J germline strings (None where none can be assigned)."""
    d = numbering.domains[["sequence_id", "domain", "chain_type", "v_gene", "v_species", "v_identity",
                           "j_gene", "j_species"]].copy()
    calls: dict[str, dict[str, str | None]] = {}
    for segment, column in (("V", v_call_column), ("J", j_call_column)):
        if column is None:
            continue
        if sequences is None or column not in sequences.columns:
            carried = [c for c in (sequences.columns if sequences is not None else []) if c not in ("shard", "offset", "n_tokens")]
            raise InputError(f"the store carries no column {column!r} to take {segment} genes from; it has: "
                             f"{', '.join(map(repr, carried)) or '(none)'}")
        calls[segment] = dict(zip(sequences["sequence_id"].astype(str), (_first_call(c) for c in sequences[column])))
    v_seq, j_seq = [], []
    missing: dict[str, int] = {}
    for row in d.itertuples(index=False):
        sid, chain = str(row.sequence_id), row.chain_type
        for segment, out, gene, sp in (("V", v_seq, row.v_gene, row.v_species), ("J", j_seq, row.j_gene, row.j_species)):
            if segment in calls:
                gene = calls[segment].get(sid)
                homes = [h for h in _gene_index(segment).get(gene or "", []) if h[0] == chain]
                sp = next((s for c, s in homes if s == species), homes[0][1] if homes else None)
                if gene and not homes:
                    missing[gene] = missing.get(gene, 0) + 1
            out.append(germline_sequence(segment, chain, sp, gene) if gene and sp else None)
    d["v_germline"], d["j_germline"] = v_seq, j_seq
    if missing:
        counts["germline_genes_not_in_anarci"] = int(sum(missing.values()))
        counts["germline_genes_not_in_anarci_names"] = sorted(missing)[:20]
        log.info("germline: %d chain(s) name a gene ANARCI's set lacks (e.g. %s); they are unlabelled",
                 sum(missing.values()), ", ".join(sorted(missing)[:3]))
    return d


def germline_residues(numbering: Numbering, *, sequences: pd.DataFrame | None = None,
                      v_call_column: str | None = None, j_call_column: str | None = None,
                      species: str = "human") -> pd.DataFrame:
    """Every numbered residue beside its germline residue: the numbering's residue table plus ``germline``
    (the assigned V / J gene's residue at the IMGT position; ``""`` where none is compared) and ``mutated``
    (bool; meaningful where ``germline`` is set). ``sequences``/``*_call_column`` take the genes from a store
    column instead of ANARCI's assignment (``species`` breaks ties between species sharing a gene name)."""
    if numbering.scheme != "imgt":
        raise InputError("germline comparison needs the IMGT numbering scheme")
    counts: dict[str, Any] = {}
    d = _assignments(numbering, sequences, v_call_column, j_call_column, species, counts)
    r = numbering.residues.merge(d[["sequence_id", "domain", "v_germline", "j_germline"]], on=["sequence_id", "domain"],
                                 how="left")
    imgt = r["imgt_position"].to_numpy(dtype=np.int64)
    v_mask, j_mask = _encoded(imgt, r["insertion"].astype(str).to_numpy())
    germ = np.full(len(r), "", dtype=object)
    for mask, column in ((v_mask, "v_germline"), (j_mask, "j_germline")):
        idx = np.flatnonzero(mask)
        seqs = r[column].to_numpy()[idx]
        germ[idx] = [s[p - 1] if isinstance(s, str) and len(s) >= p else "" for s, p in zip(seqs, imgt[idx])]
    germ[np.isin(germ, ["-", "X", "."])] = ""
    r = r.drop(columns=["v_germline", "j_germline"])
    r["germline"] = germ
    r["mutated"] = (germ != "") & (r["residue"].to_numpy() != germ)
    r.attrs.update(counts)
    return r


# --------------------------------------------------------------------------------------------------- SHM


def _bin(values: np.ndarray, bins: Sequence[tuple[str, float, float]], *, exclusive_low: bool) -> list[str | None]:
    out: list[str | None] = []
    for v in values:
        if v != v:  # NaN
            out.append(None)
            continue
        out.append(next((label for label, lo, hi in bins if (lo < v <= hi if exclusive_low else lo <= v <= hi)), None))
    return out


def _per_sequence(sequence_ids: Sequence[str], frame: pd.DataFrame, columns: Mapping[str, Any]) -> pd.DataFrame:
    """Measures in store sequence order from per-residue flags summed per sequence (NaN for absent sequences)."""
    import pandas as pd

    grouped = frame.groupby("sequence_id", sort=False).agg(**columns)
    return grouped.reindex(pd.Index(list(sequence_ids), name="sequence_id")).reset_index(drop=True)


def _germline_from(obs: pd.DataFrame, sequence_ids: Sequence[str], numbering: Numbering,
                   sequences: pd.DataFrame | None = None, *, v_call_column: str | None = None,
                   j_call_column: str | None = None, species: str = "human") -> ConceptLabels:
    import pandas as pd

    r = germline_residues(numbering, sequences=sequences, v_call_column=v_call_column, j_call_column=j_call_column,
                          species=species)
    counts: dict[str, Any] = {f"germline_{k.removeprefix('germline_')}": v for k, v in r.attrs.items()}
    compared = r[r["germline"] != ""]
    mutated = compared[compared["mutated"]]
    spans = pd.concat([
        residue_spans(mutated, "shm=mutated"),
        residue_spans(compared[~compared["mutated"]], "germline=conserved"),
        residue_spans(mutated, "germline_residue=" + mutated["germline"].astype(str)),
    ], ignore_index=True) if len(compared) else _empty_spans()
    measures = _per_sequence(sequence_ids, compared.assign(m=compared["mutated"].astype(np.int64)),
                             {"shm_count": ("m", "sum"), "shm_compared": ("m", "size")})
    measures["shm_fraction"] = measures["shm_count"] / measures["shm_compared"]
    identity = numbering.domains.groupby("sequence_id", sort=False)["v_identity"].max()
    measures["germline_v_identity"] = identity.reindex(list(sequence_ids)).to_numpy(dtype=float)
    assigned = measures["shm_compared"].notna().to_numpy()
    measures.loc[~assigned, "germline_v_identity"] = np.nan
    values = pd.DataFrame({"sequence_id": list(sequence_ids),
                           "shm_count": _bin(measures["shm_count"].to_numpy(dtype=float), SHM_BINS, exclusive_low=False)})
    values = values[values["shm_count"].notna()]
    numbered = set(numbering.domains["sequence_id"].astype(str))
    counts.update({"germline_compared_residues": int(len(compared)), "germline_mutated_residues": int(len(mutated)),
                   "germline_assigned": int(assigned.sum()),
                   "germline_unassigned": int(sum(1 for s, a in zip(sequence_ids, assigned) if s in numbered and not a)),
                   "germline_unnumbered": int(sum(1 for s in sequence_ids if s not in numbered))})
    if counts["germline_unassigned"]:
        log.info("germline: no germline assigned to %d numbered chain(s); they are unlabelled", counts["germline_unassigned"])
    labels = _build(obs, sequence_ids, spans, values, "germline", counts)
    labels.measures = measures[["shm_count", "shm_fraction", "germline_v_identity"]].astype(float)
    labels = scope_labels(labels, tokens=_token_mask(obs, compared), name=GERMLINE_SCOPE)
    return scope_labels(labels, sequences=assigned, name=ASSIGNED_SCOPE)


def germline_labels(store: ActivationStore, *, v_call_column: str | None = None, j_call_column: str | None = None,
                    species: str = "human", anarci_options: Mapping[str, Any] | None = None) -> ConceptLabels:
    """Somatic-hypermutation concepts of every chain in ``store`` (source ``"germline"``; see the module docstring).

    ``v_call_column`` / ``j_call_column`` name store columns holding the V / J gene of each chain (an AIRR file's
    ``v_call``, first call taken) to compare with instead of ANARCI's closest germline; genes ANARCI's set lacks
    leave their chain unlabelled and are counted in ``token_concepts.attrs`` (``germline_genes_not_in_anarci``).
    """
    obs = _obs(store)
    numbering = numbering_of(obs, anarci_options)
    return _germline_from(obs, _sequence_ids(store), numbering, store.sequences, v_call_column=v_call_column,
                          j_call_column=j_call_column, species=species)


# --------------------------------------------------------------------------------------------------- humanness


def humanness_residues(numbering: Numbering) -> pd.DataFrame:
    """The numbering's germline-encoded residues with ``human`` (seen at the IMGT position in a human germline of
    the chain type) and ``any_germline`` (seen there in a germline of any species); residues at positions no
    human germline covers are left out."""
    r = numbering.residues
    imgt = r["imgt_position"].to_numpy(dtype=np.int64)
    v_mask, j_mask = _encoded(imgt, r["insertion"].astype(str).to_numpy())
    r = r[v_mask | j_mask]
    human = np.zeros(len(r), dtype=bool)
    anywhere = np.zeros(len(r), dtype=bool)
    covered = np.zeros(len(r), dtype=bool)
    for k, (chain, pos, aa) in enumerate(zip(r["chain_type"], r["imgt_position"], r["residue"])):
        hs = _residue_sets(chain, True)[int(pos) - 1]
        covered[k] = bool(hs)
        human[k] = aa in hs
        anywhere[k] = human[k] or aa in _residue_sets(chain, False)[int(pos) - 1]
    return r.assign(human=human, any_germline=anywhere)[covered]


def _humanness_from(obs: pd.DataFrame, sequence_ids: Sequence[str], numbering: Numbering) -> ConceptLabels:
    import pandas as pd

    if numbering.scheme != "imgt":
        raise InputError("humanness needs the IMGT numbering scheme")
    r = humanness_residues(numbering)
    foreign = r[~r["human"]]
    spans = pd.concat([
        residue_spans(foreign, "non_human_residue"),
        residue_spans(foreign, np.where(foreign["any_germline"], "non_human_residue=other_species",
                                 "non_human_residue=no_germline")),
    ], ignore_index=True) if len(foreign) else _empty_spans()
    measures = _per_sequence(sequence_ids, r.assign(n=(~r["human"]).astype(np.int64)),
                             {"non_human": ("n", "sum"), "covered": ("n", "size")})
    fraction = (measures["non_human"] / measures["covered"]).to_numpy(dtype=float)
    values = pd.DataFrame({"sequence_id": list(sequence_ids),
                           "non_human_fraction": _bin(fraction, NON_HUMAN_BINS, exclusive_low=True)})
    values = values[values["non_human_fraction"].notna()]
    counts = {"humanness_covered_residues": int(len(r)), "humanness_non_human_residues": int(len(foreign)),
              "humanness_no_germline_residues": int((~r["any_germline"]).sum())}
    labels = _build(obs, sequence_ids, spans, values, "humanness", counts)
    labels.measures = pd.DataFrame({"non_human_fraction": fraction})
    return scope_labels(labels, tokens=_token_mask(obs, r), sequences=~np.isnan(fraction), name=HUMANNESS_SCOPE)


def humanness_labels(store: ActivationStore, *, anarci_options: Mapping[str, Any] | None = None) -> ConceptLabels:
    """Humanness concepts of every chain in ``store`` (source ``"humanness"``; see the module docstring)."""
    obs = _obs(store)
    numbering = numbering_of(obs, anarci_options)
    return _humanness_from(obs, _sequence_ids(store), numbering)
