"""New sequences through a catalog's model and SAE: :meth:`workbench.catalog.Catalog.encode` and ``encode_sparse``.

Runs records through the model up to the catalog's layer with the model's adapter (``batches``,
``activations``), encodes every token with the SAE (``encode_sparse``) and divides every feature by the catalog's
``max_activation``, so 1 means "as strong as the feature's strongest firing on the catalog's sequences" (new input
may exceed 1). Domain-free: the model comes from :func:`workbench.load_adapter` with the catalog's
``provenance["model_source"]`` and the SAE from ``provenance["sae_path"]``; the app's Live input page uses the same
code. Nothing here is public API except through :class:`~workbench.catalog.Catalog` and :class:`EncodedSequences`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from workbench.errors import WorkbenchError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import scipy.sparse as sp

__all__ = ["EncodedSequences", "encode_records", "encode_sources", "parse_positions", "is_missing", "TOKENS_PER_BATCH"]

TOKENS_PER_BATCH = 2048
"""Padded tokens per forward pass (and per SAE encode), which bounds memory for wide SAEs."""


class EncodedSequences(NamedTuple):
    """Catalog-normalised SAE codes of new sequences, one row per residue (:meth:`Catalog.encode_sparse`)."""

    ids: list[str]
    """Record ids, in input order."""
    sequences: dict[str, str]
    """Record id to its sequence (as the adapter validated it)."""
    obs: pd.DataFrame
    """One row per residue, in input order: ``sequence_id``, ``position`` (1-based), ``residue`` and, when the
    catalog numbers its sequences (``obs["imgt"]``), ``imgt`` (nullable integers; missing for sequences that are
    not in the catalog or residues without a number)."""
    codes: sp.csr_matrix
    """``(n_residues, n_features)`` activations divided by the catalog's ``max_activation`` (0 = not firing)."""
    feature_names: list[str]
    """Feature ids (``f00000``...), the columns of ``codes``."""

    @property
    def n_tokens(self) -> int:
        """Residues (rows of :attr:`codes`)."""
        return int(self.codes.shape[0])

    def frame(self, features: Sequence[str | int] | None = None) -> pd.DataFrame:
        """A DataFrame with :attr:`obs`'s columns and one column per feature (``features``: ids or column numbers;
        None: every feature that fires on at least one residue, in catalog order)."""
        import pandas as pd

        position = {name: j for j, name in enumerate(self.feature_names)}
        if features is None:
            cols = np.flatnonzero(self.codes.getnnz(axis=0) > 0)
        else:
            cols = np.asarray([_column(f, position, len(self.feature_names)) for f in features], dtype=np.int64)
        names = [self.feature_names[j] for j in cols]
        block = self.codes[:, cols].toarray() if len(cols) else np.zeros((self.n_tokens, 0), np.float32)
        values = pd.DataFrame(block, columns=names, index=self.obs.index)
        return pd.concat([self.obs, values], axis=1)


def _column(feature: str | int, position: dict[str, int], width: int) -> int:
    if isinstance(feature, (int, np.integer)) and not isinstance(feature, bool):
        if not 0 <= int(feature) < width:
            raise WorkbenchError(f"feature {feature} is out of range (the catalog has {width} features)")
        return int(feature)
    if str(feature) not in position:
        raise WorkbenchError(f"no feature {feature!r} in the encoded columns")
    return position[str(feature)]


