"""The streamed association (shard by shard, 1 or 2 processes) gives the in-memory association's tables exactly."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

import workbench
from workbench.associate import associate_store
from workbench.concepts import labels_from_spans
from workbench.errors import WorkbenchError
from workbench.sae import SparseAutoencoder
from workbench.stream_associate import associate_streaming, feature_maxima

REPO = Path(__file__).resolve().parents[2]


def same_tables(a, b) -> None:  # type: ignore[no-untyped-def]
    for field in ("pairs", "best", "thresholds"):
        x, y = getattr(a, field), getattr(b, field)
        assert x.equals(y), (field, x.compare(y) if x.shape == y.shape else (x.shape, y.shape))


@pytest.mark.parametrize("features,permutations", [("sae", 0), ("neurons", 0), ("sae", 6), ("neurons", 3)])
def test_streamed_tables_equal_the_in_memory_ones(stream_case, features: str, permutations: int) -> None:  # type: ignore[no-untyped-def]
    store, labels, sae, _ = stream_case
    sae = sae if features == "sae" else None
    memory = associate_store(store, labels, layer=1, sae=sae, n_permutations=permutations, seed=3)
    streamed = associate_streaming(store, labels, layer=1, sae=sae, batch_size=300, n_permutations=permutations, seed=3,
                                   null_memory=1)  # one permutation per read of the shards
    if permutations:
        assert memory.best["null_p"].notna().all() and (memory.best["null_z"] != 0).any()
    same_tables(memory, streamed)
    assert streamed.params["streamed"] is True and (streamed.best["n_scope"] < store.n_tokens).sum() == 1
    assert memory.best["test_f1"].max() > 0.3  # not a trivial stream_case: some concept is picked up


def residue_strata(store, labels) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Strata of residue x position decile: the residue concepts are functions of them, the regions are not."""
    from workbench.stratified import token_strata

    obs = store.obs(["sequence_id", "position", "residue"]).assign(decile=lambda o: o["position"] // 10)
    return token_strata(labels, obs, groups=(), columns=("residue", "decile"), sequence_groups=()).codes


@pytest.mark.parametrize("features", ["sae", "neurons"])
def test_streamed_stratified_test_equals_the_in_memory_one(stream_case, features: str) -> None:  # type: ignore[no-untyped-def]
    store, labels, sae, _ = stream_case
    sae = sae if features == "sae" else None
    strata = residue_strata(store, labels)
    memory = associate_store(store, labels, layer=1, sae=sae, n_permutations=0, strata=strata)
    streamed = associate_streaming(store, labels, layer=1, sae=sae, strata=strata)
    same_tables(memory, streamed)
    status = streamed.pairs.groupby(streamed.pairs["concept"].str.startswith("aa="))["stratified"].agg(set)
    assert status[True] == {"not testable"} and "not testable" not in status[False]
    assert np.isfinite(streamed.pairs["or_mh"]).any() and streamed.params["stratified"] is True


def test_streamed_verdicts_equal_the_in_memory_ones(stream_case, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from workbench.associate import feature_matrix, neuron_matrix
    from workbench.stream_associate import ShardFeatures, verdicts_streaming
    from workbench.verdicts import concept_verdicts

    store, labels, sae, _ = stream_case
    ids, token_seq = store.sequences["sequence_id"].astype(str).tolist(), store.token_sequence()
    memory = {"sae": associate_store(store, labels, layer=1, sae=sae, n_permutations=0),
              "neurons": associate_store(store, labels, layer=1, n_permutations=0)}
    expected = concept_verdicts({"sae": (feature_matrix(store, sae, layer=1), memory["sae"]),
                                 "neurons": (neuron_matrix(store, layer=1), memory["neurons"])},
                                labels, ids, token_seq, n_boot=200, seed=4)
    reps = {"sae": ShardFeatures(store, 1, sae, cache=tmp_path / "codes"), "neurons": ShardFeatures(store, 1)}
    streamed = {name: associate_streaming(store, labels, layer=1, sae=f.sae, maxima=f.maxima, code_cache=tmp_path / "codes")
                for name, f in reps.items()}
    got = verdicts_streaming(store, labels, {name: (reps[name], streamed[name]) for name in reps}, n_boot=200, seed=4)
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    assert (got["verdict"] != "not captured").any() and got["diff_neurons_low"].notna().any()


def test_feature_maxima_are_the_in_memory_maxima(stream_case) -> None:  # type: ignore[no-untyped-def]
    from workbench.associate import feature_matrix, neuron_matrix

    store, _, sae, _ = stream_case
    assert np.array_equal(feature_maxima(store, layer=1, sae=sae), feature_matrix(store, sae, layer=1).max_activation)
    assert np.array_equal(feature_maxima(store, layer=1), neuron_matrix(store, layer=1).max_activation)


def test_two_processes_give_the_one_process_tables(stream_case, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store, labels, sae, root = stream_case
    strata = residue_strata(store, labels)
    np.save(tmp_path / "strata.npy", strata)
    one = associate_streaming(store, labels, layer=1, sae=sae, n_permutations=5, strata=strata)
    from workbench.stream_associate import ShardFeatures, verdicts_streaming

    features = ShardFeatures(store, 1, sae)
    one_verdicts = verdicts_streaming(store, labels, {"sae": (features, one), "again": (features, one)}, n_boot=50)
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import os, pickle
        import numpy as np
        import workbench
        from workbench.sae import load_sae
        from workbench.stream_associate import associate_streaming
        store = workbench.open_store({str(store.path)!r})
        labels = pickle.load(open({str(root / 'labels.pkl')!r}, "rb"))
        res = associate_streaming(store, labels, layer=1, sae=load_sae({str(root / 'sae')!r}), n_permutations=5,
                                  strata=np.load({str(tmp_path / 'strata.npy')!r}))
        from workbench.stream_associate import ShardFeatures, verdicts_streaming
        features = ShardFeatures(store, 1, load_sae({str(root / 'sae')!r}))
        verdicts = verdicts_streaming(store, labels, {{"sae": (features, res), "again": (features, res)}}, n_boot=50)
        with open(os.path.join({str(tmp_path)!r}, f"rank{{os.environ['RANK']}}.pkl"), "wb") as fh:
            pickle.dump((res, verdicts), fh)
    """))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                           str(29700 + os.getpid() % 1000), str(script)], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-6000:]
    for rank in (0, 1):
        with open(tmp_path / f"rank{rank}.pkl", "rb") as fh:
            two, two_verdicts = pickle.load(fh)
        same_tables(one, two)
        pd.testing.assert_frame_equal(one_verdicts, two_verdicts, check_exact=True)
        assert two.params["world_size"] == 2


def test_streaming_refuses_what_it_does_not_do(stream_case) -> None:  # type: ignore[no-untyped-def]
    store, labels, sae, _ = stream_case
    obs = store.obs(["sequence_id", "position", "residue"]).iloc[:50]  # labels of another (shorter) store
    other = labels_from_spans(obs, pd.DataFrame({"sequence_id": obs["sequence_id"][:1], "start": [1], "end": [3], "concept": ["x"]}))
    with pytest.raises(WorkbenchError, match="labels cover 50 tokens"):
        associate_streaming(store, other, layer=1, sae=sae)
    with pytest.raises(WorkbenchError, match="layer 1"):
        associate_streaming(store, labels, layer=2, sae=sae)


def test_a_single_shard_store_gives_the_in_memory_null(stream_case, tiny_esm2: Path, oas_fasta: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """One shard: every shift's only chunk wraps around the whole store."""
    store, labels, _, _ = stream_case
    single = workbench.extract(str(tiny_esm2), oas_fasta, layers=[1], out=tmp_path / "one", progress=False)
    assert len(single.shards) == 1 and single.n_tokens == store.n_tokens
    memory = associate_store(single, labels, layer=1, n_permutations=4, seed=1)
    same_tables(memory, associate_streaming(single, labels, layer=1, n_permutations=4, seed=1))


def test_code_cache_is_reused_only_for_the_same_sae(stream_case, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store, labels, sae, _ = stream_case
    cache = tmp_path / "codes"
    first = associate_streaming(store, labels, layer=1, sae=sae, code_cache=cache)
    files = sorted(cache.glob("shard-*.npz"))
    assert len(files) == len(store.shards)
    same_tables(first, associate_streaming(store, labels, layer=1, sae=sae, code_cache=cache))  # read back
    other = SparseAutoencoder(sae.cfg)  # other weights: the cache is emptied and rebuilt, not reused
    with torch.no_grad():
        other.load_state_dict(sae.state_dict())
        other.W_enc.mul_(-1)
    in_memory = associate_store(store, labels, layer=1, sae=other, n_permutations=0)
    assert not in_memory.pairs.equals(first.pairs)  # the stale codes would have given the first tables
    same_tables(in_memory, associate_streaming(store, labels, layer=1, sae=other, code_cache=cache))
    same_tables(first, associate_streaming(store, labels, layer=1, sae=sae, code_cache=False))
    neurons = associate_streaming(store, labels, layer=1, code_cache=tmp_path / "unused")  # neurons need no cache
    same_tables(associate_store(store, labels, layer=1, n_permutations=0), neurons)
    assert not (tmp_path / "unused").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_streamed_association_encodes_on_the_gpu(stream_case: Any) -> None:
    from workbench.stream_associate import ShardFeatures, associate_streaming

    store, labels, sae, _ = stream_case
    cpu = associate_streaming(store, labels, layer=1, sae=sae)
    gpu = associate_streaming(store, labels, layer=1, sae=sae, device="cuda")
    assert next(sae.parameters()).device.type == "cpu"  # the caller's SAE stays where it was
    np.testing.assert_allclose(gpu.best["test_f1"], cpu.best["test_f1"], atol=0.02)
    features = ShardFeatures(store, 1, sae, device="cuda")
    assert next(features.sae.parameters()).device.type == "cuda"
    assert abs(features.shard(0) - ShardFeatures(store, 1, sae).shard(0)).max() < 1e-3
