"""The GPU-first extraction pipeline on the CPU: autocast precision, the background shard writer, host-side row
gathering and the out-of-memory back-off (CUDA-only checks skip without a GPU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import workbench
import workbench._extract as extract_mod
import workbench._shard_writer as writer_mod
from domains.sequence.readers import read_fasta
from workbench.cli import main
from workbench.errors import ModelError, StoreError, WorkbenchError
from workbench.registry import load_adapter

LAYERS = [0, 2]
OPTS = {"layers": LAYERS, "shard_tokens": 500, "tokens_per_batch": 1024, "progress": False}


def _all(store, layer: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.concatenate([np.asarray(store.shard_activations(i, layer)) for i in range(len(store.shards))])


def _gone(out: Path) -> bool:
    return not out.exists() and not out.with_name(out.name + ".partial").exists()


@pytest.fixture(scope="module")
def adapter(tiny_esm2: Path):  # type: ignore[no-untyped-def]
    return load_adapter(str(tiny_esm2))


@pytest.fixture(scope="module")
def records(oas_fasta: Path):  # type: ignore[no-untyped-def]
    return read_fasta(oas_fasta)


@pytest.fixture(scope="module")
def fp32_store(adapter, records, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return workbench.extract(adapter, records, out=tmp_path_factory.mktemp("p") / "fp32", precision="fp32", **OPTS)


def _direct(adapter, records, store, dtype: str) -> dict[int, np.ndarray]:  # type: ignore[no-untyped-def]
    """What the previous, serial extraction stored: adapter.activations per batch of each shard, then astype."""
    out = {layer: np.zeros((store.n_tokens, adapter.d_model), dtype=dtype) for layer in LAYERS}
    base = 0
    for shard in store.shards:
        recs = records[shard.first_sequence : shard.first_sequence + shard.n_sequences]
        sizes = np.array([len(r.sequence) for r in recs])
        offsets = base + np.concatenate([[0], np.cumsum(sizes)[:-1]])
        for batch in adapter.batches(recs, tokens_per_batch=OPTS["tokens_per_batch"]):
            acts = adapter.activations(batch, LAYERS)
            dest = np.concatenate([np.arange(offsets[j], offsets[j] + sizes[j]) for j in batch.index])
            for layer, t in acts.layers.items():
                out[layer][dest] = t.float().cpu().numpy().astype(dtype)
        base += shard.n_tokens
    return out


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_fp32_store_is_bit_identical_to_direct_activations(adapter, records, fp32_store, tmp_path: Path, dtype: str) -> None:  # type: ignore[no-untyped-def]
    store = fp32_store if dtype == "float16" else workbench.extract(adapter, records, out=tmp_path / "s", dtype=dtype, precision="fp32", **OPTS)
    assert store.manifest["precision"] == "fp32" and len(store.shards) > 3
    direct = _direct(adapter, records, store, dtype)
    for layer in LAYERS:
        stored = _all(store, layer)
        assert stored.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(stored, direct[layer])
    assert "".join(store.obs()["residue"]) == "".join(r.sequence for r in records)


def test_activations_gather_rows_like_a_boolean_mask(adapter, records) -> None:  # type: ignore[no-untyped-def]
    batch = adapter.make_batch(records[:5])
    for layer in (0, 1, 2):
        seen: list[torch.Tensor] = []
        adapter.run_with_edit(batch, layer, lambda h: (seen.append(h.clone()), h)[1])  # rows[keep] inside
        got = adapter.activations(batch, [layer]).layers[layer]
        assert got.dtype == seen[0].dtype and torch.equal(got, seen[0])


def test_auto_precision_and_budget_on_the_cpu(adapter, fp32_store, records, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert extract_mod.resolve_precision("auto", "cpu") == "fp32"
    assert extract_mod.auto_tokens_per_batch(adapter) == 8192
    store = workbench.extract(adapter, records, out=tmp_path / "auto", **{**OPTS, "tokens_per_batch": None})
    assert store.manifest["precision"] == "fp32"
    for layer in LAYERS:  # other batches than fp32_store's, same numbers up to float summation order
        np.testing.assert_allclose(_all(store, layer).astype(np.float32), _all(fp32_store, layer).astype(np.float32), rtol=1e-3, atol=1e-3)


def test_bf16_on_the_cpu_is_close_to_fp32(adapter, records, fp32_store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store = workbench.extract(adapter, records, out=tmp_path / "bf16", precision="bf16", **OPTS)
    assert store.manifest["precision"] == "bf16" and store.dtype == np.float16
    for layer in LAYERS:
        ref, got = _all(fp32_store, layer).astype(np.float32), _all(store, layer).astype(np.float32)
        assert np.isfinite(got).all() and (layer == 0 or not np.array_equal(got, ref))  # the blocks ran in bfloat16
        assert np.abs(got - ref).max() / np.abs(ref).max() < 5e-2
    assert all(p.dtype == torch.float32 for p in adapter.model.parameters())  # autocast, not a model cast


def test_bad_precision_is_an_error_naming_the_choices(adapter, records, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(WorkbenchError, match="auto, bf16, fp16, fp32.*'fp8'"):
        workbench.extract(adapter, records, out=tmp_path / "x", **{**OPTS, "precision": "fp8"})
    assert _gone(tmp_path / "x")
    with pytest.raises(ModelError, match="fp32, bf16, fp16"):
        adapter.activations(adapter.make_batch(records[:1]), [1], precision="half")


def test_resume_with_another_precision_is_refused(adapter, records, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    real = extract_mod._write_shard
    calls: list[str] = []

    def dies_on_second(*args, **kwargs):  # type: ignore[no-untyped-def]
        if calls:
            raise KeyboardInterrupt
        calls.append(args[2].name)
        real(*args, **kwargs)

    monkeypatch.setattr(extract_mod, "_write_shard", dies_on_second)
    out = tmp_path / "r"
    with pytest.raises(KeyboardInterrupt):
        workbench.extract(adapter, records, out=out, precision="fp32", **OPTS)
    partial = out.with_name("r.partial")
    assert json.loads((partial / "plan.json").read_text())["precision"] == "fp32"
    assert sorted(p.name for p in (partial / "shards").iterdir() if not p.name.startswith(".")) == calls  # drained
    monkeypatch.undo()
    with pytest.raises(StoreError, match="different precision"):
        workbench.extract(adapter, records, out=out, precision="bf16", **OPTS)
    resumed = workbench.extract(adapter, records, out=out, precision="fp32", **OPTS)
    assert resumed.manifest["precision"] == "fp32"


def test_float16_overflow_is_caught_on_the_writer_and_leaves_nothing(tiny_esm2: Path, records, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    big = load_adapter(str(tiny_esm2))
    with torch.no_grad():
        big.model.embed_tokens.weight.mul_(1e6)  # layer 0 rows far beyond float16's range, finite in float32
    out = tmp_path / "over"
    with pytest.raises(WorkbenchError, match=r"non-finite activations \(or values beyond float16's range: use dtype=float32\) at layer 0 in shard shard-0000"):
        workbench.extract(big, records, out=out, precision="fp32", **OPTS)
    assert _gone(out)
    store = workbench.extract(big, records, out=tmp_path / "f32", dtype="float32", precision="fp32", **OPTS)
    assert np.isfinite(_all(store, 0)).all() and np.abs(_all(store, 0)).max() > 65504


def test_a_writer_failure_in_a_later_shard_keeps_finished_shards_resumable(adapter, records, fp32_store, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    real = writer_mod.ShardFiles.write
    seen: list[str] = []

    def disk_full_in_third_shard(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(self.name)
        if self.name == "shard-00002":
            raise OSError("No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(writer_mod.ShardFiles, "write", disk_full_in_third_shard)
    out = tmp_path / "w"
    with pytest.raises(OSError, match="No space left"):
        workbench.extract(adapter, records, out=out, precision="fp32", **OPTS)
    shards = out.with_name("w.partial") / "shards"
    assert sorted(p.name for p in shards.iterdir() if not p.name.startswith(".")) == ["shard-00000", "shard-00001"]
    assert not any(t.is_dir() and t.name.startswith(".") and (t / "obs.parquet").exists() for t in shards.iterdir())
    monkeypatch.undo()
    resumed = workbench.extract(adapter, records, out=out, precision="fp32", **OPTS)
    for layer in LAYERS:
        np.testing.assert_array_equal(_all(resumed, layer), _all(fp32_store, layer))


def test_shard_writer_raises_errors_at_the_next_submit_and_always_joins() -> None:
    w = writer_mod.ShardWriter(max_items=2)
    w.submit(lambda: (_ for _ in ()).throw(WorkbenchError("bad rows")))
    with pytest.raises(WorkbenchError, match="bad rows"):
        for _ in range(1000):  # raised at one of the next submits, once the thread has run the step
            w.submit(lambda: None)
    w.shutdown(drain=False)
    assert not w._thread.is_alive()
    done: list[int] = []
    w = writer_mod.ShardWriter()
    for i in range(5):
        w.submit(lambda i=i: done.append(i))
    w.close()
    assert done == list(range(5)) and not w._thread.is_alive()


def _oom_over(adapter, limit: int, calls: list[int]):  # type: ignore[no-untyped-def]
    real = type(adapter).forward

    def forward(**inputs):  # type: ignore[no-untyped-def]
        n = inputs["tokens"].numel()
        calls.append(n)
        if n > limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(adapter, **inputs)

    return forward


def test_out_of_memory_halves_the_budget_and_redoes_the_batch(tiny_esm2: Path, records, fp32_store, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    oomy = load_adapter(str(tiny_esm2))
    calls: list[int] = []
    monkeypatch.setattr(oomy, "forward", _oom_over(oomy, 300, calls))
    budgets: list[int] = []
    real_halve = extract_mod.Budget.halve
    monkeypatch.setattr(extract_mod.Budget, "halve", lambda self: (real_halve(self), budgets.append(self.tokens)))
    store = workbench.extract(oomy, records, out=tmp_path / "oom", precision="fp32", **OPTS)
    assert budgets[:2] == [512, 256] and budgets[-1] == 256  # halved for the rest of the run, not per batch
    assert max(calls) > 300 and max(c for c in calls[-10:]) <= 300
    assert store.n_tokens == fp32_store.n_tokens and store.shards == fp32_store.shards
    pd.testing.assert_frame_equal(store.obs(), fp32_store.obs())
    for layer in LAYERS:  # smaller batches: the same numbers up to float summation order
        np.testing.assert_allclose(_all(store, layer).astype(np.float32), _all(fp32_store, layer).astype(np.float32), rtol=1e-3, atol=1e-3)


def test_a_record_that_never_fits_is_a_one_line_error(tiny_esm2: Path, records, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    oomy = load_adapter(str(tiny_esm2))
    monkeypatch.setattr(oomy, "forward", _oom_over(oomy, 50, []))
    out = tmp_path / "never"
    with pytest.raises(WorkbenchError, match="out of GPU memory on a single record") as info:
        workbench.extract(oomy, records, out=out, precision="fp32", **OPTS)
    assert "\n" not in str(info.value) and _gone(out)


def test_cli_precision_passes_through_and_bad_values_fail_in_one_line(capsys, tiny_esm2: Path, oas_fasta: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    def cli(out: Path, *extra: str) -> tuple[int, str]:
        code = main(["extract", "--model", str(tiny_esm2), "--input", str(oas_fasta), "--layers", "1", "--out", str(out),
                     "--no-progress", *extra])
        return code, capsys.readouterr().err

    code, _ = cli(tmp_path / "ok", "--precision", "bf16", "--tokens-per-batch", "2048")
    assert code == 0 and workbench.open_store(tmp_path / "ok").manifest["precision"] == "bf16"
    for extra, words in ((["--precision", "fp8"], ["precision", "auto, bf16, fp16, fp32"]), (["--tokens-per-batch", "0"], ["tokens_per_batch"])):
        out = tmp_path / "bad"
        code, err = cli(out, *extra)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("workbench: error:"), err
        assert all(w in lines[0] for w in words) and _gone(out)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_extraction_matches_the_cpu(tiny_esm2: Path, records, fp32_store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    gpu = load_adapter(str(tiny_esm2), device="cuda")
    assert extract_mod.resolve_precision("auto", "cuda") in ("bf16", "fp16")
    assert 8192 <= extract_mod.auto_tokens_per_batch(gpu) <= 131072
    store = workbench.extract(gpu, records, out=tmp_path / "cuda32", precision="fp32", **OPTS)
    pd.testing.assert_frame_equal(store.obs(), fp32_store.obs())
    for layer in LAYERS:
        np.testing.assert_allclose(_all(store, layer).astype(np.float32), _all(fp32_store, layer).astype(np.float32), rtol=1e-2, atol=1e-2)
    auto = workbench.extract(gpu, records, out=tmp_path / "cuda_auto", **{**OPTS, "tokens_per_batch": None})
    assert auto.manifest["precision"] in ("bf16", "fp16")
    for layer in LAYERS:
        ref = _all(fp32_store, layer).astype(np.float32)
        assert np.abs(_all(auto, layer).astype(np.float32) - ref).max() / np.abs(ref).max() < 5e-2
