"""The GPU-oriented training paths, run on the CPU: dense kernels, bf16 autocast, device-side batches, prefetching,
several SAEs from one pass, torch.compile. CUDA-only checks skip without a GPU."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import workbench
import workbench.sae._train as train_mod
from workbench._prefetch import prefetch
from workbench.errors import WorkbenchError
from workbench.sae import RunSpec, SAEConfig, SparseAutoencoder, TrainConfig, sweep, train_sae, train_saes

from core_helpers import small_train as core_small_train  # noqa: E402  (tests/core, on the path under pytest)

REPO = Path(__file__).resolve().parents[2]
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def small_train(**kw) -> TrainConfig:  # type: ignore[no-untyped-def]
    """The shared tiny-store settings, shorter, with checkpoints every 20 steps and no loss-recovered metric."""
    return core_small_train(**{"n_tokens": 256 * 60, "checkpoint_every": 20, "loss_recovered_sequences": 0, **kw})


@pytest.fixture(scope="module")
def store(tiny_esm2: Path, oas_fasta: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return workbench.extract(str(tiny_esm2), oas_fasta, layers=[2], out=tmp_path_factory.mktemp("fast") / "store",
                             shard_tokens=500, progress=False)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


# -- dense kernels: the same values and gradients as the sparse ones ---------------------------------------------
@pytest.mark.parametrize("arch", ["topk", "batchtopk", "matryoshka"])
@pytest.mark.parametrize("use_aux", [False, True])
@pytest.mark.parametrize("free_norm", [False, True])
def test_dense_kernels_match_sparse_kernels(arch: str, use_aux: bool, free_norm: bool) -> None:
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=16, width=64, arch=arch, k=4, normalize=False)).double()  # type: ignore[arg-type]
    if free_norm:
        sae.start_free_norm(0.3)
    sae.b_dec.data.normal_()
    sae.b_enc.data.normal_(0, 0.1)
    x = torch.randn(10, 16, dtype=torch.double)
    dead = torch.rand(64) < 0.5
    results = {}
    for kernels in ("sparse", "dense"):
        sae.zero_grad()
        out = sae(x, dead=dead if use_aux else None, aux_k=8, aux_coeff=0.1, kernels=kernels)
        out.loss.backward()
        results[kernels] = (out, {n: p.grad.clone() for n, p in sae.named_parameters()})
    (sparse, g_sparse), (dense, g_dense) = results["sparse"], results["dense"]
    assert float(sparse.aux) > 0 if use_aux else float(dense.aux) == 0
    for field in ("loss", "mse", "aux", "x_hat", "l0"):
        torch.testing.assert_close(getattr(dense, field).double(), getattr(sparse, field).double(), rtol=1e-10, atol=1e-12, msg=field)
    torch.testing.assert_close(dense.codes.dense(64).double(), sparse.codes.dense(64), rtol=1e-6, atol=1e-6)
    assert torch.equal(dense.fired, sparse.fired) and dense.fired.sum() > 0
    for name in g_sparse:
        torch.testing.assert_close(g_dense[name], g_sparse[name], rtol=1e-10, atol=1e-12, msg=name)


def test_aux_loss_without_dead_latents_is_zero_on_both_kernels() -> None:
    torch.manual_seed(1)
    sae = SparseAutoencoder(SAEConfig(d_in=8, width=32, k=4, normalize=False))
    x = torch.randn(6, 8)
    for kernels in ("sparse", "dense"):
        out = sae(x, dead=torch.zeros(32, dtype=torch.bool), aux_k=8, aux_coeff=0.1, kernels=kernels)
        assert float(out.aux) == 0.0


def test_codes_false_lists_nothing_but_reports_fired_and_l0() -> None:
    torch.manual_seed(2)
    for arch in ("topk", "relu", "jumprelu"):
        sae = SparseAutoencoder(SAEConfig(d_in=8, width=32, arch=arch, k=3, normalize=False))  # type: ignore[arg-type]
        x = torch.randn(5, 8)
        full, quiet = sae(x, kernels="dense"), sae(x, kernels="dense", codes=False)
        assert quiet.codes is None and full.codes is not None
        assert torch.equal(quiet.fired, torch.bincount(full.codes.cols, minlength=32) > 0)
        assert float(quiet.l0) == pytest.approx(len(full.codes.values) / 5)


# -- batches: the device path and the prefetch thread change nothing ---------------------------------------------
@pytest.mark.parametrize("opts", [dict(split="train"), dict(split=None, rank=1, world_size=2),
                                  dict(split="test", rank=0, world_size=50), dict(split=None, shuffle=False)])
def test_device_batches_and_prefetch_give_the_host_batches(store, opts: dict) -> None:  # type: ignore[type-arg]
    host = list(store.iter_batches(2, 96, seed=5, holdout_fraction=0.2, **opts))
    for kw in (dict(device="cpu"), dict(prefetch=2), dict(device="cpu", prefetch=3)):
        other = list(store.iter_batches(2, 96, seed=5, holdout_fraction=0.2, **opts, **kw))
        assert len(other) == len(host) > 0
        assert all(torch.equal(a, b) for a, b in zip(host, other))
    half = list(store.iter_batches(2, 96, seed=5, holdout_fraction=0.2, device="cpu", dtype="float16", **opts))
    assert half[0].dtype == torch.float16 and torch.equal(half[0].float(), host[0])


def test_prefetch_keeps_order_raises_where_the_producer_failed_and_stops_when_closed() -> None:
    assert list(prefetch(iter(range(50)), 3)) == list(range(50))
    assert list(prefetch(range(4), 0)) == [0, 1, 2, 3]

    def failing():  # type: ignore[no-untyped-def]
        yield 1
        yield 2
        raise ValueError("shard 7 unreadable")

    seen = []
    with pytest.raises(ValueError, match="shard 7"):
        for item in prefetch(failing(), 2):
            seen.append(item)
    assert seen == [1, 2]

    produced = []

    def endless():  # type: ignore[no-untyped-def]
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    it = prefetch(endless(), 2, name="test-prefetch")
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    it.close()
    time.sleep(0.05)
    assert not any(t.name == "test-prefetch" for t in threading.enumerate())
    assert len(produced) <= 3 + 2 + 1  # the thread ran at most depth (+ the one it was putting) ahead


# -- several SAEs from one pass ------------------------------------------------------------------------------------
def test_one_pass_gives_each_run_what_it_gets_alone(store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg = small_train()
    specs = [RunSpec(tmp_path / "topk", arch="topk", width=64, k=4), RunSpec(tmp_path / "mat", arch="matryoshka", width=64, k=4),
             RunSpec(tmp_path / "relu", arch="relu", width=32, l1_coeff=0.5)]
    together = train_saes(store, specs, layer=2, train=cfg, progress=False)
    for spec, res in zip(specs, together):
        alone = train_sae(store, out=tmp_path / f"alone_{spec.arch}", layer=2, arch=spec.arch, width=spec.width, k=spec.k,
                          l1_coeff=spec.l1_coeff, train=cfg, progress=False)
        assert same_weights(res.sae, alone.sae), spec.arch
        assert res.metrics["fve"] == alone.metrics["fve"] and res.metrics["runs_in_pass"] == 3
        assert json.loads((spec.out / "cfg.json").read_text())["runtime"] == {
            "device": "cpu", "precision": "fp32", "kernels": "sparse", "compile": False}
    with pytest.raises(WorkbenchError, match="same folder"):
        train_saes(store, [specs[0], RunSpec(tmp_path / "topk", k=2)], layer=2, train=cfg, progress=False, overwrite=True)
    with pytest.raises(WorkbenchError, match="already exists"):
        train_saes(store, specs[:1], layer=2, train=cfg, progress=False)


def test_one_pass_resumes_after_a_kill(store, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    cfg = small_train(n_tokens=256 * 50)
    specs = lambda root: [RunSpec(root / "a", width=64, k=4), RunSpec(root / "b", arch="batchtopk", width=48, k=3)]  # noqa: E731
    full = train_saes(store, specs(tmp_path / "full"), layer=2, train=cfg, progress=False, metrics=False)
    real = train_mod._checkpoint
    calls: list[tuple[str, int]] = []

    def killed_between_the_two_runs_checkpoints(r, step):  # type: ignore[no-untyped-def]
        if step == 40 and r.out.name == "b":
            raise KeyboardInterrupt  # run a has its step-40 checkpoint, run b only its step-20 one
        real(r, step)
        calls.append((r.out.name, step))

    monkeypatch.setattr(train_mod, "_checkpoint", killed_between_the_two_runs_checkpoints)
    with pytest.raises(KeyboardInterrupt):
        train_saes(store, specs(tmp_path / "resumed"), layer=2, train=cfg, progress=False, metrics=False)
    assert calls == [("a", 20), ("b", 20), ("a", 40)]
    monkeypatch.setattr(train_mod, "_checkpoint", real)
    resumed = train_saes(store, specs(tmp_path / "resumed"), layer=2, train=cfg, progress=False, metrics=False)
    for a, b in zip(full, resumed):
        assert same_weights(a.sae, b.sae)


def test_sweep_one_pass_matches_the_sequential_sweep(store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg = small_train(n_tokens=256 * 30, checkpoint_every=0)
    grid = dict(layer=2, arch=["topk", "batchtopk"], k=[2, 4], width=[32], train=cfg, progress=False)
    seq = sweep(store, out=tmp_path / "seq", **grid)
    one = sweep(store, out=tmp_path / "one", one_pass=True, **grid)
    cols = ["run", "fve", "l0", "dead_fraction", "mse"]
    assert seq[cols].equals(one[cols]) and len(one) == 4
    assert json.loads((tmp_path / "one" / "topk_w32_k2" / "metrics.json").read_text())["runs_in_pass"] == 4
    mtime = (tmp_path / "one" / "topk_w32_k2" / "sae.safetensors").stat().st_mtime_ns
    sweep(store, out=tmp_path / "one", one_pass=True, **grid)  # finished runs are reused, nothing retrained
    assert (tmp_path / "one" / "topk_w32_k2" / "sae.safetensors").stat().st_mtime_ns == mtime


# -- precision and kernels during training --------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["topk", "batchtopk", "matryoshka", "relu", "jumprelu"])
def test_every_architecture_trains_with_dense_kernels_and_bf16_close_to_fp32(arch: str, store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    extra = {"l1_coeff": 0.5} if arch in ("relu", "jumprelu") else {"k": 4}
    cfg = small_train(n_tokens=256 * 40, checkpoint_every=0)
    base = train_sae(store, out=tmp_path / "fp32", layer=2, arch=arch, width=48, train=cfg, progress=False, **extra)
    dense = train_sae(store, out=tmp_path / "dense", layer=2, arch=arch, width=48, progress=False,
                      train=small_train(n_tokens=256 * 40, checkpoint_every=0, kernels="dense"), **extra)
    bf16 = train_sae(store, out=tmp_path / "bf16", layer=2, arch=arch, width=48, progress=False,
                     train=small_train(n_tokens=256 * 40, checkpoint_every=0, kernels="dense", precision="bf16"), **extra)
    assert dense.metrics["fve"] == pytest.approx(base.metrics["fve"], abs=1e-3)
    assert bf16.metrics["fve"] == pytest.approx(base.metrics["fve"], abs=0.03), (base.metrics["fve"], bf16.metrics["fve"])
    assert bf16.metrics["l0"] == pytest.approx(base.metrics["l0"], rel=0.15, abs=0.5)
    assert all(p.dtype == torch.float32 for p in bf16.sae.parameters())
    runtime = json.loads((tmp_path / "bf16" / "cfg.json").read_text())["runtime"]
    assert runtime["precision"] == "bf16" and runtime["kernels"] == "dense"
    if arch not in ("relu", "jumprelu"):  # the sparse kernels take bf16 codes too (float32 gradients for the weights)
        sparse_bf16 = train_sae(store, out=tmp_path / "sparse_bf16", layer=2, arch=arch, width=48, progress=False,
                                train=small_train(n_tokens=256 * 40, checkpoint_every=0, precision="bf16"), **extra)
        assert sparse_bf16.metrics["fve"] == pytest.approx(base.metrics["fve"], abs=0.03)


def test_compiled_dense_training_matches_eager(store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("torch.compile on the CPU needs a C++ compiler")
    cfg = small_train(n_tokens=256 * 12, checkpoint_every=0, kernels="dense")
    eager = train_sae(store, out=tmp_path / "eager", layer=2, width=32, k=4, train=cfg, progress=False, metrics=False)
    compiled = train_sae(store, out=tmp_path / "compiled", layer=2, width=32, k=4, progress=False, metrics=False,
                         train=small_train(n_tokens=256 * 12, checkpoint_every=0, kernels="dense", compile=True))
    for k, v in eager.sae.state_dict().items():
        torch.testing.assert_close(compiled.sae.state_dict()[k], v, rtol=1e-4, atol=1e-5, msg=k)


def test_training_settings_are_checked_and_old_configs_still_match() -> None:
    with pytest.raises(WorkbenchError, match="precision must be one of"):
        TrainConfig(precision="fp8")  # type: ignore[arg-type]
    with pytest.raises(WorkbenchError, match="kernels must be one of"):
        TrainConfig(kernels="triton")  # type: ignore[arg-type]
    with pytest.raises(WorkbenchError, match="compile=True needs dense kernels"):
        TrainConfig(compile=True).runtime("cpu")
    assert TrainConfig(compile=True).runtime("cpu", "relu")["compile"] is True
    assert TrainConfig().runtime("cuda:0") == {"device": "cuda:0", "precision": "bf16", "kernels": "dense", "compile": False}
    assert TrainConfig().runtime("cpu") == {"device": "cpu", "precision": "fp32", "kernels": "sparse", "compile": False}
    old = {k: v for k, v in TrainConfig().to_dict().items() if k not in ("precision", "kernels", "compile", "prefetch")}
    assert TrainConfig().same_settings(old) and not TrainConfig(lr=1e-4).same_settings(old)
    assert not TrainConfig().same_settings({**old, "no_such_field": 1})


def test_cli_refuses_a_bad_precision_in_one_line(store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    proc = subprocess.run([sys.executable, "-m", "workbench.cli", "train", "--store", str(store.path), "--out", str(tmp_path / "s"),
                           "--precision", "fp8", "--no-progress"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "workbench: error: precision must be one of auto, fp32, bf16, not 'fp8'"]
    assert not (tmp_path / "s").exists() and not (tmp_path / "s.partial").exists()


# -- CUDA (skipped without a GPU) -------------------------------------------------------------------------------------
@CUDA
def test_cuda_batches_equal_host_batches(store) -> None:  # type: ignore[no-untyped-def]
    host = list(store.iter_batches(2, 96, seed=5, split="train"))
    gpu = list(store.iter_batches(2, 96, seed=5, split="train", device="cuda", prefetch=2))
    assert all(g.is_cuda and torch.equal(g.cpu(), h) for g, h in zip(gpu, host)) and len(gpu) == len(host)


@CUDA
@pytest.mark.parametrize("arch", ["topk", "batchtopk", "matryoshka", "relu", "jumprelu"])
def test_cuda_training_matches_cpu_within_tolerance(arch: str, store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    extra = {"l1_coeff": 0.5} if arch in ("relu", "jumprelu") else {"k": 4}
    cfg = small_train(n_tokens=256 * 40)
    cpu = train_sae(store, out=tmp_path / "cpu", layer=2, arch=arch, width=48, train=cfg, progress=False, **extra)
    gpu = train_sae(store, out=tmp_path / "gpu", layer=2, arch=arch, width=48, train=cfg, progress=False, device="cuda", **extra)
    assert gpu.metrics["fve"] == pytest.approx(cpu.metrics["fve"], abs=0.03)
    assert json.loads((tmp_path / "gpu" / "cfg.json").read_text())["runtime"]["precision"] == "bf16"
