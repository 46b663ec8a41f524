"""The activation store: sharded arrays on disk that every later stage streams from.

Layout of a store folder::

    manifest.json                 model, layers, d_model, counts, dtype, hashes, version, shard list
    sequences.parquet             one row per input record: sequence_id, shard, offset, n_tokens, carried columns
    shards/shard-00000/
        layer_4.npy               (n_tokens, d_model) activations, float16 or float32, read by memory map
        obs.parquet               one row per token: sequence_id, position, residue, carried columns

A store is complete exactly when ``manifest.json`` exists; the extraction writes into ``<out>.partial`` and
renames it at the end. Readers memory-map the shard arrays, so memory stays bounded by the shards in use.

Each shard's entry in the manifest records the SHA-256 of every file of the shard (``"sha256": {"layer_4.npy": ...,
"obs.parquet": ...}``), so later stages can refuse a shard that went missing or changed since
(:meth:`ActivationStore.verify_shard`, :meth:`ActivationStore.missing_shards`). Stores written before these hashes
existed have no ``sha256`` entries; they are checked by the files' existence and the arrays' shapes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench.errors import StoreError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import torch

__all__ = [
    "ActivationStore", "ShardInfo", "open_store", "write_json_atomic", "file_sha256", "MANIFEST", "FORMAT_VERSION",
]

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
OBS_FILE = "obs.parquet"
HASH_CHUNK = 8 << 20  # bytes read at a time by file_sha256


def file_sha256(path: str | os.PathLike[str], chunk_size: int = HASH_CHUNK) -> str:
    """Hex SHA-256 of the bytes of the file at ``path``, read ``chunk_size`` bytes (8 MiB) at a time."""
    import hashlib

    h = hashlib.sha256()
    buf = bytearray(chunk_size)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(view):
            h.update(view[:n])
    return h.hexdigest()


def layer_file(layer: int) -> str:
    """File name of one layer's activations inside a shard folder."""
    return f"layer_{layer}.npy"


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write JSON to a temporary name in the same folder, fsync, and rename over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@dataclass(frozen=True)
class ShardInfo:
    """One shard of a store: a contiguous run of input records."""

    name: str
    n_tokens: int
    n_sequences: int
    first_sequence: int
    """Index of the shard's first record in the store's sequence order."""
    sha256: dict[str, str] | None = field(default=None, compare=False)
    """File name (``layer_<L>.npy``, ``obs.parquet``) to the hex SHA-256 of its bytes when the shard was written;
    ``None`` in stores written before shards were hashed. Not part of equality: equal shards are the same plan."""


