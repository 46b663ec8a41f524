"""Extraction: run a model over input records and write an activation store.

The records are cut into shards of consecutive records by a token budget. The shard plan depends only on the
inputs and options, so it is the same on every run and every rank:

* resume: each shard is written to a temporary folder and renamed when complete; a run that finds
  ``<out>.partial`` with the same plan skips the finished shards and ends with the same data;
* scale-out: under ``torchrun`` rank ``r`` of ``N`` writes shards ``r, r+N, ...`` and rank 0 writes the manifest,
  so a store is identical whatever the number of processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench._dist import Dist, local_device
from workbench._io import remove_temps
from workbench._shard_writer import HASHES_FILE, ShardFiles, ShardWriter, shard_hashes, to_host
from workbench._version import __version__
from workbench.errors import StoreError, WorkbenchError
from workbench.store import FORMAT_VERSION, MANIFEST, ActivationStore, ShardInfo, write_json_atomic

if TYPE_CHECKING:  # pragma: no cover
    from workbench.adapter import Adapter

__all__ = ["extract", "plan_shards", "records_hash", "auto_tokens_per_batch", "resolve_precision", "run_batches"]

PLAN = "plan.json"
PRECISION_CHOICES = ("auto", "bf16", "fp16", "fp32")
CPU_TOKENS_PER_BATCH = 8192
GPU_TOKENS_PER_BATCH = (8192, 131072)  # clamp of the budget derived from free GPU memory
BYTES_PER_TOKEN_PER_WIDTH = 256  # forward working memory per token, per unit of d_model (see auto_tokens_per_batch)
_OK, _FAILED, _INVALID = 0, 1, 2  # shard-loop outcomes: done; interrupted (resumable); bad input or model (not)


def records_hash(records: Sequence[Any]) -> str:
    """SHA-256 of the records' ids, sequences (or other content) and carried metadata, in order."""
    h = hashlib.sha256()
    for rec in records:
        h.update(json.dumps([rec.id, getattr(rec, "sequence", None), dict(getattr(rec, "meta", {}))], sort_keys=True, default=str).encode())
        h.update(b"\n")
    return h.hexdigest()


def plan_shards(sizes: Sequence[int], shard_tokens: int) -> list[ShardInfo]:
    """Cut consecutive records into shards of about ``shard_tokens`` rows (a record is never split)."""
    shards: list[ShardInfo] = []
    start, tokens = 0, 0
    for i, n in enumerate(sizes):
        tokens += n
        if tokens >= shard_tokens or i == len(sizes) - 1:
            shards.append(ShardInfo(f"shard-{len(shards):05d}", tokens, i + 1 - start, start))
            start, tokens = i + 1, 0
    return shards


def resolve_precision(precision: str, device: str) -> str:
    """``auto`` as ``bf16`` on CUDA (``fp16`` on GPUs without bfloat16) and ``fp32`` elsewhere; checks the value."""
    from workbench.adapter import autocast

    if precision not in PRECISION_CHOICES:
        raise WorkbenchError(f"precision must be one of {', '.join(PRECISION_CHOICES)}, not {precision!r}")
    if precision == "auto":
        if not device.startswith("cuda"):
            return "fp32"
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    autocast(device, precision)  # a one-line error where this torch cannot autocast to it on this device
    return precision


def auto_tokens_per_batch(adapter: Adapter) -> int:
    """The padded-token budget of one forward pass when none is given.

    On the CPU 8,192. On CUDA half of the free GPU memory (the weights are already loaded) divided by
    ``BYTES_PER_TOKEN_PER_WIDTH * d_model`` bytes per token: about 64 float32 vectors of the model's width per token
    (hidden states, query/key/value, the feed-forward layer's 4x-wide intermediate and its activation, attention
    scores of sequences up to about 1,000 tokens, the captured rows), rounded down to a multiple of 1,024 and clamped
    to 8,192..131,072. A budget that still runs out of memory is halved by the extraction (see :func:`run_batches`).
    """
    if not adapter.device.startswith("cuda"):
        return CPU_TOKENS_PER_BATCH
    import torch

    free, _total = torch.cuda.mem_get_info(torch.device(adapter.device))
    budget = int(free * 0.5) // (BYTES_PER_TOKEN_PER_WIDTH * max(1, adapter.d_model)) // 1024 * 1024
    lo, hi = GPU_TOKENS_PER_BATCH
    return min(max(budget, lo), hi)


