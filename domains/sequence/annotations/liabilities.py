"""Developability liabilities as concepts (source ``"liability"``): chemical-modification motifs, split by region.

The standard motif lists of antibody developability assessment (Jarasch et al. 2015, J. Pharm. Sci. 104:1885;
Lu et al. 2019, mAbs 11:45 for deamidation and isomerisation in 131 clinical-stage antibodies; Raybould et al.
2019, PNAS 116:4025, TAP, for unpaired cysteines and N-glycosylation sequons):

======================  =====================  ================================================================
concept value           motif                  chemistry
======================  =====================  ================================================================
``deamidation``         ``N[GSTNH]``           Asn deamidation (NG fastest)
``isomerisation``       ``D[GSTDH]``           Asp isomerisation to isoAsp (DG fastest)
``N-glycosylation``     ``N[^P][ST]``          N-linked glycosylation sequon
``fragmentation``       ``DP``                 acid-labile Asp-Pro bond
``oxidation``           ``M``, ``W`` in CDRs   Met / Trp oxidation (in the CDRs, where it can touch binding)
``unpaired Cys``        ``C``                  a Cys other than IMGT 23 / 104 in a domain with an odd number of them
======================  =====================  ================================================================

Per residue, every motif occurrence is one span (overlapping occurrences are all found): ``liability=<value>``
anywhere in the sequence, and ``liability_region=<value>:CDR`` / ``liability_region=<value>:FR`` by the IMGT
region of the motif's first residue (numbered chains only: scope ``anarci:numbered``). ``oxidation`` and
``unpaired Cys`` need the numbering, so they exist only per region. Measures per sequence:
``liabilities_cdr`` and ``liabilities_fr`` (motif occurrences in CDRs / frameworks of numbered chains).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench.concepts import ConceptLabels, scope_labels

from ._common import SPAN_COLUMNS, _build, _empty_spans, _obs, _sequence_ids, _sequences_from_obs
from .anarci import NUMBERED_SCOPE, Numbering, numbered_scope, numbering_of

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from workbench.store import ActivationStore

__all__ = ["liability_labels", "LIABILITY_MOTIFS", "CANONICAL_CYS"]

#: Liability name -> regular expression of the motif (a lookahead, so overlapping occurrences are all found).
LIABILITY_MOTIFS: Mapping[str, str] = {
    "deamidation": r"(?=(N[GSTNH]))",
    "isomerisation": r"(?=(D[GSTDH]))",
    "N-glycosylation": r"(?=(N[^P][ST]))",
    "fragmentation": r"(?=(DP))",
}
#: IMGT positions of the two cysteines of the V domain's conserved disulfide.
CANONICAL_CYS: tuple[int, int] = (23, 104)


def _motif_spans(sequences: Mapping[str, str]) -> pd.DataFrame:
    """``sequence_id, start, end, liability`` for every motif occurrence (1-based inclusive)."""
    import pandas as pd

    rows = [(sid, m.start() + 1, m.start() + len(m.group(1)), name)
            for sid, seq in sequences.items() for name, pattern in LIABILITY_MOTIFS.items()
            for m in re.finditer(pattern, seq)]
    return pd.DataFrame(rows, columns=["sequence_id", "start", "end", "liability"])


def _numbered_spans(numbering: Numbering) -> pd.DataFrame:
    """Oxidation-prone M / W in CDRs and unpaired cysteines, from the numbering (one-residue spans)."""
    import pandas as pd

    r = numbering.residues
    if r.empty:
        return pd.DataFrame(columns=["sequence_id", "start", "end", "liability"])
    cdr = r["region"].astype(str).str.startswith("CDR")
    ox = r[cdr & r["residue"].isin(["M", "W"])]
    extra = r[(r["residue"] == "C") & ~((r["insertion"] == "") & r["imgt_position"].isin(CANONICAL_CYS))]
    odd = extra.groupby(["sequence_id", "domain"])["position"].transform("size") % 2 == 1
    unpaired = extra[odd.to_numpy(dtype=bool)] if len(extra) else extra
    return pd.concat([
        ox.assign(start=ox["position"], end=ox["position"], liability="oxidation"),
        unpaired.assign(start=unpaired["position"], end=unpaired["position"], liability="unpaired Cys"),
    ], ignore_index=True)[["sequence_id", "start", "end", "liability"]]


def _liability_from(obs: pd.DataFrame, sequence_ids: Sequence[str], numbering: Numbering | None) -> ConceptLabels:
    import pandas as pd

    motifs = _motif_spans(_sequences_from_obs(obs))
    parts = [motifs.assign(concept="liability=" + motifs["liability"])]
    measures = None
    if numbering is not None and numbering.scheme == "imgt":
        where = numbering.residues[["sequence_id", "position", "region"]].rename(columns={"position": "start"})
        located = pd.concat([motifs, _numbered_spans(numbering)], ignore_index=True).merge(
            where, on=["sequence_id", "start"], how="inner")
        located["where"] = np.where(located["region"].astype(str).str.startswith("CDR"), "CDR", "FR")
        parts.append(located.assign(concept="liability_region=" + located["liability"] + ":" + located["where"]))
        per = located.assign(cdr=(located["where"] == "CDR").astype(np.int64), fr=(located["where"] == "FR").astype(np.int64))
        sums = per.groupby("sequence_id")[["cdr", "fr"]].sum()
        numbered = set(numbering.domains["sequence_id"].astype(str))
        index = pd.Index(list(sequence_ids))
        measures = sums.reindex(index).fillna(0).rename(columns={"cdr": "liabilities_cdr", "fr": "liabilities_fr"})
        measures.loc[~index.isin(list(numbered))] = np.nan
        measures = measures.reset_index(drop=True).astype(float)
    spans = pd.concat([p[list(SPAN_COLUMNS)] for p in parts], ignore_index=True) if len(parts) else _empty_spans()
    counts: dict[str, Any] = {f"liability_{k.replace(' ', '_')}": int(v) for k, v in motifs["liability"].value_counts().items()}
    labels = _build(obs, sequence_ids, spans, None, "liability", counts)
    labels.measures = measures
    if numbering is not None:
        regional = [c for c in labels.token_concepts["concept"] if c.startswith("liability_region=")]
        tokens, _ = numbered_scope(obs, sequence_ids, numbering)
        labels = scope_labels(labels, tokens=tokens, name=NUMBERED_SCOPE, token_concepts=regional)
    return labels


def liability_labels(store: ActivationStore, *, numbered: bool = True,
                     anarci_options: Mapping[str, Any] | None = None) -> ConceptLabels:
    """Developability-liability concepts of every sequence in ``store`` (source ``"liability"``; see the module
    docstring). ``numbered=False`` skips ANARCI and gives the whole-sequence motifs only (for non-antibodies)."""
    obs = _obs(store)
    numbering = numbering_of(obs, anarci_options) if numbered else None
    return _liability_from(obs, _sequence_ids(store), numbering)
