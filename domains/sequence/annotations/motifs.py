"""Sequence motifs as concepts (source ``"motif"``), found in the store's own residues.

``motif=N-glycosylation sequon`` (N-x-S/T, x not P), ``motif=Cys`` and the amino-acid identity ``aa=A`` ...
``aa=Y``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from workbench.concepts import ConceptLabels

from ._common import SPAN_COLUMNS, STANDARD_AA, _build, _obs, _sequence_ids, _sequences_from_obs

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from workbench.store import ActivationStore

__all__ = ["motif_labels"]

_SEQUON = re.compile(r"(?=N[^P][ST])")


def _motif_from(obs: pd.DataFrame, sequence_ids: Sequence[str]) -> ConceptLabels:
    import pandas as pd

    sequences = _sequences_from_obs(obs)
    rows: list[tuple[str, int, int, str]] = []
    for sid, seq in sequences.items():
        rows.extend((sid, m.start() + 1, m.start() + 3, "motif=N-glycosylation sequon") for m in _SEQUON.finditer(seq))
    spans = [pd.DataFrame(rows, columns=list(SPAN_COLUMNS))]
    residues = obs["residue"].astype(str).to_numpy()
    for aa in STANDARD_AA:
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

