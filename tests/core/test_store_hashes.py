"""Per-shard SHA-256 in the manifest: recorded by the shard writer, kept across a resume, checked by verify_shard."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import workbench
from workbench._shard_writer import HASHES_FILE
from workbench.errors import StoreError
from workbench.store import file_sha256

LAYERS = [1, 2]
FILES = {"layer_1.npy", "layer_2.npy", "obs.parquet"}


def _extract(tiny_esm2: Path, fasta: Path, out: Path, **kw):  # type: ignore[no-untyped-def]
    opts = {"layers": LAYERS, "shard_tokens": 500, "tokens_per_batch": 1024, "progress": False, **kw}
    return workbench.extract(str(tiny_esm2), fasta, out=out, **opts)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _recorded_equal_recomputed(store) -> None:  # type: ignore[no-untyped-def]
    entries = json.loads((store.path / "manifest.json").read_text())["shards"]
    assert len(entries) == len(store.shards)
    for entry in entries:
        folder = store.path / "shards" / entry["name"]
        assert set(entry["sha256"]) == FILES
        for name, digest in entry["sha256"].items():
            assert digest == _sha(folder / name), f"{entry['name']}/{name}"
        assert not (folder / HASHES_FILE).exists()  # the manifest is the only record once the store is finished


@pytest.fixture(scope="module")
def store(tiny_esm2: Path, oas_fasta: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return _extract(tiny_esm2, oas_fasta, tmp_path_factory.mktemp("h") / "store")


@pytest.fixture()
def copy(store, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A copy of the store to damage."""
    shutil.copytree(store.path, tmp_path / "copy")
    return workbench.open_store(tmp_path / "copy")


def test_file_sha256_is_chunked_sha256(store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = store.shard_dir(0) / "layer_1.npy"
    assert file_sha256(path) == file_sha256(path, chunk_size=7) == _sha(path)
    (tmp_path / "empty").write_bytes(b"")
    assert file_sha256(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()


def test_manifest_records_each_shard_files_sha256(store) -> None:  # type: ignore[no-untyped-def]
    assert len(store.shards) > 3
    _recorded_equal_recomputed(store)
    shard = store.shards[0]
    assert shard.sha256 is not None and set(shard.sha256) == FILES
    assert shard == dataclasses.replace(shard, sha256=None)  # the hashes are not part of a shard's identity
    assert store.missing_shards() == []
    for i in range(len(store.shards)):
        store.verify_shard(i)
        store.verify_shard(i, layer=2)
    store.check()


def test_a_changed_byte_is_refused_naming_the_shard_and_file(copy) -> None:  # type: ignore[no-untyped-def]
    path = copy.shard_dir(2) / "layer_1.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # one bit of the last value: the shape and the header are unchanged
    path.write_bytes(bytes(data))
    assert copy.missing_shards() == []
    changed = r"shards/shard-00002/layer_1\.npy changed since the store was written \(sha256 differs\)"
    with pytest.raises(StoreError, match=changed) as info:
        copy.verify_shard(2)
    assert "\n" not in str(info.value) and str(copy.path) in str(info.value)
    copy.verify_shard(2, layer=2)  # only layer 2's file and obs.parquet
    with pytest.raises(StoreError, match="changed"):
        copy.verify_shard(2, layer=1)
    copy.verify_shard(1)
    with pytest.raises(StoreError, match="layer 7 was not extracted"):
        copy.verify_shard(0, layer=7)


def test_a_missing_file_or_folder_is_listed_and_refused(copy) -> None:  # type: ignore[no-untyped-def]
    (copy.shard_dir(1) / "obs.parquet").unlink()
    assert copy.missing_shards() == ["shards/shard-00001/obs.parquet"]
    with pytest.raises(StoreError, match=r"shards/shard-00001/obs\.parquet is missing$") as info:
        copy.verify_shard(1)
    assert str(info.value) == f"{copy.path}/shards/shard-00001/obs.parquet is missing"
    with pytest.raises(StoreError, match="obs.parquet is missing"):
        copy.verify_shard(1, layer=2)
    with pytest.raises(StoreError, match=r"1 shard file\(s\) missing: shards/shard-00001/obs\.parquet"):
        copy.check()
    shutil.rmtree(copy.shard_dir(3))
    assert copy.missing_shards() == ["shards/shard-00001/obs.parquet", "shards/shard-00003"]
    with pytest.raises(StoreError, match=r"shards/shard-00003 is missing"):
        copy.verify_shard(3)
    with pytest.raises(StoreError, match="no shard 99"):
        copy.verify_shard(99)


def test_a_store_without_hashes_is_checked_by_existence_and_shape(copy) -> None:  # type: ignore[no-untyped-def]
    manifest = json.loads((copy.path / "manifest.json").read_text())
    for entry in manifest["shards"]:
        del entry["sha256"]
    (copy.path / "manifest.json").write_text(json.dumps(manifest))
    old = workbench.open_store(copy.path)
    assert all(s.sha256 is None for s in old.shards) and old.shards == copy.shards
    for i in range(len(old.shards)):
        old.verify_shard(i)
    path = old.shard_dir(0) / "layer_2.npy"
    good = np.load(path)
    np.save(path, good[:-1])  # one token short
    with pytest.raises(StoreError, match=r"shard-00000/layer_2\.npy: shape .* manifest says"):
        old.verify_shard(0)
    old.verify_shard(0, layer=1)
    np.save(path, good.astype(np.float32))
    with pytest.raises(StoreError, match=r"shard-00000/layer_2\.npy: dtype float32, manifest says float16"):
        old.verify_shard(0)
    (old.shard_dir(0) / "obs.parquet").unlink()
    with pytest.raises(StoreError, match="obs.parquet is missing"):
        old.verify_shard(0, layer=1)
