"""Live input for the catalog explorer: encode new sequences with the catalog's own model and SAE.

The page hands over pasted or uploaded text; this module turns it into validated records with the model's adapter
(through a temporary FASTA file the module writes itself, so the adapter's own reader and validator decide what
is valid), runs the model up to the catalog's layer, encodes the tokens with the SAE and normalises every feature
by the catalog's ``max_activation``, so a value of 1 means "as strong as the feature's strongest firing on the
catalog's sequences" (live values may exceed 1).

Everything here is domain-free: it talks to :class:`workbench.adapter.Adapter` (``read``, ``batches``,
``activations``) and :class:`workbench.sae.SparseAutoencoder` (``encode_sparse``) only. Streamlit is imported
inside the two cached loaders alone, so the encoding functions can be used and tested without a running app.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench.errors import InputError, WorkbenchError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import scipy.sparse as sp

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
    "encode_records",
    "encode_text",
    "top_features",
    "feature_track",
]

MAX_TEXT_CHARS = 100_000
"""Largest pasted or uploaded input, in characters (headers and line breaks included)."""
MAX_SEQUENCES = 20
"""Most records encoded at once."""
MAX_RESIDUES = 20_000
"""Most residues (tokens) over all records; each record must also fit the model's own length limit."""
TOKENS_PER_BATCH = 2048
"""Padded tokens per forward pass (and per SAE encode), which bounds memory for wide SAEs."""


@dataclass(frozen=True)
class LiveResult:
    """Normalised SAE codes of live input, one row per kept token."""

    ids: list[str]
    """Record ids, in input order."""
    sequences: dict[str, str]
    """Record id to its sequence (as the adapter validated it)."""
    obs: pd.DataFrame
    """One row per token: ``sequence_id``, ``position`` (1-based), ``residue``, in the row order of ``codes``."""
    codes: sp.csr_matrix
    """``(n_tokens, n_features)`` activations divided by the catalog's ``max_activation`` (0 = not firing)."""
    feature_names: list[str]
    """Feature ids (``f00000``...), the columns of ``codes``."""

    @property
    def n_tokens(self) -> int:
        return int(self.codes.shape[0])


# --------------------------------------------------------------------------------------------------- loading


def live_sources(provenance: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    """``(model_source, sae_path, problem)`` from a catalog's provenance; ``problem`` explains why live input is off.

    Live input needs the model the catalog was built with (``model_source``, what :func:`workbench.load_adapter`
    takes) and the SAE folder (``sae_path``) present on this machine.
    """
    model = provenance.get("model_source")
    sae_path = provenance.get("sae_path")
    model = str(model) if model else None
    sae_path = str(sae_path) if sae_path else None
    if not model:
        return model, sae_path, ("this catalog does not record the model it was built with (provenance has no "
                                 "model_source); rebuild it with `workbench annotate` to use live input")
    if not sae_path:
        return model, sae_path, ("this catalog does not record its SAE folder (provenance has no sae_path); "
                                 "live input needs the SAE the catalog was built with")
    if not (Path(sae_path) / "cfg.json").is_file():
        return model, sae_path, (f"live input needs the SAE folder the catalog was built with ({sae_path}), "
                                 "which is not on this machine")
    return model, sae_path, None


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


# --------------------------------------------------------------------------------------------------- encoding


def encode_records(
    adapter: Any, sae: Any, records: list[Any], *, layer: int, max_activation: np.ndarray, feature_names: list[str]
) -> LiveResult:
    """Run ``records`` through the model to ``layer``, encode every token with ``sae`` and normalise.

    ``max_activation`` is the catalog's per-feature maximum (``var["max_activation"]``, SAE units); features whose
    maximum is 0 (dead in the catalog) keep their raw SAE value, so a live firing of a dead feature still shows.
    Raises :class:`WorkbenchError` when the SAE does not fit the catalog (width) or the model (width, layer).
    """
    import pandas as pd
    import scipy.sparse as sp
    import torch

    width = int(sae.cfg.width)
    if width != len(feature_names) or len(max_activation) != width:
        raise WorkbenchError(f"the SAE has {width} features but the catalog has {len(feature_names)}: not the SAE "
                             "the catalog was built with")
    if int(sae.cfg.d_in) != int(adapter.d_model):
        raise WorkbenchError(f"the SAE reads {sae.cfg.d_in}-wide activations but the model's layers are "
                             f"{adapter.d_model} wide: not the model the catalog was built with")
    sae_layer = getattr(sae.cfg, "layer", None)
    if sae_layer is not None and int(sae_layer) >= 0 and int(sae_layer) != int(layer):
        raise WorkbenchError(f"the SAE was trained on layer {sae_layer} but the catalog describes layer {layer}")
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    obs_parts: list[pd.DataFrame] = []
    offset = 0
    for batch in adapter.batches(records, tokens_per_batch=TOKENS_PER_BATCH):
        acts = adapter.activations(batch, [layer])
        x = acts.layers[layer].float().cpu()
        with torch.no_grad():
            codes = sae.encode_sparse(x)
        keep = codes.values > 0
        rows.append((codes.rows[keep] + offset).numpy())
        cols.append(codes.cols[keep].numpy())
        vals.append(codes.values[keep].float().numpy())
        obs_parts.append(acts.obs[["sequence_id", "position", "residue"]].reset_index(drop=True))
        offset += int(x.shape[0])
    columns = ["sequence_id", "position", "residue"]
    obs = pd.concat(obs_parts, ignore_index=True) if obs_parts else pd.DataFrame(columns=columns)
    scale = np.asarray(max_activation, dtype=np.float64)
    scale = np.where(scale > 0, scale, 1.0)
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    v = np.concatenate(vals).astype(np.float64) if vals else np.zeros(0)
    codes_csr = sp.csr_matrix(((v / scale[c]).astype(np.float32), (r, c)), shape=(offset, width))
    codes_csr.sum_duplicates()
    # batches are sorted by length: put the tokens back in input order (record, then position)
    order_ids = [str(rec.id) for rec in records]
    rank = {rid: i for i, rid in enumerate(order_ids)}
    perm = np.lexsort((obs["position"].to_numpy(), obs["sequence_id"].astype(str).map(rank).to_numpy()))
    obs = obs.iloc[perm].reset_index(drop=True)
    obs["sequence_id"] = obs["sequence_id"].astype(str)
    codes_csr = codes_csr[perm]
    sequences = {rid: "".join(obs.loc[obs["sequence_id"] == rid, "residue"].astype(str)) for rid in order_ids}
    return LiveResult(order_ids, sequences, obs, codes_csr.tocsr(), list(feature_names))


def encode_text(adapter: Any, sae: Any, text: str, *, layer: int, max_activation: np.ndarray,
                feature_names: list[str]) -> LiveResult:
    """:func:`read_records` then :func:`encode_records`."""
    records = read_records(adapter, text)
    return encode_records(adapter, sae, records, layer=layer, max_activation=max_activation, feature_names=feature_names)


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

