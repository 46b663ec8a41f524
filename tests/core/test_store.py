"""Extraction into a store, streaming reads, resume after a kill, and 2-process torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import workbench
import workbench._extract as extract_mod
from domains.sequence.readers import read_fasta
from workbench._shard_writer import HASHES_FILE
from workbench.errors import StoreError
from workbench.registry import load_adapter

REPO = Path(__file__).resolve().parents[2]


def _extract(tiny_esm2: Path, fasta: Path, out: Path, **kw):  # type: ignore[no-untyped-def]
    opts = {"layers": [1, 2], "shard_tokens": 500, "tokens_per_batch": 1024, "progress": False, **kw}
    return workbench.extract(str(tiny_esm2), fasta, out=out, **opts)


def _all(store, layer: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.concatenate([np.asarray(store.shard_activations(i, layer)) for i in range(len(store.shards))])


@pytest.fixture(scope="module")
def store(tiny_esm2: Path, oas_fasta: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return _extract(tiny_esm2, oas_fasta, tmp_path_factory.mktemp("s") / "store")


def test_manifest_and_one_row_per_residue(store, oas_fasta: Path) -> None:  # type: ignore[no-untyped-def]
    records = read_fasta(oas_fasta)
    m = store.manifest
    for key in ("model", "layers", "d_model", "n_sequences", "n_tokens", "dtype", "inputs_sha256", "weights_sha256", "workbench_version"):
        assert key in m
    assert m["layers"] == [1, 2] and m["d_model"] == 32 and m["dtype"] == "float16"
    assert store.n_sequences == 40 and store.n_tokens == sum(len(r) for r in records)
    assert len(store.shards) > 3  # 500-token shards
    obs = store.obs()
    assert len(obs) == store.n_tokens == len(_all(store, 2))
    # Token rows are in input order: sequence by sequence, positions 1..L, residues as in the file.
    assert "".join(obs["residue"]) == "".join(r.sequence for r in records)
    first = obs[obs["sequence_id"] == records[0].id]
    assert list(first["position"]) == list(range(1, len(records[0]) + 1))
    assert not (store.path.parent / "store.partial").exists()


def test_stored_values_equal_the_adapter_output(store, tiny_esm2: Path, oas_fasta: Path) -> None:  # type: ignore[no-untyped-def]
    adapter = load_adapter(str(tiny_esm2))
    rec = read_fasta(oas_fasta)[7]
    direct = adapter.activations(adapter.make_batch([rec]), [2]).layers[2].numpy()
    stored = store.get_sequence(rec.id, 2)
    np.testing.assert_allclose(stored, direct, rtol=2e-3, atol=2e-3)  # float16 storage


def test_iter_sequences_in_order(store) -> None:  # type: ignore[no-untyped-def]
    ids, total = [], 0
    for seq_id, obs, acts in store.iter_sequences(1):
        assert len(obs) == len(acts) and set(obs["sequence_id"]) == {seq_id}
        ids.append(seq_id)
        total += len(acts)
    assert ids == list(store.sequences["sequence_id"]) and total == store.n_tokens


def test_shuffled_batches_cover_every_token_once(store) -> None:  # type: ignore[no-untyped-def]
    batches = list(store.iter_batches(2, 64, shuffle=True, seed=3, buffer_shards=2))
    assert all(len(b) == 64 for b in batches[:-1]) and isinstance(batches[0], torch.Tensor)
    got = torch.cat(batches).numpy()
    ref = _all(store, 2).astype(np.float32)
    assert not np.array_equal(got, ref)  # shuffled
    np.testing.assert_array_equal(np.sort(got, axis=0), np.sort(ref, axis=0))
    again = torch.cat(list(store.iter_batches(2, 64, shuffle=True, seed=3, buffer_shards=2))).numpy()
    np.testing.assert_array_equal(got, again)  # deterministic given the seed


def test_ranks_stream_disjoint_shards(store) -> None:  # type: ignore[no-untyped-def]
    parts = [torch.cat(list(store.iter_batches(1, 50, rank=r, world_size=2, seed=1))) for r in (0, 1)]
    assert sum(len(p) for p in parts) == store.n_tokens
    both = np.sort(torch.cat(parts).numpy(), axis=0)
    np.testing.assert_array_equal(both, np.sort(_all(store, 1).astype(np.float32), axis=0))


def test_float32_and_unknown_layer(tiny_esm2: Path, oas_fasta: Path, tmp_path: Path) -> None:
    s = _extract(tiny_esm2, oas_fasta, tmp_path / "f32", dtype="float32", layers=[0])
    assert s.dtype == np.float32 and s.shard_activations(0, 0).dtype == np.float32
    with pytest.raises(StoreError, match="layer 2 was not extracted"):
        next(s.iter_batches(2, 8))


def test_resume_after_kill_equals_uninterrupted_run(tiny_esm2: Path, oas_fasta: Path, tmp_path: Path, monkeypatch, store) -> None:  # type: ignore[no-untyped-def]
    real = extract_mod._write_shard
    done: list[str] = []

    def dies_after_three(*args, **kwargs):  # type: ignore[no-untyped-def]
        if len(done) == 3:
            raise KeyboardInterrupt  # as if killed part-way through the fourth shard
        real(*args, **kwargs)
        done.append(args[2].name)

    monkeypatch.setattr(extract_mod, "_write_shard", dies_after_three)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        _extract(tiny_esm2, oas_fasta, out)
    partial = tmp_path / "resumed.partial"
    assert not out.exists() and sorted(p.name for p in (partial / "shards").iterdir()) == done
    assert all((partial / "shards" / name / HASHES_FILE).is_file() for name in done)
    # A shard finished by a version that recorded no hashes: they are computed when the manifest is written.
    (partial / "shards" / done[1] / HASHES_FILE).unlink()
    with pytest.raises(StoreError, match="unfinished extraction"):
        workbench.open_store(out)
    # A half-written shard folder from a hard kill is ignored and replaced.
    (partial / "shards" / ".shard-00003.tmp-999999").mkdir()
    finished = {name: (partial / "shards" / name / "layer_1.npy").stat().st_mtime_ns for name in done}

    written: list[str] = []
    monkeypatch.setattr(extract_mod, "_write_shard", lambda *a, **k: (written.append(a[2].name), real(*a, **k)))
    resumed = _extract(tiny_esm2, oas_fasta, out)
    assert written and not set(written) & set(done)  # finished shards were not redone
    for name, mtime in finished.items():
        assert (out / "shards" / name / "layer_1.npy").stat().st_mtime_ns == mtime
    for layer in (1, 2):
        np.testing.assert_array_equal(_all(resumed, layer), _all(store, layer))
    pd.testing.assert_frame_equal(resumed.obs(), store.obs())
    assert resumed.manifest["inputs_sha256"] == store.manifest["inputs_sha256"]
    assert [x.sha256 for x in resumed.shards] == [x.sha256 for x in store.shards]  # the same bytes as one run
    for i in range(len(resumed.shards)):
        resumed.verify_shard(i)


def test_resume_with_other_options_is_refused(tiny_esm2: Path, oas_fasta: Path, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(extract_mod, "_write_shard", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        _extract(tiny_esm2, oas_fasta, tmp_path / "x")
    monkeypatch.undo()
    with pytest.raises(StoreError, match="different layers"):
        _extract(tiny_esm2, oas_fasta, tmp_path / "x", layers=[2])


def test_existing_store_is_not_overwritten_without_flag(store, tiny_esm2: Path, oas_fasta: Path) -> None:  # type: ignore[no-untyped-def]
    before = (store.path / "manifest.json").read_text()
    with pytest.raises(StoreError, match="already exists"):
        _extract(tiny_esm2, oas_fasta, store.path)
    assert (store.path / "manifest.json").read_text() == before


def test_overwrite_replaces_atomically(tiny_esm2: Path, oas_fasta: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    _extract(tiny_esm2, oas_fasta, out, layers=[1])
    s = _extract(tiny_esm2, oas_fasta, out, layers=[2], overwrite=True)
    assert s.layers == [2] and not (out / "shards" / "shard-00000" / "layer_1.npy").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_torchrun_two_processes_equals_one(tiny_esm2: Path, oas_fasta: Path, tmp_path: Path, store) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(29500 + os.getpid() % 1000),
        "-m", "workbench.cli", "extract", "--model", str(tiny_esm2), "--input", str(oas_fasta), "--layers", "1,2",
        "--out", str(out), "--shard-tokens", "500", "--tokens-per-batch", "1024", "--no-progress",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = workbench.open_store(out)
    assert ddp.manifest["world_size"] == 2
    for layer in (1, 2):
        np.testing.assert_array_equal(_all(ddp, layer), _all(store, layer))
    pd.testing.assert_frame_equal(ddp.obs(), store.obs())
    assert json.loads((out / "manifest.json").read_text())["n_tokens"] == store.n_tokens


def test_labels_from_token_values_one_instance_per_sequence() -> None:
    import pandas as pd

    from workbench.concepts import labels_from_token_values

    obs = pd.DataFrame({"sequence_id": ["a"] * 4 + ["b"] * 3, "position": [1, 2, 3, 4, 1, 2, 3]})
    values = pd.DataFrame({"frame": ["top", "top", "bottom", None, "top", "bottom", "bottom"]})
    seq = pd.DataFrame({"sequence_id": ["a", "b"], "label": ["x", None]})
    labels = labels_from_token_values(obs, values, sequence_values=seq, source="m")
    table = labels.token_concepts.set_index("concept")
    assert table.loc["frame=top", "n_tokens"] == 3 and table.loc["frame=bottom", "n_tokens"] == 3
    assert table.loc["frame=top", "n_instances"] == 2
    top = labels.tokens[:, list(table.index).index("frame=top")].toarray().ravel()
    assert top.tolist() == [True, True, False, False, True, False, False]
    inst = labels.instances[:, list(table.index).index("frame=bottom")].toarray().ravel()
    assert inst.tolist() == [0, 0, 1, 0, 0, 2, 2]
    assert labels.sequence_concepts["concept"].tolist() == ["label=x"]
    assert labels.sequences.toarray().ravel().tolist() == [True, False]
    import pytest

    from workbench.errors import InputError

    with pytest.raises(InputError, match="rows"):
        labels_from_token_values(obs, values.iloc[:3])
