"""CDR lengths as concepts (source ``"cdr"``), from ANARCI's IMGT numbering.

IMGT CDR lengths are residue counts of IMGT CDR1 (27-38), CDR2 (56-65) and CDR3 (105-117), insertions included
(Lefranc et al. 2003, Dev. Comp. Immunol. 27:55). CDR-H3 length, the most variable feature of the antibody
repertoire, is binned (:data:`H3_BINS`; human IMGT CDR-H3 lengths centre near 15: Briney et al. 2019, Nature
566:393); CDR-L1 length is kept as its class (IMGT lengths 5-12 correspond to the canonical L1 structures of
Chothia & Lesk 1987, J. Mol. Biol. 196:901, and North et al. 2011, J. Mol. Biol. 406:228).

Concepts, per chain and per residue under the same names:

* ``cdr_h3_length=<bin>`` (heavy chains): the chain's sequence concept, and on the residues of its CDR-H3;
* ``cdr_l1_length=<n>`` (kappa and lambda chains): likewise on the residues of its CDR-L1.

The residue concepts are scoped to the residues of the loop they describe (scope ``cdr:H3`` / ``cdr:L1``): among
CDR-H3 residues, which belong to a long loop. Measures per sequence: ``cdr1_length``, ``cdr2_length``,
``cdr3_length`` (NaN for unnumbered chains; the first domain of multi-domain chains).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench.concepts import ConceptLabels, scope_labels

from ._common import _build, _empty_spans, _obs, _runs, _sequence_ids, _token_mask
from .anarci import Numbering, numbering_of

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from workbench.store import ActivationStore

__all__ = ["cdr_labels", "cdr_lengths", "H3_BINS"]

#: CDR-H3 length bins (IMGT residue counts): (label, lowest, highest).
H3_BINS: tuple[tuple[str, int, int], ...] = (
    ("<=10", 0, 10), ("11-13", 11, 13), ("14-16", 14, 16), ("17-19", 17, 19), ("20+", 20, 10**6),
)
_LIGHT = ("K", "L")


def _h3_bin(length: int) -> str:
    return next(label for label, lo, hi in H3_BINS if lo <= length <= hi)


def cdr_lengths(numbering: Numbering) -> pd.DataFrame:
    """One row per numbered domain: ``sequence_id``, ``domain``, ``chain_type``, ``cdr1_length``,
    ``cdr2_length``, ``cdr3_length`` (IMGT residue counts, insertions included)."""
    import pandas as pd

    r = numbering.residues
    keys = ["sequence_id", "domain"]
    out = numbering.domains[keys + ["chain_type"]].copy()
    for cdr in ("CDR1", "CDR2", "CDR3"):
        n = r[r["region"] == cdr].groupby(keys).size().rename(f"{cdr.lower()}_length")
        out = out.merge(n.reset_index(), on=keys, how="left")
        out[f"{cdr.lower()}_length"] = out[f"{cdr.lower()}_length"].fillna(0).astype(np.int64)
    return out if len(out) else pd.DataFrame(columns=keys + ["chain_type", "cdr1_length", "cdr2_length", "cdr3_length"])


def _cdr_from(obs: pd.DataFrame, sequence_ids: Sequence[str], numbering: Numbering) -> ConceptLabels:
    import pandas as pd

    lengths = cdr_lengths(numbering)
    lengths["concept"] = None
    heavy = lengths["chain_type"] == "H"
    light = lengths["chain_type"].isin(_LIGHT)
    lengths.loc[heavy, "concept"] = [f"cdr_h3_length={_h3_bin(int(n))}" for n in lengths.loc[heavy, "cdr3_length"]]
    lengths.loc[light, "concept"] = [f"cdr_l1_length={int(n)}" for n in lengths.loc[light, "cdr1_length"]]
    lengths.loc[lengths["concept"].notna() & (np.where(heavy, lengths["cdr3_length"], lengths["cdr1_length"]) == 0),
                "concept"] = None  # a chain without that loop numbered
    r = numbering.residues
    loops = pd.concat([r[(r["chain_type"] == "H") & (r["region"] == "CDR3")].assign(loop="H3"),
                       r[r["chain_type"].isin(_LIGHT) & (r["region"] == "CDR1")].assign(loop="L1")], ignore_index=True)
    loops = loops.merge(lengths[["sequence_id", "domain", "concept"]], on=["sequence_id", "domain"], how="inner")
    loops = loops[loops["concept"].notna()].sort_values(["sequence_id", "domain", "position"], kind="stable")
    spans = _empty_spans()
    if len(loops):
        runs = _runs(loops.reset_index(drop=True), "concept", group=("sequence_id", "domain"))
        spans = runs[["sequence_id", "start", "end", "concept"]]
    first = lengths.drop_duplicates("sequence_id")
    values = first[first["concept"].notna()][["sequence_id", "concept"]].copy()
    values[["group", "value"]] = values["concept"].str.split("=", n=1, expand=True)
    wide = values.pivot(index="sequence_id", columns="group", values="value").reset_index()
    counts: dict[str, Any] = {"cdr_chains": int(len(first)), "cdr_h3_loops": int(heavy.sum()),
                              "cdr_l1_loops": int(light.sum())}
    labels = _build(obs, sequence_ids, spans, wide if len(wide) else None, "cdr", counts)
    measures = first.set_index("sequence_id")[["cdr1_length", "cdr2_length", "cdr3_length"]]
    labels.measures = measures.reindex(list(sequence_ids)).reset_index(drop=True).astype(float)
    names = labels.token_concepts["concept"]
    for loop, prefix in (("H3", "cdr_h3_length="), ("L1", "cdr_l1_length=")):
        chosen = [c for c in names if c.startswith(prefix)]
        if chosen:
            mask = _token_mask(obs, loops[loops["loop"] == loop])
            labels = scope_labels(labels, tokens=mask, name=f"cdr:{loop}", token_concepts=chosen)
    ids = pd.Index(list(sequence_ids))
    seq_names = labels.sequence_concepts["concept"]
    for chains, prefix in ((("H",), "cdr_h3_length="), (_LIGHT, "cdr_l1_length=")):
        chosen = [c for c in seq_names if c.startswith(prefix)]
        if chosen:
            mask = ids.isin(first.loc[first["chain_type"].isin(chains), "sequence_id"].astype(str).tolist())
            labels = scope_labels(labels, sequences=mask, name=f"cdr:{'H3' if chains == ('H',) else 'L1'}",
                                  sequence_concepts=chosen)
    return labels


def cdr_labels(store: ActivationStore, *, anarci_options: Mapping[str, Any] | None = None) -> ConceptLabels:
    """CDR-length concepts of every chain in ``store`` (source ``"cdr"``; see the module docstring)."""
    obs = _obs(store)
    numbering = numbering_of(obs, anarci_options)
    return _cdr_from(obs, _sequence_ids(store), numbering)
