"""The streamed annotation: whole-store statistics shard by shard, the analyses on a capped sample, resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from workbench.errors import WorkbenchError

TRAIN = dict(n_tokens=256 * 60, batch_size=256, lr=3e-3, warmup_steps=5, checkpoint_every=0, loss_recovered_sequences=0)


@pytest.fixture(scope="module")
def setup(tiny_esm2: Path, oas_fasta: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A store and its random-weight control cut into several shards, their SAEs, ANARCI and motif labels."""
    import workbench
    from domains.sequence.sources import labels_from_specs
    from workbench.sae import TrainConfig, train_sae

    root = tmp_path_factory.mktemp("stream_annotate")
    store = workbench.extract(str(tiny_esm2), str(oas_fasta), layers=[1], out=root / "store", shard_tokens=1200,
                              progress=False)
    control = workbench.extract(str(tiny_esm2), str(oas_fasta), layers=[1], out=root / "control", random_weights=3,
                                shard_tokens=1200, progress=False)
    assert len(store.shards) >= 3
    train = TrainConfig(**TRAIN)
    train_sae(store, out=root / "sae", layer=1, width=64, k=8, train=train, progress=False)
    train_sae(control, out=root / "sae_control", layer=1, width=64, k=8, train=train, progress=False)
    labels = labels_from_specs(store, ["anarci", "motif"])
    return {"root": root, "store": store, "control": control, "labels": labels}


def run(setup: dict[str, Any], out: Path, **kwargs: Any) -> Any:
    import workbench
    from workbench._pipeline import AnnotateConfig

    config = kwargs.pop("config", AnnotateConfig(n_permutations=3, n_causal=2, causal_sequences=2, probe_cv=3,
                                                 n_bootstrap=100))
    labels = kwargs.pop("labels", setup["labels"])
    return workbench.annotate(setup["store"], setup["root"] / "sae", labels, layer=1, out=out,
                              control_store=setup["control"], control_sae=setup["root"] / "sae_control", config=config,
                              progress=False, **kwargs)


def test_streamed_annotation_of_a_whole_sample_is_the_in_memory_one(setup: dict[str, Any], tmp_path: Path) -> None:
    memory = run(setup, tmp_path / "memory")
    streamed = run(setup, tmp_path / "streamed", stream=True)
    assert not (tmp_path / "streamed.annotate-work").exists()  # removed once the catalog is written
    info = streamed.summary["streamed"]
    assert info["sample"]["n_tokens"] == setup["store"].n_tokens and info["n_shards"] == len(setup["store"].shards)
    for name in memory.tables:
        a, b = (t.drop(columns=[c for c in ("seconds",) if c in t.columns]) for t in (memory.table(name), streamed.table(name)))
        pd.testing.assert_frame_equal(a, b, check_exact=name != "profile", rtol=1e-12, obj=name)
    assert set(streamed.tables) - set(memory.tables) == {"sample_sequences"}
    pd.testing.assert_frame_equal(memory.features, streamed.features, check_exact=False, rtol=1e-12)
    assert (memory.adata.X != streamed.adata.X).nnz == 0
    pd.testing.assert_frame_equal(memory.adata.uns["examples"], streamed.adata.uns["examples"])
    assert np.array_equal(memory.adata.uns["example_activations"], streamed.adata.uns["example_activations"])
    assert (memory.table("verdicts")["verdict"] != "not captured").any()


