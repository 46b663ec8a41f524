"""Live input for the catalog explorer: encode new sequences with the catalog's own model and SAE.

The page hands over pasted or uploaded text; this module turns it into validated records with the model's adapter
(through a temporary FASTA file the module writes itself, so the adapter's own reader and validator decide what
is valid) and adds the page's limits. Encoding itself is :meth:`workbench.catalog.Catalog.encode_sparse` (the
model up to the catalog's layer, the SAE, every feature divided by the catalog's ``max_activation``, so a value of
1 means "as strong as the feature's strongest firing on the catalog's sequences"; live values may exceed 1), which
returns the :class:`LiveResult` (:class:`workbench.catalog.EncodedSequences`) the page draws.

Antibody catalogs (those that number their sequences, ``obs["imgt"]``) number the live input too:
:func:`imgt_numbering` runs ANARCI (IMGT scheme) on it, so the page draws the activation track on IMGT columns with
the CDRs marked, as the feature browser does. ANARCI needs HMMER's ``hmmscan``; without it (or without ANARCI) the
track keeps raw positions and the page says why in one line.

Streamlit is imported inside the cached loaders alone, so the other functions can be used and tested without a
running app.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from workbench._catalog_encode import encode_sources
from workbench.catalog import EncodedSequences
from workbench.errors import InputError, WorkbenchError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = [
    "MAX_TEXT_CHARS",
    "MAX_SEQUENCES",
    "MAX_RESIDUES",
    "LiveResult",
    "live_sources",
    "load_model",
    "load_sae_cached",
    "to_fasta",
    "read_records",
    "top_features",
    "feature_track",
    "Numbered",
    "hmmscan_path",
    "imgt_numbering",
    "cached_numbering",
]

MAX_TEXT_CHARS = 100_000
"""Largest pasted or uploaded input, in characters (headers and line breaks included)."""
MAX_SEQUENCES = 20
"""Most records encoded at once."""
MAX_RESIDUES = 20_000
"""Most residues (tokens) over all records; each record must also fit the model's own length limit."""


LiveResult = EncodedSequences
"""Normalised SAE codes of live input, one row per residue (:class:`workbench.catalog.EncodedSequences`)."""


# --------------------------------------------------------------------------------------------------- loading


live_sources = encode_sources
"""``(model_source, sae_path, problem)`` of a catalog's provenance; ``problem`` explains why live input is off
(:func:`workbench._catalog_encode.encode_sources`, what :meth:`Catalog.encode` checks too)."""


def load_model(source: str) -> Any:
    """The catalog's model adapter, loaded once per server process (``st.cache_resource``)."""
    import streamlit as st

    @st.cache_resource(show_spinner="Loading the model ...", max_entries=2)
    def _load(src: str) -> Any:
        import workbench

        return workbench.load_adapter(src)

    return _load(source)


def load_sae_cached(path: str) -> Any:
    """The catalog's SAE, loaded once per server process (``st.cache_resource``)."""
    import streamlit as st

    @st.cache_resource(show_spinner="Loading the SAE ...", max_entries=2)
    def _load(folder: str) -> Any:
        from workbench.sae import load_sae

        return load_sae(folder)

    return _load(path)


# --------------------------------------------------------------------------------------------------- input


def to_fasta(text: str, *, default_id: str = "input") -> str:
    """FASTA text from pasted input: FASTA is kept as it is; a plain sequence becomes one record ``default_id``.

    A plain sequence may be split over lines (line breaks, tabs and spaces between lines are removed; spaces
    inside a line are kept, so the adapter reports them as invalid residues rather than silently joining words).
    Raises :class:`InputError` for empty or oversized input.
    """
    if len(text) > MAX_TEXT_CHARS:
        raise InputError(f"input has {len(text):,} characters; live input takes at most {MAX_TEXT_CHARS:,}")
    stripped = text.strip().lstrip("\ufeff")
    if not stripped:
        raise InputError("no sequence given: paste a sequence or FASTA records, or upload a FASTA file")
    if stripped.startswith(">"):
        return stripped + "\n"
    if ">" in stripped:
        raise InputError("malformed FASTA: text before the first '>' header line")
    lines = [line.strip() for line in stripped.splitlines() if line.strip()]
    return f">{default_id}\n" + "".join(lines) + "\n"


def read_records(adapter: Any, text: str) -> list[Any]:
    """Validated records of pasted or uploaded text, read by the adapter from a temporary FASTA file.

    The adapter checks the alphabet, ids and its model's length limit; this function adds the live-input limits
    (:data:`MAX_SEQUENCES`, :data:`MAX_RESIDUES`). Errors are :class:`WorkbenchError` with one line that names
    the input, not the temporary file.
    """
    fasta = to_fasta(text)
    fd, tmp = tempfile.mkstemp(prefix="workbench_live_", suffix=".fasta")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(fasta)
        try:
            records = adapter.read(tmp, format="fasta")
        except WorkbenchError as exc:
            raise type(exc)(_clean_message(str(exc), tmp)) from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    if len(records) > MAX_SEQUENCES:
        raise InputError(f"input has {len(records)} sequences; live input takes at most {MAX_SEQUENCES}")
    total = sum(int(adapter.n_kept(r)) for r in records)
    if total > MAX_RESIDUES:
        raise InputError(f"input has {total:,} residues in all; live input takes at most {MAX_RESIDUES:,}")
    return records


def _clean_message(message: str, tmp: str) -> str:
    """The first line of an adapter error, with the temporary file's path replaced by ``input``."""
    line = message.strip().splitlines()[0] if message.strip() else "invalid input"
    line = re.sub(r"\s*\(use --[a-z-]+[^)]*\)", "", line)  # command-line hints mean nothing in the app
    return line.replace(str(Path(tmp).resolve()), "input").replace(tmp, "input")


