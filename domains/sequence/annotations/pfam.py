"""Pfam domain annotation with pyhmmer: profile-HMM hits on sequences, and concept labels for a store.

:func:`pfam_hits` scans sequences against a HMMER3 profile file (Pfam-A, a subset of it, or any HMMER3 ``.hmm``,
pressed with ``hmmpress`` or not) the way ``hmmscan`` does, and returns one row per domain hit.
:func:`pfam_labels` turns those hits into :class:`~workbench.concepts.ConceptLabels` for an activation store
(source ``"pfam"``; also reachable as ``sequence_labels(store, pfam_hmm=...)``).

Concept names use the group ``pfam_hmm`` (``pfam_hmm=Pkinase``, ``pfam_hmm=fn3``): the ``uniprot`` source already
uses the group ``pfam`` for the Pfam *accessions* of UniProt cross-references (``pfam=PF00069``), and keeping the
two apart lets one compare database annotation with HMM hits.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from workbench.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from workbench.concepts import ConceptLabels
    from workbench.store import ActivationStore

__all__ = ["pfam_hits", "pfam_labels", "HIT_COLUMNS", "CONCEPT_GROUP"]

PathLike = str | os.PathLike[str]
BitCutoffs = Literal["gathering", "trusted", "noise"]

#: Columns of :func:`pfam_hits`, in order.
HIT_COLUMNS: tuple[str, ...] = (
    "sequence_id", "hmm_name", "hmm_accession", "start", "end", "ali_start", "ali_end", "hmm_from", "hmm_to",
    "hmm_length", "i_evalue", "score",
)
#: Group of the concepts :func:`pfam_labels` makes (``pfam_hmm=<HMM name>``).
CONCEPT_GROUP = "pfam_hmm"

_CUTOFFS = ("gathering", "trusted", "noise")


def _text(value: Any) -> str:
    """A pyhmmer name/accession as text (bytes before pyhmmer 0.11, str after; None when absent)."""
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)


@contextlib.contextmanager
def _profiles(path: Path) -> Iterator[tuple[Any, Any]]:
    """``(alphabet, profiles)`` of a HMMER3 file: a pressed database is streamed from disk as ``hmmscan`` does,
    a plain text file is read into memory. Unreadable files are an :class:`InputError` naming the path."""
    from pyhmmer import plan7

    if not path.is_file():
        raise InputError(f"{path}: no such HMM file")
    with contextlib.ExitStack() as stack:
        try:
            hmm_file = stack.enter_context(plan7.HMMFile(path))
            first = hmm_file.read()
            if first is not None and hmm_file.is_pressed():
                hmm_file.rewind()
                profiles: Any = stack.enter_context(hmm_file.optimized_profiles())
            elif first is not None:
                profiles = [first, *hmm_file]
        except (ValueError, EOFError, OSError) as exc:  # not HMMER, empty, truncated, mixed alphabets
            raise InputError(f"{path}: not a readable HMMER3 profile file ({' '.join(str(exc).split())[:200]})"
                             ) from exc
        if first is None:
            raise InputError(f"{path}: the HMM file holds no profiles")
        yield first.alphabet, profiles


def pfam_hits(sequences: Mapping[str, str], hmm_path: PathLike, *, e_value: float = 1e-3, cpus: int = 1,
              bit_cutoffs: BitCutoffs | None = None) -> pd.DataFrame:
    """Domain hits of the profile HMMs in ``hmm_path`` on ``sequences`` (``{sequence_id: sequence}``).

    Each sequence is scanned against every profile of the file with :func:`pyhmmer.hmmer.hmmscan` (E-values are
    per sequence, as the ``hmmscan`` program reports them, so they do not depend on the other sequences given).
    A domain is kept when HMMER *includes* it: its hit's sequence E-value and its own independent E-value
    (``i_evalue``) are both at most ``e_value``. With ``bit_cutoffs`` (``"gathering"``, ``"trusted"`` or
    ``"noise"``), the models' own GA / TC / NC bit-score thresholds decide instead, as Pfam's curated annotation
    does (``--cut_ga``), and ``e_value`` is ignored; a model without that cutoff is an :class:`InputError`.

    Returns one row per domain, ordered like ``sequences`` and then by position, with the columns
    :data:`HIT_COLUMNS`: ``sequence_id``; ``hmm_name``, ``hmm_accession`` (``""`` when the model has none);
    ``start``, ``end``: the domain's **envelope** on the sequence, 1-based inclusive (the region HMMER assigns to
    the domain; the boundaries Pfam reports); ``ali_start``, ``ali_end``: the aligned part of it, 1-based
    inclusive (always within the envelope); ``hmm_from``, ``hmm_to``, ``hmm_length``: the matched model
    positions and the model length; ``i_evalue``; ``score`` (domain bit score). Empty sequences get no hits.

    A missing, unreadable or non-HMMER file is an :class:`InputError` naming ``hmm_path``; so is a sequence with
    characters the models' alphabet cannot encode. ``cpus`` is the number of threads (0: all cores).
    """
    import pandas as pd
    from pyhmmer import easel, hmmer

    if not (isinstance(e_value, (int, float)) and math.isfinite(e_value) and e_value > 0):
        raise InputError(f"e_value must be a positive number, got {e_value!r}")
    if not isinstance(cpus, int) or isinstance(cpus, bool) or cpus < 0:
        raise InputError(f"cpus must be a non-negative integer, got {cpus!r}")
    if bit_cutoffs is not None and bit_cutoffs not in _CUTOFFS:
        raise InputError(f"bit_cutoffs must be one of {', '.join(_CUTOFFS)} or None, got {bit_cutoffs!r}")
    path = Path(hmm_path)
    items = [(str(k), str(v)) for k, v in sequences.items()]
    rows: list[tuple[Any, ...]] = []
    with _profiles(path) as (alphabet, profiles):
        ids: list[str] = []
        queries = []
        for sid, seq in items:
            if not seq:
                continue
            try:
                queries.append(easel.TextSequence(sequence=seq).digitize(alphabet))
            except ValueError:
                raise InputError(f"sequence {sid!r} has characters the alphabet of the HMMs in {path} cannot encode"
                                 ) from None
            ids.append(sid)
        if not queries:
            return _empty_hits()
        thresholds: dict[str, Any] = (
            {"bit_cutoffs": bit_cutoffs} if bit_cutoffs is not None
            else {"E": e_value, "domE": e_value, "incE": e_value, "incdomE": e_value}
        )
        try:
            # hmmscan yields one TopHits per query, in query order.
            for sid, top_hits in zip(ids, hmmer.hmmscan(queries, profiles, cpus=cpus, **thresholds)):
                for hit in top_hits:
                    if not hit.included:
                        continue
                    for domain in hit.domains:
                        if not domain.included:
                            continue
                        ali = domain.alignment
                        rows.append((
                            sid, _text(ali.hmm_name), _text(ali.hmm_accession), int(domain.env_from),
                            int(domain.env_to), int(ali.target_from), int(ali.target_to), int(ali.hmm_from),
                            int(ali.hmm_to), int(ali.hmm_length), float(domain.i_evalue), float(domain.score),
                        ))
        except ValueError as exc:  # MissingCutoffs, AlphabetMismatch (both ValueError subclasses)
            raise InputError(f"{path}: cannot scan with these profiles ({' '.join(str(exc).split())[:200]})") from exc
    if not rows:
        return _empty_hits()
    frame = pd.DataFrame(rows, columns=list(HIT_COLUMNS))
    order = {sid: i for i, sid in enumerate(ids)}
    frame["_order"] = frame["sequence_id"].map(order)
    frame = frame.sort_values(["_order", "start", "end", "hmm_name"], kind="stable").drop(columns="_order")
    return frame.reset_index(drop=True)


def _empty_hits() -> pd.DataFrame:
    import numpy as np
    import pandas as pd

    dtypes: dict[str, Any] = {c: np.int64 for c in ("start", "end", "ali_start", "ali_end", "hmm_from", "hmm_to",
                                                    "hmm_length")}
    dtypes.update({"i_evalue": np.float64, "score": np.float64})
    return pd.DataFrame({c: pd.Series(dtype=dtypes.get(c, object)) for c in HIT_COLUMNS})


def _pfam_from(obs: pd.DataFrame, sequence_ids: Sequence[str], hmm_path: PathLike, *, e_value: float = 1e-3,
               cpus: int = 1, bit_cutoffs: BitCutoffs | None = None) -> ConceptLabels:
    """Labels from the store's token table (what :func:`~domains.sequence.annotations.sequence_labels` calls)."""
    from ._common import _build, _sequences_from_obs

    hits = pfam_hits(_sequences_from_obs(obs), hmm_path, e_value=e_value, cpus=cpus, bit_cutoffs=bit_cutoffs)
    concept = f"{CONCEPT_GROUP}=" + hits["hmm_name"].astype(str)
    # One span per domain hit: labels_from_spans makes each its own instance (domain-level recall).
    spans = hits[["sequence_id", "start", "end"]].assign(concept=concept)
    values = hits[["sequence_id"]].assign(**{CONCEPT_GROUP: hits["hmm_name"].astype(str)}).drop_duplicates()
    counts = {"pfam_domains": len(hits), "pfam_sequences_with_hits": int(hits["sequence_id"].nunique()),
              "pfam_hmm_file": str(hmm_path)}
    return _build(obs, sequence_ids, spans, values, "pfam", counts)