def encode_sources(provenance: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    """``(model_source, sae_path, problem)`` from a catalog's provenance; ``problem`` explains why the catalog
    cannot encode new sequences (None when it can).

    Encoding needs the model the catalog was built with (``model_source``, what :func:`workbench.load_adapter`
    takes) and the SAE folder (``sae_path``) present on this machine.
    """
    model = provenance.get("model_source")
    sae_path = provenance.get("sae_path")
    model = str(model) if model else None
    sae_path = str(sae_path) if sae_path else None
    if not model:
        return model, sae_path, ("this catalog does not record the model it was built with (provenance has no "
                                 "model_source); rebuild it with `workbench annotate` to encode new sequences")
    if not sae_path:
        return model, sae_path, ("this catalog does not record its SAE folder (provenance has no sae_path); "
                                 "encoding new sequences needs the SAE the catalog was built with")
    if not (Path(sae_path) / "cfg.json").is_file():
        return model, sae_path, (f"encoding new sequences needs the SAE folder the catalog was built with "
                                 f"({sae_path}), which is not on this machine")
    return model, sae_path, None


def parse_positions(text: Any, n: int | None = None) -> list[int | None] | None:
    """The IMGT position of every residue from an ``obs["imgt"]`` string (``"1,2,3,,5"``; empty = unnumbered).

    Returns None when ``text`` is missing, holds no number at all, or (given ``n``) does not have ``n`` entries.
    """
    if is_missing(text):
        return None
    parts = str(text).split(",")
    if n is not None and len(parts) != n:
        return None
    out: list[int | None] = []
    for p in parts:
        p = p.strip()
        digits = p.rstrip("ABCDEFGHIJKLMNOPQRSTUVWXYZ")  # tolerate insertion letters (111A)
        out.append(int(digits) if digits.isdigit() else None)
    return out if any(v is not None for v in out) else None


def is_missing(value: Any) -> bool:
    """True for ``None``, NaN, ``pd.NA`` / ``NaT`` (scalars only: containers are never missing)."""
    if value is None:
        return True
    import pandas as pd

    try:
        result = pd.isna(value)
    except (TypeError, ValueError):
        return False
    return bool(result) if isinstance(result, (bool, np.bool_)) else False


def encode_records(
    adapter: Any, sae: Any, records: list[Any], *, layer: int, max_activation: np.ndarray, feature_names: list[str],
    tokens_per_batch: int = TOKENS_PER_BATCH,
) -> EncodedSequences:
    """Run ``records`` through the model to ``layer``, encode every token with ``sae`` and normalise.

    ``max_activation`` is the catalog's per-feature maximum (``var["max_activation"]``, SAE units); features whose
    maximum is 0 (dead in the catalog) keep their raw SAE value, so a new firing of a dead feature still shows.
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
    device = sae.W_enc.device
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    obs_parts: list[pd.DataFrame] = []
    offset = 0
    for batch in adapter.batches(records, tokens_per_batch=tokens_per_batch):
        acts = adapter.activations(batch, [layer])
        x = acts.layers[layer].float().to(device)
        with torch.no_grad():
            codes = sae.encode_sparse(x)
        keep = codes.values > 0
        rows.append((codes.rows[keep] + offset).cpu().numpy())
        cols.append(codes.cols[keep].cpu().numpy())
        vals.append(codes.values[keep].float().cpu().numpy())
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
    return EncodedSequences(order_ids, sequences, obs, codes_csr.tocsr(), list(feature_names))


def with_positions(result: EncodedSequences, catalog_obs: pd.DataFrame, column: str,
                   separator: str = "") -> EncodedSequences:
    """``result`` with a per-residue ``column`` (IMGT numbers) for the sequences the catalog holds.

    A record is matched to the catalog's sequence of the same id when its residues are the same, else to the first
    catalog sequence with the same residues; its numbering is ``catalog_obs[column]`` (:func:`parse_positions`).
    """
    import pandas as pd

    if column not in catalog_obs.columns:
        return result
    stored = catalog_obs["sequence"].astype(str)
    by_sequence: dict[str, str] = {}
    for sid, seq in zip(stored.index, stored.to_numpy()):
        by_sequence.setdefault(str(seq), str(sid))
    values: list[int | None] = []
    for rid in result.ids:
        residues = result.obs.loc[result.obs["sequence_id"] == rid, "residue"].astype(str).tolist()
        text = separator.join(residues)
        sid = rid if rid in stored.index and stored.at[rid] == text else by_sequence.get(text)
        positions = parse_positions(catalog_obs.at[sid, column], len(residues)) if sid is not None else None
        values += positions if positions is not None else [None] * len(residues)
    obs = result.obs.copy()
    obs[column] = pd.array(values, dtype="Int64")
    return result._replace(obs=obs)