class Budget:
    """The padded-token budget of one forward pass, halved for the rest of the run after an out-of-memory error."""

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens

    def halve(self) -> None:
        self.tokens = max(1, self.tokens // 2)


def run_batches(adapter: Adapter, records: Sequence[Any], budget: Budget, step: Callable[[Any], None]) -> None:
    """Call ``step(batch)`` on batches of ``records`` under ``budget``, backing off when a forward runs out of memory.

    A ``torch.cuda.OutOfMemoryError`` raised by ``step`` empties the CUDA cache, halves the budget for the rest of the
    run and batches that batch's records (and the ones not yet run) again under the smaller budget; ``step`` must not
    have handed anything on for a batch it failed on. A single record that does not fit raises
    :class:`WorkbenchError`. ``batch.index`` are positions in ``records``.
    """
    import torch

    pending = list(range(len(records)))
    while pending:
        done: set[int] = set()
        oom: tuple[int, int] | None = None
        for batch in adapter.batches([records[j] for j in pending], tokens_per_batch=budget.tokens):
            batch.index = [pending[k] for k in batch.index]
            try:
                step(batch)
            except torch.cuda.OutOfMemoryError:
                oom = (len(batch.index), batch.n_tokens)
            if oom is not None:
                break
            done.update(batch.index)
        if oom is None:
            return
        if adapter.device.startswith("cuda"):
            torch.cuda.empty_cache()
        n_records, n_tokens = oom
        if n_records == 1:
            raise WorkbenchError(f"{adapter.name}: out of GPU memory on a single record of {n_tokens} tokens "
                                 f"(tokens_per_batch {budget.tokens}); free GPU memory, lower the precision or truncate")
        budget.halve()
        pending = [j for j in pending if j not in done]


def _default_shard_tokens(d_model: int, n_layers: int, itemsize: int) -> int:
    # About 64 MiB of activations per shard across the requested layers, at least 1,024 tokens.
    return max(1024, (64 << 20) // (d_model * n_layers * itemsize))


def extract(
    model: str | Adapter,
    inputs: str | os.PathLike[str] | Sequence[Any],
    *,
    layers: Sequence[int | str],
    out: str | os.PathLike[str],
    dtype: str = "float16",
    tokens_per_batch: int | None = None,
    precision: str = "auto",
    shard_tokens: int | None = None,
    truncate: bool = False,
    overwrite: bool = False,
    device: str = "cpu",
    progress: bool = True,
    read_options: dict[str, Any] | None = None,
    random_weights: int | None = None,
) -> ActivationStore:
    """Extract per-token activations of ``layers`` and write a store at ``out``.

    Parameters
    ----------
    model
        A model card name (``antiberty``, ``sapiens-vh``, ``esm2_t6_8M_UR50D``...), a checkpoint path, or a loaded
        adapter.
    inputs
        A file the model's domain can read (FASTA, UniProt, CSV/TSV, a MedMNIST ``.npz``, a folder of images...) or
        a list of records.
    layers
        Layer numbers (sequence models: 0 = embeddings to ``n_layers`` = last block) or the layer names of models
        that name them (an imaging card's ``layers``).
    dtype
        ``float16`` (default) or ``float32`` for the stored arrays.
    tokens_per_batch
        Padded-token budget of one forward pass; records are sorted by length within a shard to fill it. ``None``
        (default): 8,192 on the CPU, and on CUDA a budget sized from the free GPU memory and the model's width (see
        :func:`auto_tokens_per_batch`). A forward that runs out of GPU memory halves the budget for the rest of the
        run and redoes its records in smaller batches; a single record that does not fit is an error.
    precision
        Arithmetic of the forward pass: ``auto`` (default: ``bf16`` on CUDA, ``fp32`` on the CPU), ``bf16``,
        ``fp16`` or ``fp32``. Reduced precision runs under ``torch.autocast`` (the weights stay as loaded); the
        stored ``dtype`` is unchanged. The manifest records it, and a resume with another precision is refused.
    shard_tokens
        Rows per shard; defaults to about 64 MiB of activations per shard.
    truncate
        Cut sequences longer than the model's maximum instead of failing.
    overwrite
        Replace an existing store at ``out`` (only once the new one is complete).
    read_options
        Options of the domain reader (for tables: ``id_col``, ``seq_cols``, ``meta_cols``).
    random_weights
        Control: re-initialise the model's weights with this seed before extracting (see
        :meth:`~workbench.adapter.Adapter.randomized`); the manifest records it so later stages rebuild the same model.

    Run under ``torchrun --nproc-per-node N`` to split the shards across processes. Killed runs resume: calling
    again with the same arguments continues from the last complete shard.

    The forward passes run on this thread; one background thread waits for each batch's device-to-host copy,
    checks that the values are finite in the stored dtype, writes them into the shard's files and closes finished
    shards, so disk work overlaps the next forward passes (at most a few batches wait in between).
    """
    from workbench.registry import load_adapter

    if dtype not in ("float16", "float32"):
        raise WorkbenchError(f"dtype must be float16 or float32, not {dtype!r}")
    if tokens_per_batch is not None and tokens_per_batch < 1:
        raise WorkbenchError("tokens_per_batch must be positive")
    if precision not in PRECISION_CHOICES:
        raise WorkbenchError(f"precision must be one of {', '.join(PRECISION_CHOICES)}, not {precision!r}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise StoreError(f"{out} already exists (pass --overwrite to replace it)")
    device = local_device(device)  # under torchrun each process takes its own GPU
    adapter = load_adapter(model, device=device) if isinstance(model, str) else model
    source = adapter.source
    if random_weights is not None:
        adapter = adapter.randomized(random_weights)
    precision = resolve_precision(precision, adapter.device)
    layers = adapter.check_layers(layers)
    adapter.prepare(layers)
    if isinstance(inputs, (str, os.PathLike)):
        records = adapter.read(str(inputs), truncate=truncate, **(read_options or {}))
    else:
        records = adapter.validate(list(inputs), truncate=truncate)  # type: ignore[attr-defined]

    itemsize = np.dtype(dtype).itemsize
    shard_tokens = shard_tokens or _default_shard_tokens(adapter.d_model, len(layers), itemsize)
    sizes = [adapter.n_kept(r) for r in records]
    shards = plan_shards(sizes, shard_tokens)
    plan = {
        "model": adapter.name,
        "weights_sha256": adapter.weights_hash(),
        "inputs_sha256": records_hash(records),
        "layers": layers,
        "dtype": dtype,
        "precision": precision,
        "shard_tokens": shard_tokens,
        "n_shards": len(shards),
    }

    dist = Dist.setup(device)
    try:
        work = out.with_name(out.name + ".partial")
        if dist.rank == 0:
            _prepare_workdir(work, plan)
            remove_temps(work / "shards")  # half-written shards of a killed run (no rank writes yet)
        dist.barrier()
        if dist.rank != 0:
            _prepare_workdir(work, plan)  # verifies the plan rank 0 wrote

        mine = [i for i in range(len(shards)) if i % dist.world_size == dist.rank]
        todo = [i for i in mine if not (work / "shards" / shards[i].name).is_dir()]
        bar = _progress(sum(shards[i].n_tokens for i in todo), progress and dist.rank == 0, adapter.name)
        t0 = time.perf_counter()
        status = _FAILED  # until the loop completes
        budget = Budget(tokens_per_batch or auto_tokens_per_batch(adapter))
        writer = ShardWriter()
        try:
            for i in todo:
                _write_shard(adapter, records, shards[i], work / "shards", layers, dtype, budget, bar, writer, precision)
            writer.close()  # the last shards are finished; raises what the writer thread raised
            status = _OK
        except WorkbenchError:
            status = _INVALID
            raise
        finally:
            # Joined before anything else: after an interrupt it finishes the shards that were complete; after bad
            # data it drops the rest, as the working folder is removed below.
            writer.shutdown(drain=status != _INVALID)
            if bar is not None:
                bar.close()
            worst = dist.worst(status)
            if worst == _INVALID and dist.rank == 0:
                shutil.rmtree(work, ignore_errors=True)  # bad data or model: resuming cannot help
        if worst != _OK:
            raise WorkbenchError(f"extraction failed on another rank; see its error (progress kept in {work})")
        elapsed = time.perf_counter() - t0

        if dist.rank == 0:
            control = {"random_weights_seed": random_weights} if random_weights is not None else None
            _finish(work, out, adapter, records, shards, plan, dtype, dist.world_size, elapsed, overwrite, source, control)
        dist.barrier()
    finally:
        dist.close()
    return ActivationStore(out)


def _progress(total: int, enabled: bool, name: str) -> Any:
    if not enabled:
        return None
    from workbench._progress import progress_bar

    return progress_bar(total=total, unit="tok", unit_scale=True, desc=f"extract {name}", dynamic_ncols=True)


def _prepare_workdir(work: Path, plan: dict[str, Any]) -> None:
    plan_file = work / PLAN
    if plan_file.is_file():
        existing = json.loads(plan_file.read_text())
        if existing != plan:
            diff = sorted(k for k in plan if existing.get(k) != plan[k])
            raise StoreError(
                f"{work} holds an unfinished extraction with different {', '.join(diff)}; delete it to start over"
            )
        return
    (work / "shards").mkdir(parents=True, exist_ok=True)
    write_json_atomic(plan_file, plan)


def _write_shard(
    adapter: Adapter,
    records: Sequence[Any],
    shard: ShardInfo,
    shards_dir: Path,
    layers: list[int],
    dtype: str,
    budget: Budget,
    bar: Any,
    writer: ShardWriter,
    precision: str = "fp32",
) -> None:
    """Run one shard's batches and hand their rows to ``writer``, which renames the shard into place once complete.

    Each batch's activations are cast to ``dtype`` on the device and their copy to the host is started
    (:func:`~workbench._shard_writer.to_host`) before the next batch's forward pass is queued.
    """
    recs = records[shard.first_sequence : shard.first_sequence + shard.n_sequences]
    sizes = np.array([adapter.n_kept(r) for r in recs], dtype=np.int64)
    files = ShardFiles(shard.name, shards_dir / f".{shard.name}.tmp-{os.getpid()}", shards_dir / shard.name, sizes,
                       layers, adapter.d_model, dtype, adapter.name)

    def step(batch: Any) -> None:
        acts = adapter.activations(batch, layers, precision=precision)
        rows = to_host(acts.layers, dtype)
        index = list(batch.index)
        writer.submit(lambda: files.write(index, rows, acts.obs))
        if bar is not None:
            bar.update(int(sizes[index].sum()))

    run_batches(adapter, recs, budget, step)
    writer.submit(files.finish)


def _finish(
    work: Path,
    out: Path,
    adapter: Adapter,
    records: Sequence[Any],
    shards: list[ShardInfo],
    plan: dict[str, Any],
    dtype: str,
    world_size: int,
    elapsed: float,
    overwrite: bool,
    source: str,
    control: dict[str, Any] | None,
) -> None:
    import pandas as pd

    missing = [s.name for s in shards if not (work / "shards" / s.name).is_dir()]
    if missing:
        raise StoreError(f"{work}: shards {missing[:3]} are missing; run again to resume")
    rows = []
    for k, shard in enumerate(shards):
        offset = 0
        for rec in records[shard.first_sequence : shard.first_sequence + shard.n_sequences]:
            n = adapter.n_kept(rec)
            rows.append({"sequence_id": rec.id, "shard": k, "offset": offset, "n_tokens": n, **dict(getattr(rec, "meta", {}))})
            offset += n
    seq_tmp = work / ".sequences.parquet.tmp"
    pd.DataFrame(rows).to_parquet(seq_tmp, index=False)
    os.replace(seq_tmp, work / "sequences.parquet")
    manifest = {
        "format_version": FORMAT_VERSION,
        "workbench_version": __version__,
        "model": adapter.name,
        "model_source": source,
        "control": control,
        "adapter": adapter.family,
        "card": adapter.card.to_dict(),
        "layers": plan["layers"],
        "d_model": adapter.d_model,
        "dtype": dtype,
        "precision": plan["precision"],
        "n_sequences": len(records),
        "n_tokens": int(sum(s.n_tokens for s in shards)),
        "inputs_sha256": plan["inputs_sha256"],
        "weights_sha256": plan["weights_sha256"],
        "shard_tokens": plan["shard_tokens"],
        "shards": [{**asdict(s), "sha256": shard_hashes(work / "shards" / s.name, plan["layers"])} for s in shards],
        "world_size": world_size,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "extract_seconds_last_run": round(elapsed, 3),
    }
    write_json_atomic(work / MANIFEST, manifest)
    (work / PLAN).unlink()
    for s in shards:  # the manifest now holds the shards' hashes
        (work / "shards" / s.name / HASHES_FILE).unlink(missing_ok=True)
    for folder in (work / "shards", work):  # a finished store holds no temporary file of any run
        remove_temps(folder)
    if out.exists() and overwrite:
        old = out.with_name(out.name + f".old-{os.getpid()}")
        os.replace(out, old)
        os.replace(work, out)
        shutil.rmtree(old)
    else:
        os.replace(work, out)
