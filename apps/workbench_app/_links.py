"""Links out of the catalog explorer to public databases, built from the identifiers a catalog holds.

They are plain links for the user's browser (Markdown ``[text](url)``, which Streamlit renders as ``<a href>``
opening a new tab); the app itself never fetches them. Every URL starts with one of :data:`LINK_OUT_PREFIXES`
(the tests allow no other external address in the pages), and every identifier is percent-encoded.

- Thera-SAbDab: catalogs built from the Thera-SAbDab table (sequence ids ``Name|heavy``, a ``Target`` column): the
  therapeutic's record (:func:`therasabdab_url`).
- UniProt: the gene symbols of a Thera-SAbDab ``Target`` (``PDCD1/CD279/PD1;CD3E`` -> ``PDCD1``, ``CD3E``:
  :func:`uniprot_gene_url`), and sequence ids that are UniProt accessions (``sp|P01857|IGHG1_HUMAN``, ``P01857``:
  :func:`uniprot_entry_url`).
- IMGT: germline genes (``IGHV1-2*02``: IMGT/GENE-DB, :func:`imgt_gene_url`) and the IMGT unique numbering of
  positions and regions (:data:`IMGT_NUMBERING_URL`) for ``imgt``, ``region``, ``chain_region`` and CDR-length
  concepts; Pfam and GO concepts go to InterPro and QuickGO.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

__all__ = ["LINK_OUT_PREFIXES", "IMGT_NUMBERING_URL", "therasabdab_url", "uniprot_gene_url", "uniprot_entry_url",
           "imgt_gene_url", "concept_links", "sequence_links", "target_genes", "is_therasabdab", "md_links",
           "gene_links"]

THERASABDAB = "https://opig.stats.ox.ac.uk/webapps/sabdab-sabpred/therasabdab/search/"
UNIPROT = "https://www.uniprot.org/uniprotkb"
IMGT_GENEDB = "https://www.imgt.org/genedb/GENElect"
IMGT_NUMBERING_URL = "https://www.imgt.org/IMGTScientificChart/Numbering/IMGTIGVLsuperfamily.html"
INTERPRO_PFAM = "https://www.ebi.ac.uk/interpro/entry/pfam/"
QUICKGO = "https://www.ebi.ac.uk/QuickGO/term/"
LINK_OUT_PREFIXES: tuple[str, ...] = (THERASABDAB, UNIPROT, "https://www.imgt.org/", INTERPRO_PFAM, QUICKGO)
"""Every external address the app's pages may show (links for the user's browser)."""

_IMGT_SPECIES = {"human": "Homo sapiens", "mouse": "Mus musculus", "rat": "Rattus norvegicus",
                 "rabbit": "Oryctolagus cuniculus", "rhesus": "Macaca mulatta", "pig": "Sus scrofa",
                 "alpaca": "Vicugna pacos", "cow": "Bos taurus"}
_ACCESSION = re.compile(r"^(?:[OPQ][0-9][A-Z0-9]{3}[0-9]|[A-NR-Z][0-9](?:[A-Z][A-Z0-9]{2}[0-9]){1,2})(?:-\d+)?$")
_GENE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.\-]{0,29}$")
_IMGT_GENE = re.compile(r"^(?:IG[HKL]|TR[ABGD])[VDJC][A-Za-z0-9/\-]*(?:\*\d+)?$")
_NUMBERING_GROUPS = ("imgt", "region", "chain_region", "cdr_h3_length", "cdr_l1_length", "cdr_length")


def therasabdab_url(therapeutic: str) -> str:
    """Thera-SAbDab's record of a therapeutic (its INN, ``Abagovomab``)."""
    return f"{THERASABDAB}?therapeutic={quote(str(therapeutic).strip(), safe='')}"


def uniprot_gene_url(gene: str) -> str:
    """UniProtKB's reviewed entries of a gene symbol (``PDCD1``)."""
    return f"{UNIPROT}?query={quote(f'gene:{str(gene).strip()} AND reviewed:true', safe=':')}"


def uniprot_entry_url(accession: str) -> str:
    """UniProtKB's entry of an accession (``P01857``)."""
    return f"{UNIPROT}/{quote(str(accession).strip(), safe='')}/entry"