class ActivationStore:
    """Read access to a finished activation store (see the module docstring for the layout)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        manifest = self.path / MANIFEST
        if not manifest.is_file():
            partial = self.path.with_name(self.path.name + ".partial")
            hint = f" (an unfinished extraction is in {partial}; run the same command again to resume)" if partial.exists() else ""
            raise StoreError(f"{self.path}: not an activation store, no {MANIFEST}{hint}")
        try:
            self.manifest: dict[str, Any] = json.loads(manifest.read_text())
        except json.JSONDecodeError as exc:
            raise StoreError(f"{manifest}: corrupt manifest ({exc})") from exc
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise StoreError(f"{self.path}: store format {self.manifest.get('format_version')} is not {FORMAT_VERSION}")
        self.shards = [ShardInfo(**s) for s in self.manifest["shards"]]
        self._heldout: dict[float, set[str]] = {}

    def __repr__(self) -> str:
        m = self.manifest
        return (
            f"ActivationStore({str(self.path)!r}, model={m['model']!r}, layers={m['layers']}, "
            f"n_sequences={m['n_sequences']}, n_tokens={m['n_tokens']}, d_model={m['d_model']}, dtype={m['dtype']!r})"
        )

    # -- manifest shortcuts -----------------------------------------------------------------------------------
    @property
    def model(self) -> str:
        return str(self.manifest["model"])

    @property
    def layers(self) -> list[int]:
        return list(self.manifest["layers"])

    @property
    def d_model(self) -> int:
        return int(self.manifest["d_model"])

    @property
    def n_tokens(self) -> int:
        return int(self.manifest["n_tokens"])

    @property
    def n_sequences(self) -> int:
        return int(self.manifest["n_sequences"])

    @property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype(self.manifest["dtype"])

    def _check_layer(self, layer: int) -> None:
        if layer not in self.layers:
            raise StoreError(f"{self.path}: layer {layer} was not extracted (store has layers {self.layers})")

    # -- per shard ------------------------------------------------------------------------------------------
    def shard_dir(self, i: int) -> Path:
        return self.path / "shards" / self.shards[i].name

    def shard_activations(self, i: int, layer: int) -> np.ndarray:
        """Memory-mapped ``(n_tokens, d_model)`` array of shard ``i`` at ``layer`` (read-only, nothing loaded)."""
        self._check_layer(layer)
        return self._open_array(self.shard_dir(i) / layer_file(layer), self.shards[i].n_tokens)

    def _open_array(self, path: Path, n_tokens: int) -> np.ndarray:
        """Memory-map a shard array and check its shape against the manifest."""
        try:
            arr = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise StoreError(f"{path}: unreadable shard ({exc})") from exc
        if arr.shape != (n_tokens, self.d_model):
            raise StoreError(f"{path}: shape {arr.shape}, manifest says {(n_tokens, self.d_model)}")
        return arr

    def shard_obs(self, i: int, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """Token metadata of shard ``i``."""
        import pandas as pd

        return pd.read_parquet(self.shard_dir(i) / OBS_FILE, columns=list(columns) if columns else None)

    def shard_files(self, i: int, *, layer: int | None = None) -> list[str]:
        """File names of shard ``i``: every layer's array (or only ``layer``'s) and the token metadata."""
        if layer is not None:
            self._check_layer(layer)
        return [layer_file(x) for x in (self.layers if layer is None else [layer])] + [OBS_FILE]

    def missing_shards(self) -> list[str]:
        """Paths, relative to the store, of the shard files that do not exist (empty when all do).

        A cheap check (one ``stat`` per file, nothing read or hashed) to run before long work starts. A missing
        shard folder is listed once, as ``shards/<name>``; a missing file as ``shards/<name>/<file>``.
        """
        missing: list[str] = []
        for i, shard in enumerate(self.shards):
            folder = self.shard_dir(i)
            if not folder.is_dir():
                missing.append(f"shards/{shard.name}")
                continue
            missing += [f"shards/{shard.name}/{name}" for name in self.shard_files(i) if not (folder / name).is_file()]
        return missing

    def verify_shard(self, i: int, *, layer: int | None = None) -> None:
        """Check that shard ``i``'s files are the ones the extraction wrote; raise :class:`StoreError` otherwise.

        Every layer's array (or only ``layer``'s) and ``obs.parquet`` must exist and, where the manifest records
        their SHA-256, hash to it (each file is read once). Stores without recorded hashes are checked by existence
        and by each array's shape and dtype against the manifest. The error is one line naming the shard's file.
        """
        if not 0 <= i < len(self.shards):
            raise StoreError(f"{self.path}: no shard {i} (store has {len(self.shards)})")
        shard, folder = self.shards[i], self.shard_dir(i)
        if not folder.is_dir():
            raise StoreError(f"{folder} is missing")
        names = self.shard_files(i, layer=layer)
        for name in names:  # all existence checks first: a missing file is reported before any hashing
            if not (folder / name).is_file():
                raise StoreError(f"{folder / name} is missing")
        recorded = shard.sha256 or {}
        for name in names:
            path = folder / name
            if name in recorded:
                if file_sha256(path) != recorded[name]:
                    raise StoreError(f"{path} changed since the store was written (sha256 differs)")
            elif name != OBS_FILE:  # no recorded hash: the array's header must match the manifest
                arr = self._open_array(path, shard.n_tokens)
                if arr.dtype != self.dtype:
                    raise StoreError(f"{path}: dtype {arr.dtype}, manifest says {self.dtype}")

    def shard_view(self, i: int) -> ActivationStore:
        """A read-only store of shard ``i`` alone: its records (``sequences`` with ``shard`` 0), its tokens and files,
        the rest of the manifest unchanged. What reads a store (annotation sources) reads one shard through it."""
        if not 0 <= i < len(self.shards):
            raise StoreError(f"{self.path}: no shard {i} (store has {len(self.shards)})")
        view = object.__new__(_ShardView)
        info = self.shards[i]
        view.path, view._heldout, view._parent, view._index = self.path, {}, self, i
        view.manifest = {**self.manifest, "n_tokens": info.n_tokens, "n_sequences": info.n_sequences,
                         "shards": [self.manifest["shards"][i]], "view_of_shard": i}
        view.shards = [info]
        seqs = self.sequences
        own = seqs[seqs["shard"].to_numpy() == i].reset_index(drop=True)
        view.__dict__["sequences"] = own.assign(shard=np.zeros(len(own), dtype=seqs["shard"].dtype))
        return view

    # -- whole-store tables (small: metadata only) -------------------------------------------------------------
    @cached_property
    def sequences(self) -> pd.DataFrame:
        """One row per record: ``sequence_id``, ``shard``, ``offset`` (first row in the shard), ``n_tokens``, carried columns."""
        import pandas as pd

        return pd.read_parquet(self.path / "sequences.parquet")

    @cached_property
    def obs_columns(self) -> list[str]:
        """Columns of the token metadata (``sequence_id``, ``position`` and what the adapter adds)."""
        import pyarrow.parquet as pq

        return list(pq.read_schema(self.shard_dir(0) / OBS_FILE).names) if self.shards else ["sequence_id", "position"]

    def obs(self, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """Token metadata of the whole store, in store order (row ``i`` is token ``i`` of :meth:`iter_tokens`)."""
        import pandas as pd

        frames = [self.shard_obs(i, columns) for i in range(len(self.shards))]
        return pd.concat(frames, ignore_index=True)

    # -- streaming ------------------------------------------------------------------------------------------
    def iter_batches(
        self,
        layer: int,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        buffer_shards: int = 2,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        as_torch: bool = True,
        dtype: str = "float32",
        split: str | None = None,
        holdout_fraction: float = 0.05,
        device: str | None = None,
        prefetch: int = 0,
    ) -> Iterator[torch.Tensor | np.ndarray]:
        """Stream ``(batch_size, d_model)`` token batches of ``layer``.

        With ``shuffle``, shards are visited in a seeded random order and tokens are shuffled within a buffer of
        ``buffer_shards`` shards, so memory stays bounded by that buffer whatever the store's size. ``rank`` and
        ``world_size`` give each distributed worker a disjoint part: whole shards when there are enough of them,
        otherwise every ``world_size``-th token of each shard. ``split`` (``"train"`` or ``"test"``) keeps only
        the tokens of sequences on that side of :meth:`split_mask`.

        ``device`` (torch tensors only): each buffer is copied to that device once, in the store's dtype (from pinned
        memory, without blocking, on CUDA), and the split selection, the cast to ``dtype``, the shuffle and the
        batching run there, so the host only reads shards. ``prefetch``: a background thread reads up to that many
        buffers ahead. Neither changes the batches: the same rows in the same order as the default host path.
        """
        self._check_layer(layer)
        if batch_size < 1:
            raise StoreError("batch_size must be at least 1")
        if device is not None and not as_torch:
            raise StoreError("device= needs as_torch=True")
        rng = np.random.default_rng(seed)
        order = np.arange(len(self.shards))
        if shuffle:
            rng.shuffle(order)
        by_shard = len(order) >= world_size
        if by_shard:
            order = order[rank::world_size]
        groups = [order[start : start + max(1, buffer_shards)] for start in range(0, len(order), max(1, buffer_shards))]
        reads = self._read_buffers(groups, layer, split, holdout_fraction, rank, world_size, by_shard,
                                   pin=device is not None and str(device).startswith("cuda"))
        if prefetch > 0:
            from workbench._prefetch import prefetch as run_ahead

            reads = run_ahead(reads, prefetch, name="workbench-store-reader")
        try:
            if device is None:
                yield from self._host_batches(reads, batch_size, rng, shuffle, drop_last, as_torch, dtype)
            else:
                yield from self._device_batches(reads, batch_size, rng, shuffle, drop_last, dtype, device)
        finally:
            reads.close()  # type: ignore[attr-defined]  # stops a reader thread at once

    def _read_buffers(self, groups: list[np.ndarray], layer: int, split: str | None, holdout_fraction: float, rank: int,
                      world_size: int, by_shard: bool, *, pin: bool) -> Iterator[list[tuple[Any, np.ndarray | None]]]:
        """Per buffer, the shards' rows as ``(array, rows)``: ``rows`` (or None: all) selects the tokens that belong
        to this split and rank. With ``pin`` the arrays are whole shards read into pinned torch tensors."""
        for group in groups:
            parts: list[tuple[Any, np.ndarray | None]] = []
            for i in group:
                arr = self.shard_activations(int(i), layer)
                rows = None if split is None else np.flatnonzero(self.split_mask(int(i), split, holdout_fraction))
                if not by_shard:
                    rows = (np.arange(len(arr)) if rows is None else rows)[rank::world_size]
                if pin:
                    import torch

                    host = torch.empty(arr.shape, dtype=getattr(torch, arr.dtype.name), pin_memory=True)
                    host.numpy()[...] = arr
                    parts.append((host, rows))
                else:
                    parts.append((arr, rows))
            yield parts

    def _host_batches(self, reads: Iterator[list[tuple[Any, np.ndarray | None]]], batch_size: int, rng: np.random.Generator,
                      shuffle: bool, drop_last: bool, as_torch: bool, dtype: str) -> Iterator[torch.Tensor | np.ndarray]:
        leftover = np.empty((0, self.d_model), dtype=dtype)
        for parts in reads:
            chunk = [np.asarray(arr if rows is None else arr[rows], dtype=dtype) for arr, rows in parts]
            buf = np.concatenate([leftover, *chunk])
            if shuffle:
                buf = buf[rng.permutation(len(buf))]
            n_full = len(buf) // batch_size * batch_size
            for j in range(0, n_full, batch_size):
                yield self._out(buf[j : j + batch_size], as_torch)
            leftover = buf[n_full:]
        if len(leftover) and not drop_last:
            yield self._out(leftover, as_torch)

    def _device_batches(self, reads: Iterator[list[tuple[Any, np.ndarray | None]]], batch_size: int, rng: np.random.Generator,
                        shuffle: bool, drop_last: bool, dtype: str, device: str) -> Iterator[torch.Tensor]:
        import torch

        target = getattr(torch, np.dtype(dtype).name)
        blocking = not str(device).startswith("cuda")
        leftover = torch.empty((0, self.d_model), dtype=target, device=device)
        for parts in reads:
            chunk = []
            for arr, rows in parts:
                t = arr if isinstance(arr, torch.Tensor) else torch.from_numpy(np.require(arr, requirements=["C", "W"]))
                t = t.to(device, non_blocking=not blocking)
                if rows is not None:
                    t = t.index_select(0, torch.from_numpy(np.ascontiguousarray(rows)).to(device, non_blocking=not blocking))
                chunk.append(t.to(target))
            buf = torch.cat([leftover, *chunk])
            if shuffle:
                buf = buf.index_select(0, torch.from_numpy(rng.permutation(len(buf))).to(device, non_blocking=not blocking))
            n_full = len(buf) // batch_size * batch_size
            for j in range(0, n_full, batch_size):
                yield buf[j : j + batch_size]
            leftover = buf[n_full:]
        if len(leftover) and not drop_last:
            yield leftover

    @staticmethod
    def _out(arr: np.ndarray, as_torch: bool) -> torch.Tensor | np.ndarray:
        if not as_torch:
            return arr
        import torch

        return torch.from_numpy(np.ascontiguousarray(arr))

    def split_mask(self, shard: int, split: str, holdout_fraction: float = 0.05) -> np.ndarray:
        """Boolean mask of the rows of ``shard`` that belong to ``split`` (``"train"`` or ``"test"``).

        A sequence is held out (``test``) when a hash of its id falls below ``holdout_fraction``: the split is
        stable across shard layouts, process counts and runs, and whole sequences stay on one side.
        """
        if split not in ("train", "test"):
            raise StoreError(f"split must be 'train' or 'test', not {split!r}")
        held = self.heldout_sequences(holdout_fraction)
        seqs = self.sequences
        rows = seqs[seqs["shard"] == shard]
        mask = np.zeros(self.shards[shard].n_tokens, dtype=bool)
        for offset, n, is_held in zip(rows["offset"], rows["n_tokens"], rows["sequence_id"].isin(held)):
            if is_held == (split == "test"):
                mask[int(offset) : int(offset) + int(n)] = True
        return mask

    def heldout_sequences(self, holdout_fraction: float = 0.05) -> set[str]:
        """Ids of the sequences held out for evaluation (see :meth:`split_mask`)."""
        import hashlib

        if holdout_fraction not in self._heldout:
            cut = int(holdout_fraction * 2**32)
            self._heldout[holdout_fraction] = {
                sid for sid in self.sequences["sequence_id"]
                if int.from_bytes(hashlib.blake2b(str(sid).encode(), digest_size=4).digest(), "big") < cut
            }
        return self._heldout[holdout_fraction]

    def manifest_sha256(self) -> str:
        """Hash of the manifest file: identifies this exact store (model, weights, inputs, layers)."""
        import hashlib

        return hashlib.sha256((self.path / MANIFEST).read_bytes()).hexdigest()

    def iter_sequences(self, layer: int, *, dtype: str = "float32") -> Iterator[tuple[str, pd.DataFrame, np.ndarray]]:
        """Yield ``(sequence_id, token_obs, activations)`` per record in store order, one shard in memory at a time."""
        self._check_layer(layer)
        seqs = self.sequences
        for i in range(len(self.shards)):
            acts = np.asarray(self.shard_activations(i, layer), dtype=dtype)
            obs = self.shard_obs(i)
            for row in seqs[seqs["shard"] == i].itertuples(index=False):
                sl = slice(int(row.offset), int(row.offset) + int(row.n_tokens))
                yield str(row.sequence_id), obs.iloc[sl].reset_index(drop=True), acts[sl]

    def token_sequence(self) -> np.ndarray:
        """For every token in store order, the row of its record in :attr:`sequences` (int64)."""
        seqs = self.sequences
        return np.repeat(np.arange(len(seqs)), seqs["n_tokens"].to_numpy()) if self._records_in_token_order(seqs) else (
            self._token_sequence_slow(seqs))

    def _records_in_token_order(self, seqs: pd.DataFrame) -> bool:
        order = seqs[["shard", "offset"]].to_numpy()
        return bool(len(order) == 0 or (np.lexsort((order[:, 1], order[:, 0])) == np.arange(len(order))).all())

    def _token_sequence_slow(self, seqs: pd.DataFrame) -> np.ndarray:
        import pandas as pd

        ids = seqs["sequence_id"].astype(str).tolist()
        return np.asarray(pd.Categorical(self.obs(["sequence_id"])["sequence_id"].astype(str), categories=ids).codes, dtype=np.int64)

    def activations(self, layer: int, *, dtype: str = "float32") -> np.ndarray:
        """Every token of ``layer`` in store order as one ``(n_tokens, d_model)`` array (for analyses that fit in memory).

        Raises :class:`StoreError` when the layer holds NaN or infinite values.
        """
        self._check_layer(layer)
        out = np.empty((self.n_tokens, self.d_model), dtype=dtype)
        row = 0
        for i in range(len(self.shards)):
            acts = self.shard_activations(i, layer)
            out[row : row + len(acts)] = acts
            row += len(acts)
        if not np.isfinite(out).all():
            raise StoreError(f"{self.path}: layer {layer} holds NaN or infinite values")
        return out

    def get_sequence(self, sequence_id: str, layer: int, *, dtype: str = "float32") -> np.ndarray:
        """Activations of one record at ``layer``, ``(length, d_model)``."""
        seqs = self.sequences
        hit = seqs.index[seqs["sequence_id"] == sequence_id]
        if len(hit) == 0:
            raise StoreError(f"{self.path}: no sequence {sequence_id!r}")
        row = seqs.loc[hit[0]]
        acts = self.shard_activations(int(row["shard"]), layer)
        return np.asarray(acts[int(row["offset"]) : int(row["offset"]) + int(row["n_tokens"])], dtype=dtype)

    def check(self) -> None:
        """Verify that every shard file exists, every shard's shapes against the manifest and that no value is NaN
        or infinite (see :meth:`verify_shard` for the files' hashes)."""
        missing = self.missing_shards()
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise StoreError(f"{self.path}: {len(missing)} shard file(s) missing: {', '.join(missing[:3])}{more}")
        for i in range(len(self.shards)):
            for layer in self.layers:
                arr = self.shard_activations(i, layer)
                if not np.isfinite(arr).all():
                    raise StoreError(f"{self.shard_dir(i)}: layer {layer} holds NaN or infinite values")


class _ShardView(ActivationStore):
    """One shard of a store seen as a store (:meth:`ActivationStore.shard_view`)."""

    _parent: ActivationStore
    _index: int

    def shard_dir(self, i: int) -> Path:
        if i != 0:
            raise StoreError(f"{self.path}: a view of shard {self._index} has no shard {i}")
        return self._parent.shard_dir(self._index)


def open_store(path: str | os.PathLike[str]) -> ActivationStore:
    """Open a finished activation store for reading."""
    return ActivationStore(path)