def test_a_capped_sample_keeps_whole_store_statistics_and_resumes(setup: dict[str, Any], tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import workbench._stream_pipeline as sp
    from workbench._pipeline import AnnotateConfig

    config = AnnotateConfig(n_permutations=2, n_causal=1, causal_sequences=2, probe_cv=3, n_bootstrap=50,
                            sample_tokens=setup["store"].n_tokens // 3)
    # A run killed after the associations: the finished stages are kept in the work folder, nothing at out.
    def killed(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(sp, "top_sequences", killed)
    with pytest.raises(KeyboardInterrupt):
        run(setup, tmp_path / "cat", stream=True, config=config)
    assert not (tmp_path / "cat").exists()
    work = tmp_path / "cat.annotate-work"
    assert {"association-sae", "association-neurons", "association-random", "verdicts"} <= {p.name for p in work.iterdir()}
    monkeypatch.undo()
    assert (work / "verified.json").is_file()  # the shards hashed by the killed run
    from workbench.store import ActivationStore

    import os

    touched = setup["store"].shard_dir(1) / "layer_1.npy"  # same bytes, a new modification time: hashed again
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 1_000_000))
    hashed: list[int] = []
    verify = ActivationStore.verify_shard
    monkeypatch.setattr(ActivationStore, "verify_shard",
                        lambda self, i, **kw: (hashed.append(i), verify(self, i, **kw))[1])
    catalog = run(setup, tmp_path / "cat", stream=True, config=config)
    monkeypatch.undo()
    assert sorted(set(hashed)) == [1]  # files unchanged since the killed run hashed them are not hashed again
    info = catalog.summary["streamed"]
    assert {"association-sae", "association-neurons", "association-random", "verdicts"} <= set(info["resumed_stages"])
    assert not work.exists()
    sample = info["sample"]
    assert 0 < sample["n_tokens"] <= setup["store"].n_tokens // 3 and sample["n_sequences"] < setup["store"].n_sequences
    assert len(catalog.table("sample_sequences")) == sample["n_sequences"]
    # Whole-store statistics: the association is the in-memory one on every token, the catalog holds every sequence.
    from workbench.associate import associate_store
    from workbench.stratified import token_strata

    store, labels = setup["store"], setup["labels"]
    strata = token_strata(labels, store.obs(), groups=config.strata_groups, columns=config.strata_columns,
                          sequence_groups=config.strata_sequence_groups)
    whole = associate_store(store, labels, layer=1, sae=workbench_sae(setup), n_permutations=2, strata=strata.codes)
    for name in ("pairs", "best"):
        got = catalog.table("association" if name == "pairs" else "best_sae")
        want = getattr(whole, name)
        pd.testing.assert_frame_equal(got[want.columns.drop(["null_p", "null_p_empirical", "null_z", "null_q"],
                                                              errors="ignore")].reset_index(drop=True),
                                      want[want.columns.drop(["null_p", "null_p_empirical", "null_z", "null_q"],
                                                             errors="ignore")].reset_index(drop=True),
                                      check_exact=True, check_categorical=False, check_dtype=False)
    assert catalog.summary["n_sequences"] == store.n_sequences and catalog.summary["n_tokens"] == store.n_tokens
    # The catalog holds the sample, the examples' and the findings' sequences, not every sequence of the store.
    held = set(catalog.adata.obs_names)
    findings = catalog.table("concept_findings")["examples"].astype(str)
    named = {x.strip() for text in findings for x in text.split(",") if x.strip()}
    assert held >= (set(catalog.table("sample_sequences")["sequence_id"])
                    | set(catalog.adata.uns["examples"]["sequence_id"].astype(str)) | named)
    assert catalog.summary["streamed"]["catalog_sequences"] != "all"
    obs = catalog.adata.obs
    assert obs.loc[catalog.table("sample_sequences")["sequence_id"].astype(str), "pooled"].all()
    assert (catalog.features["n_sequences"] > 0).any()  # sequences fired in: counted over the whole store
    assert len(catalog.table("probes")) and len(catalog.table("missing_annotations")) >= 0


def workbench_sae(setup: dict[str, Any]) -> Any:
    from workbench.sae import load_sae

    return load_sae(setup["root"] / "sae")


def test_streamed_annotation_refuses_changed_or_missing_shards(setup: dict[str, Any], tmp_path: Path) -> None:
    import shutil

    import workbench
    from workbench.errors import StoreError

    copy = tmp_path / "store"
    shutil.copytree(setup["store"].path, copy)
    target = copy / "shards" / "shard-00001" / "layer_1.npy"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="shard-00001.*changed"):
        workbench.annotate(workbench.open_store(copy), setup["root"] / "sae", setup["labels"], layer=1,
                           out=tmp_path / "cat", stream=True, progress=False)
    (copy / "shards" / "shard-00002" / "obs.parquet").unlink()
    with pytest.raises(StoreError, match="shard-00002/obs.parquet is missing"):
        workbench.annotate(workbench.open_store(copy), setup["root"] / "sae", setup["labels"], layer=1,
                           out=tmp_path / "cat", stream=True, progress=False)
    with pytest.raises(WorkbenchError, match="too small for shard shard-00000"):
        workbench.annotate(setup["store"], setup["root"] / "sae", setup["labels"], layer=1, out=tmp_path / "cat",
                           max_memory=100_000, progress=False)
    assert not (tmp_path / "cat").exists()