def imgt_gene_url(gene: str, species: str | None = None) -> str:
    """IMGT/GENE-DB's page of a germline gene (``IGHV1-2*02`` -> ``IGHV1-2``), for ``species`` (ANARCI's name:
    ``human``, ``mouse`` ...; the Latin name is sent) when known."""
    name = str(gene).strip().split("*", 1)[0]
    url = f"{IMGT_GENEDB}?query=2+{quote(name, safe='')}"
    latin = _IMGT_SPECIES.get(str(species or "").lower())
    return url + (f"&species={quote(latin)}" if latin else "")


def is_therasabdab(sequences: Any) -> bool:
    """Whether a catalog's ``obs`` comes from the Thera-SAbDab table (its ``Target`` and ``Est. Status`` columns)."""
    cols = set(getattr(sequences, "columns", []))
    return {"Target", "Est. Status"} <= cols


def target_genes(target: Any) -> list[str]:
    """Gene symbols of a Thera-SAbDab ``Target`` (``"PDCD1/CD279/PD1;CD3E"`` -> ``["PDCD1", "CD3E"]``: the first
    name of each target); nothing for missing or odd values."""
    if target is None or not isinstance(target, str):
        return []
    out = []
    for part in target.split(";"):
        name = part.split("/", 1)[0].strip()
        if _GENE.match(name) and name.lower() not in ("na", "nan", "none", "tbc") and name not in out:
            out.append(name)
    return out


def _accession(sequence_id: str) -> str | None:
    """The UniProt accession a sequence id names (``sp|P01857|IGHG1_HUMAN``, ``P01857``), else None."""
    parts = str(sequence_id).split("|")
    if len(parts) >= 2 and parts[0] in ("sp", "tr"):
        return parts[1] if _ACCESSION.match(parts[1]) else None
    return parts[0] if _ACCESSION.match(parts[0]) else None


def sequence_links(sequence_id: str, row: Any = None, *, therasabdab: bool = False) -> list[tuple[str, str]]:
    """``(label, url)`` links of one catalog sequence: its Thera-SAbDab record and its targets in UniProt
    (``therasabdab``: the catalog comes from that table; ``row`` is its ``obs`` row), or its UniProt entry."""
    out: list[tuple[str, str]] = []
    sid = str(sequence_id)
    if therasabdab:
        name = sid.split("|", 1)[0].strip()
        if name:
            out.append(("Thera-SAbDab", therasabdab_url(name)))
        target = row.get("Target") if row is not None and hasattr(row, "get") else None
        out += [(f"{g} (UniProt)", uniprot_gene_url(g)) for g in target_genes(target)]
        return out
    acc = _accession(sid)
    if acc is not None:
        out.append((f"{acc} (UniProt)", uniprot_entry_url(acc)))
    return out


def concept_links(concept: str) -> list[tuple[str, str]]:
    """``(label, url)`` links of a concept: the IMGT numbering for positions, regions and CDR lengths, IMGT/GENE-DB
    for germline genes (``v_gene=IGHV1-2``, ``v_family=IGHV1``), InterPro for Pfam, QuickGO for GO terms."""
    group, _, value = str(concept).partition("=")
    value = value.strip()
    if group in _NUMBERING_GROUPS or group.startswith("cdr"):
        return [("IMGT unique numbering", IMGT_NUMBERING_URL)]
    if value and _IMGT_GENE.match(value):
        return [(f"{value} (IMGT/GENE-DB)", imgt_gene_url(value))]
    if group == "pfam" and re.match(r"^PF\d{5}$", value):
        return [(f"{value} (InterPro)", f"{INTERPRO_PFAM}{value}/")]
    if group == "go" and re.match(r"^GO:\d{7}$", value):
        return [(f"{value} (QuickGO)", f"{QUICKGO}{value}")]
    return []


def gene_links(genes: list[tuple[str, str | None]]) -> list[tuple[str, str]]:
    """IMGT/GENE-DB links of germline genes given as ``(gene, species)`` (empty genes skipped, each gene once)."""
    seen: set[str] = set()
    out = []
    for gene, species in genes:
        if not gene or not isinstance(gene, str) or gene in seen or not _IMGT_GENE.match(gene):
            continue
        seen.add(gene)
        out.append((gene, imgt_gene_url(gene, species)))
    return out


def md_links(links: list[tuple[str, str]]) -> str:
    """``[label](url) · [label](url)`` (labels Markdown-escaped; URLs are percent-encoded already)."""
    from apps.workbench_app._views import md_escape

    return " · ".join(f"[{md_escape(label)}]({url})" for label, url in links)
