"""The background writer of extraction: device-to-host copies, checks and shard files off the forward's thread.

The extraction loop casts each batch's activations to the stored dtype on the device and starts their copy into
(pinned, on CUDA) host memory; :class:`ShardWriter` then, on one background thread, waits for the copy, checks the
values and writes them into the shard's memory maps. Closing a shard (flush, token metadata, SHA-256 of each file,
fsync, rename into place) also runs there, so it overlaps the next shard's forward passes. The queue holds at most a
few batches, so host memory stays bounded.

Errors raised on the writer thread are raised again on the extraction's thread, at its next submit or at
:meth:`ShardWriter.close`. A shard folder is renamed into place only by its own finish step, which runs only after
every batch of that shard was written.

The hashes of a finished shard's files travel with the shard folder, in a hidden ``.sha256.json`` beside them, so
that the manifest (written at the end, by rank 0, possibly by a later resumed run) can list every shard's hashes
without reading the shards again; :func:`shard_hashes` reads them back and the manifest is then the only record.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from workbench.errors import WorkbenchError
from workbench.store import OBS_FILE, file_sha256, layer_file, write_json_atomic

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import torch

__all__ = ["ShardWriter", "ShardFiles", "HostRows", "to_host", "shard_hashes", "HASHES_FILE"]

QUEUE_ITEMS = 3
HASHES_FILE = ".sha256.json"  # in a finished shard folder until the manifest holds its hashes


def shard_hashes(folder: Path, layers: Sequence[int]) -> dict[str, str]:
    """SHA-256 of each file of the finished shard in ``folder`` (``layer_<L>.npy`` per layer, ``obs.parquet``).

    Read from the shard's ``.sha256.json`` written by :meth:`ShardFiles.finish` when it names exactly these files;
    recomputed from the files otherwise (shards finished by a version that did not record them).
    """
    names = [layer_file(layer) for layer in layers] + [OBS_FILE]
    sidecar = folder / HASHES_FILE
    if sidecar.is_file():
        try:
            recorded = json.loads(sidecar.read_text())
        except (OSError, json.JSONDecodeError):
            recorded = None
        if isinstance(recorded, dict) and sorted(recorded) == sorted(names):
            return {name: str(recorded[name]) for name in names}
    return {name: file_sha256(folder / name) for name in names}


class HostRows(NamedTuple):
    """One batch's rows on their way to the host (see :func:`to_host`)."""

    layers: dict[int, torch.Tensor]
    """Layer to ``(n_rows, d_model)`` host tensor in the stored dtype (valid once ``event`` has completed)."""
    event: Any
    """CUDA event recorded after the copies, or ``None`` on the CPU."""
    finite: torch.Tensor | None
    """On CUDA: a host bool per layer (in ``layers`` order), whether all values are finite in the stored dtype."""