def test_two_processes_write_the_one_process_catalog(setup: dict[str, Any], tmp_path: Path) -> None:
    import os
    import pickle
    import subprocess
    import sys
    import textwrap

    from workbench._pipeline import AnnotateConfig

    config = AnnotateConfig(n_permutations=2, n_causal=0, probe_cv=3, n_bootstrap=50, score_descriptions=False,
                            sample_tokens=setup["store"].n_tokens // 2)
    one = run(setup, tmp_path / "one", stream=True, config=config)
    with open(tmp_path / "inputs.pkl", "wb") as fh:
        pickle.dump((setup["labels"], config), fh)
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import pickle
        import workbench
        labels, config = pickle.load(open({str(tmp_path / 'inputs.pkl')!r}, "rb"))
        root = {str(setup['root'])!r}
        workbench.annotate(root + "/store", root + "/sae", labels, layer=1, out={str(tmp_path / 'two')!r},
                           control_store=root + "/control", control_sae=root + "/sae_control", config=config,
                           stream=True, progress=False)
    """))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                           str(29800 + os.getpid() % 1000), str(script)], capture_output=True, text=True, env=env,
                          cwd=Path(__file__).resolve().parents[2], timeout=900)
    assert proc.returncode == 0, proc.stderr[-6000:]
    import workbench

    two = workbench.Catalog.open(tmp_path / "two")
    assert two.summary["streamed"]["world_size"] == 2 and one.summary["streamed"]["world_size"] == 1
    for name in one.tables:
        a, b = (t.drop(columns=[c for c in ("seconds",) if c in t.columns]) for t in (one.table(name), two.table(name)))
        pd.testing.assert_frame_equal(a, b, check_exact=name != "profile", rtol=1e-12, obj=name)
    assert (one.adata.X != two.adata.X).nnz == 0
    pd.testing.assert_frame_equal(one.adata.uns["examples"], two.adata.uns["examples"])
    assert np.array_equal(one.adata.uns["example_activations"], two.adata.uns["example_activations"])
    assert not (tmp_path / "two.annotate-work").exists()


def test_cli_annotate_with_a_memory_budget(setup: dict[str, Any], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from workbench.cli import main

    root = setup["root"]
    base = ["annotate", "--store", str(root / "store"), "--layer", "1", "--sae", str(root / "sae"), "--source", "motif",
            "--source", "anarci", "--permutations", "0", "--n-causal", "0", "--no-progress"]
    assert main([*base, "--max-memory", "2G", "--out", str(tmp_path / "cat")]) == 0
    out = capsys.readouterr().out
    assert "peak memory" in out and "of a 2.00 GiB budget" in out and "streamed over" in out
    import workbench

    info = workbench.Catalog.open(tmp_path / "cat").summary["streamed"]
    assert info["memory_budget_gib"] == 2.0 and info["null_memory_gib"] == 0.5
    import torch

    bad = [(["--max-memory", "50K"], "too small for shard shard-00000"),
           (["--sample-tokens", "0"], "--sample-tokens must be positive"),
           (["--device", "cuda"], "is for the streamed stage's encoding")]
    if not torch.cuda.is_available():
        bad.append((["--stream", "--device", "cuda"], "no CUDA GPU here"))
    for extra, message in bad:
        assert main([*base, *extra, "--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1 and err.startswith("workbench: error:"), err
        assert not (tmp_path / "bad").exists() and not (tmp_path / "bad.annotate-work").exists()
    with pytest.raises(SystemExit) as exc:
        main([*base, "--max-memory", "lots", "--out", str(tmp_path / "bad")])
    assert exc.value.code == 2 and "not a size" in capsys.readouterr().err


def test_ranks_that_see_different_labels_are_refused(setup: dict[str, Any], tmp_path: Path) -> None:
    import os
    import pickle
    import subprocess
    import sys
    import textwrap

    labels = setup["labels"]
    with open(tmp_path / "labels.pkl", "wb") as fh:
        pickle.dump((labels, labels.subset(range(1, labels.tokens.shape[1]), None)), fh)
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import os, pickle
        import workbench
        from workbench.errors import WorkbenchError
        rank = int(os.environ["RANK"])
        labels = pickle.load(open({str(tmp_path / 'labels.pkl')!r}, "rb"))[rank]  # rank 1 lacks a concept
        root = {str(setup['root'])!r}
        try:
            workbench.annotate(root + "/store", root + "/sae", labels, layer=1, out={str(tmp_path / 'cat')!r},
                               stream=True, progress=False)
        except WorkbenchError as exc:
            open({str(tmp_path)!r} + f"/rank{{rank}}.txt", "w").write(str(exc))
    """))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                           str(29900 + os.getpid() % 1000), str(script)], capture_output=True, text=True, env=env,
                          cwd=Path(__file__).resolve().parents[2], timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for rank in (0, 1):
        assert "rank 1's labels differs from rank 0's" in (tmp_path / f"rank{rank}.txt").read_text()
    assert not (tmp_path / "cat").exists()


def test_labels_held_per_shard_give_the_same_catalog(setup: dict[str, Any], tmp_path: Path) -> None:
    from domains.sequence.sources import labels_from_specs
    from workbench._pipeline import AnnotateConfig
    from workbench.label_shards import build_label_shards

    config = AnnotateConfig(n_permutations=2, n_causal=1, causal_sequences=2, probe_cv=3, n_bootstrap=50,
                            sample_tokens=setup["store"].n_tokens // 2)
    shards = build_label_shards(setup["store"], lambda view: labels_from_specs(view, ["anarci", "motif"]),
                                tmp_path / "labels", key="anarci,motif")
    whole = run(setup, tmp_path / "whole", stream=True, config=config)
    sharded = run(setup, tmp_path / "sharded", config=config, labels=shards)  # label shards stream by themselves
    assert sharded.summary["streamed"]["n_shards"] == len(setup["store"].shards)
    for name in whole.tables:
        a, b = (t.drop(columns=[c for c in ("seconds",) if c in t.columns]) for t in (whole.table(name), sharded.table(name)))
        pd.testing.assert_frame_equal(a, b, check_exact=name != "profile", rtol=1e-12, obj=name)
    assert (whole.adata.X != sharded.adata.X).nnz == 0
    pd.testing.assert_frame_equal(whole.adata.obs, sharded.adata.obs)
    pd.testing.assert_frame_equal(whole.adata.uns["examples"], sharded.adata.uns["examples"])