def pfam_labels(store: ActivationStore, hmm_path: PathLike, *, e_value: float = 1e-3, cpus: int = 1,
                bit_cutoffs: BitCutoffs | None = None) -> ConceptLabels:
    """Pfam domain concepts for ``store`` (source ``"pfam"``), from :func:`pfam_hits` on the store's own residues.

    Token concepts ``pfam_hmm=<HMM name>`` (``pfam_hmm=Pkinase``): each kept domain hit is one span (its envelope,
    see :func:`pfam_hits`) and one instance, so repeated domains (fn3 repeats) count separately for domain-level
    recall. Sequence concepts ``pfam_hmm=<HMM name>`` for every sequence with at least one hit of that model.
    The group is ``pfam_hmm``, not ``pfam``, because the ``uniprot`` source names UniProt's Pfam cross-references
    ``pfam=<accession>``. A store that truncated its sequences is annotated on what it holds (a domain cut by the
    end may be missed). ``token_concepts.attrs`` holds ``pfam_domains``, ``pfam_sequences_with_hits`` and
    ``pfam_hmm_file``. ``e_value``, ``cpus`` and ``bit_cutoffs`` are those of :func:`pfam_hits`.
    """
    from ._common import _obs, _sequence_ids

    return _pfam_from(_obs(store), _sequence_ids(store), hmm_path, e_value=e_value, cpus=cpus,
                      bit_cutoffs=bit_cutoffs)