def to_host(tensors: dict[int, torch.Tensor], dtype: str) -> HostRows:
    """Cast ``tensors`` to ``dtype`` on their device and start their copy to the host.

    On CUDA the copies go into pinned buffers without blocking, the finiteness of the cast values is reduced on the
    device and copied along, and a CUDA event marks the end of the copies; nothing waits for the device. On the
    CPU the cast tensors are returned as they are (the writer checks them).
    """
    import torch

    torch_dtype = torch.float16 if dtype == "float16" else torch.float32
    first = next(iter(tensors.values()), None)
    if first is None or first.device.type != "cuda":
        return HostRows({layer: t.to(torch_dtype) for layer, t in tensors.items()}, None, None)
    host, checks = {}, []
    for layer, t in tensors.items():
        cast = t.to(torch_dtype)
        checks.append(torch.isfinite(cast).all())
        buf = torch.empty(cast.shape, dtype=torch_dtype, pin_memory=True)
        buf.copy_(cast, non_blocking=True)
        host[layer] = buf
    finite = torch.empty(len(checks), dtype=torch.bool, pin_memory=True)
    finite.copy_(torch.stack(checks), non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    return HostRows(host, event, finite)


class ShardFiles:
    """One shard being written: its temporary folder, the layers' memory maps and the token metadata parts."""

    def __init__(self, name: str, tmp: Path, final: Path, sizes: np.ndarray, layers: Sequence[int], d_model: int,
                 dtype: str, model_name: str) -> None:
        self.name, self.tmp, self.final, self.model_name = name, tmp, final, model_name
        self.sizes = sizes
        self.offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        n_tokens = int(sizes.sum())
        self.arrays = {
            layer: np.lib.format.open_memmap(tmp / f"layer_{layer}.npy", mode="w+", dtype=dtype, shape=(n_tokens, d_model))
            for layer in layers
        }
        self.obs_parts: list[tuple[int, pd.DataFrame]] = []
        self.sha256: dict[str, str] = {}
        """File name to SHA-256 of the finished files (filled by :meth:`finish`)."""

    def write(self, index: Sequence[int], rows: HostRows, obs: pd.DataFrame) -> None:
        """Put one batch's rows (records ``index`` of this shard, batch-ordered) at their records' offsets."""
        if rows.event is not None:
            rows.event.synchronize()
        for k, (layer, tensor) in enumerate(rows.layers.items()):
            values = tensor.numpy()
            finite = bool(rows.finite[k]) if rows.finite is not None else bool(np.isfinite(values).all())
            if not finite:
                raise WorkbenchError(f"{self.model_name}: non-finite activations (or values beyond float16's range: "
                                     f"use dtype=float32) at layer {layer} in shard {self.name}")
            arr, start = self.arrays[layer], 0
            for j in index:  # each record's rows are contiguous on both sides: slice copies
                n = int(self.sizes[j])
                arr[self.offsets[j] : self.offsets[j] + n] = values[start : start + n]
                start += n
        start = 0
        for j in index:
            n = int(self.sizes[j])
            self.obs_parts.append((int(j), obs.iloc[start : start + n]))
            start += n

    def finish(self) -> None:
        """Flush the arrays, write the token metadata, hash and fsync each file and rename the folder into place.

        Each file's SHA-256 is taken from its bytes read back after the flush (from the page cache, in 8 MiB chunks)
        and written to the shard's ``.sha256.json`` (see :func:`shard_hashes`) before the rename.
        """
        import pandas as pd

        names = [layer_file(layer) for layer in self.arrays] + [OBS_FILE]
        for arr in self.arrays.values():
            arr.flush()
        self.arrays = {}
        obs = pd.concat([part for _, part in sorted(self.obs_parts, key=lambda p: p[0])], ignore_index=True)
        self.obs_parts = []
        obs.to_parquet(self.tmp / OBS_FILE, index=False)
        for name in names:
            self.sha256[name] = file_sha256(self.tmp / name)
            with open(self.tmp / name, "rb") as fh:
                os.fsync(fh.fileno())
        write_json_atomic(self.tmp / HASHES_FILE, self.sha256)  # fsynced
        os.replace(self.tmp, self.final)


class ShardWriter:
    """One background thread running submitted steps in order, with a bounded queue.

    Use as a context manager or call :meth:`close` (wait for every step, raise the first error) and always
    :meth:`shutdown` (in ``finally``): with ``drain=False`` steps not yet started are dropped.
    """

    def __init__(self, max_items: int = QUEUE_ITEMS) -> None:
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=max_items)
        self._error: BaseException | None = None
        self._abort = False
        self._thread = threading.Thread(target=self._run, name="workbench-shard-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            step = self._queue.get()
            if step is None:
                return
            if self._error is not None or self._abort:
                continue  # drop the rest after a failure or an abort, but keep the queue moving
            try:
                step()
            except BaseException as exc:  # noqa: BLE001 - raised again on the submitting thread
                self._error = exc

    def _raise_error(self) -> None:
        if self._error is not None:
            self._abort = True  # before clearing the error, so the thread keeps dropping steps
            error, self._error = self._error, None
            raise error

    def _put(self, item: Callable[[], None] | None) -> None:
        while True:
            if item is not None:
                self._raise_error()
            if not self._thread.is_alive():
                return
            try:
                self._queue.put(item, timeout=0.05)
                return
            except queue.Full:
                continue

    def submit(self, step: Callable[[], None]) -> None:
        """Queue ``step`` (blocks while the queue is full); raises an error an earlier step raised."""
        self._put(step)

    def close(self) -> None:
        """Wait for every queued step, stop the thread and raise the first error a step raised."""
        self._put(None)
        self._thread.join()
        self._raise_error()

    def shutdown(self, *, drain: bool) -> None:
        """Stop the thread (idempotent); ``drain=False`` drops the steps not yet started. Never raises a step's error."""
        if not self._thread.is_alive():
            return
        if not drain:
            self._abort = True
        self._put(None)
        self._thread.join()