# --------------------------------------------------------------------------------------------------- views


def top_features(result: LiveResult, features: pd.DataFrame, *, sequence_id: str | None = None,
                 limit: int = 50) -> pd.DataFrame:
    """The features firing most strongly on the live input (or on one of its sequences), strongest first.

    Columns: ``feature``, ``max_activation`` (normalised by the catalog's maximum), ``n_residues`` (tokens where
    it fires), ``peak`` (``sequence_id:position residue`` of its strongest token), ``top_concept``, ``description``
    (from the catalog's ``features`` table).
    """
    import pandas as pd

    codes = result.codes
    obs = result.obs
    if sequence_id is not None:
        mask = (obs["sequence_id"] == sequence_id).to_numpy()
        codes = codes[np.flatnonzero(mask)]
        obs = obs.loc[mask].reset_index(drop=True)
    columns = ["feature", "max_activation", "n_residues", "peak", "top_concept", "description"]
    if codes.nnz == 0:
        return pd.DataFrame(columns=columns)
    csc = codes.tocsc()
    n_fire = np.diff(csc.indptr)
    active = np.flatnonzero(n_fire)
    maxes = np.asarray(csc.max(axis=0).todense()).ravel()
    argmax = np.asarray(csc.argmax(axis=0)).ravel()
    active = active[np.argsort(-maxes[active], kind="stable")][:limit]
    names = [result.feature_names[j] for j in active]
    peaks = [f"{obs.at[int(argmax[j]), 'sequence_id']}:{int(obs.at[int(argmax[j]), 'position'])} "
             f"{obs.at[int(argmax[j]), 'residue']}" for j in active]
    meta = features.reindex(names)

    def col(name: str) -> list[Any]:
        if name not in meta.columns:
            return [""] * len(names)
        return ["" if pd.isna(v) else str(v) for v in meta[name].tolist()]

    return pd.DataFrame({
        "feature": names,
        "max_activation": maxes[active].astype(float),
        "n_residues": n_fire[active].astype(int),
        "peak": peaks,
        "top_concept": col("top_concept"),
        "description": col("description"),
    }, columns=columns)


def feature_track(result: LiveResult, feature: str, sequence_id: str) -> np.ndarray:
    """Normalised activation of ``feature`` on every residue of ``sequence_id`` (input order)."""
    j = result.feature_names.index(feature)
    mask = np.flatnonzero((result.obs["sequence_id"] == sequence_id).to_numpy())
    return np.asarray(result.codes[mask][:, j].todense()).ravel().astype(np.float64)



# --------------------------------------------------------------------------------------------------- IMGT numbering


class Numbered(NamedTuple):
    """IMGT numbering of live input: per sequence the IMGT position of every residue (None outside the first
    numbered domain), its germline genes, and a one-line note when numbering was not possible."""

    positions: dict[str, list[int | None]]
    genes: dict[str, dict[str, str | None]]
    """``{sequence id: {"v_gene", "j_gene", "species", "chain_type"}}`` of the first domain."""
    note: str | None


def hmmscan_path() -> str | None:
    """HMMER's ``hmmscan`` on the PATH (ANARCI needs it), or None."""
    return shutil.which("hmmscan")


def imgt_numbering(sequences: dict[str, str]) -> Numbered:
    """IMGT positions of ``{id: sequence}`` by ANARCI (the first numbered domain of each sequence). Without
    ``hmmscan`` or ANARCI the result is empty with a note; sequences ANARCI does not number are left out (the note
    names how many)."""
    if hmmscan_path() is None:
        return Numbered({}, {}, "IMGT numbering needs HMMER's hmmscan (Debian: apt-get install hmmer), which is not "
                                "installed: positions are raw residue numbers.")
    try:
        from domains.sequence.annotations.anarci import number_sequences

        numbering = number_sequences(sequences, scheme="imgt", ncpu=1)
    except (ImportError, WorkbenchError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return Numbered({}, {}, f"IMGT numbering failed ({first}): positions are raw residue numbers.")
    res = numbering.residues
    res = res[res["domain"] == 0]
    col = numbering.position_col
    positions: dict[str, list[int | None]] = {}
    for sid, part in res.groupby("sequence_id", sort=False):
        n = len(sequences[str(sid)])
        out: list[int | None] = [None] * n
        for pos, imgt in zip(part["position"].to_numpy(), part[col].to_numpy()):
            if 1 <= int(pos) <= n:
                out[int(pos) - 1] = int(imgt)
        positions[str(sid)] = out
    genes: dict[str, dict[str, str | None]] = {}
    for row in numbering.domains[numbering.domains["domain"] == 0].itertuples(index=False):
        genes[str(row.sequence_id)] = {"v_gene": row.v_gene, "j_gene": row.j_gene,
                                       "species": row.v_species or row.species, "chain_type": row.chain_type}
    missing = [sid for sid in sequences if sid not in positions]
    note = None
    if missing:
        note = (f"ANARCI numbered no antibody domain in {len(missing)} of {len(sequences)} sequence(s) "
                f"({', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}): raw positions there.")
    return Numbered(positions, genes, note)


def cached_numbering(sequences: dict[str, str]) -> Numbered:
    """:func:`imgt_numbering`, cached per input (``st.cache_data``)."""
    import streamlit as st

    @st.cache_data(show_spinner="Numbering the input with ANARCI (IMGT) ...", max_entries=64)
    def _number(items: tuple[tuple[str, str], ...]) -> Numbered:
        return imgt_numbering(dict(items))

    return _number(tuple(sorted((str(k), str(v)) for k, v in sequences.items())))
