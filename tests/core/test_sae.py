"""Sparse autoencoders: every architecture trains from a store, reloads bit-exactly, resumes, and runs under DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import workbench
import workbench.sae._train as train_mod
from workbench.errors import StoreError, WorkbenchError
from workbench.sae import ARCHITECTURES, SAEConfig, SparseAutoencoder, load_sae, train_sae

from core_helpers import small_train  # noqa: E402  (tests/core, on the path under pytest)

REPO = Path(__file__).resolve().parents[2]
SMALL = dict(width=64, k=4)


@pytest.fixture(scope="module")
def store(tiny_esm2: Path, oas_fasta: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return workbench.extract(str(tiny_esm2), oas_fasta, layers=[1, 2], out=tmp_path_factory.mktemp("sae") / "store",
                             shard_tokens=500, progress=False)


# -- the sparse kernels give exactly the dense gradients ---------------------------------------------------------
@pytest.mark.parametrize("arch", ["topk", "batchtopk", "matryoshka"])
@pytest.mark.parametrize("use_aux", [False, True])
def test_sparse_path_matches_dense_autograd(arch: str, use_aux: bool) -> None:
    torch.manual_seed(0)
    cfg = SAEConfig(d_in=16, width=64, arch=arch, k=4, normalize=False)  # type: ignore[arg-type]
    sae = SparseAutoencoder(cfg).double()
    sae.b_dec.data.normal_()
    sae.b_enc.data.normal_(0, 0.1)
    x = torch.randn(10, 16, dtype=torch.double)
    dead = torch.rand(64) < 0.5
    out = sae(x, dead=dead if use_aux else None, aux_k=8, aux_coeff=0.1)
    out.loss.backward()
    ours = {n: p.grad.clone() for n, p in sae.named_parameters()}
    sae.zero_grad()
    pre = (x - sae.b_dec) @ sae.W_enc.t() + sae.b_enc
    codes = pre * (out.codes.dense(64) > 0)
    if arch == "matryoshka":
        loss = torch.stack([((codes * (torch.arange(64) < end)) @ sae.W_dec + sae.b_dec - x).pow(2).sum(1).mean()
                            for end in cfg.matryoshka_groups]).mean()
    else:
        loss = (codes @ sae.W_dec + sae.b_dec - x).pow(2).sum(1).mean()
    if use_aux:
        err = (codes @ sae.W_dec + sae.b_dec - x).detach()
        vals, idx = pre.detach().masked_fill(~dead, float("-inf")).topk(8, dim=1)
        aux_codes = pre * torch.zeros_like(pre, dtype=torch.bool).scatter(1, idx, vals > 0)
        aux = (aux_codes @ sae.W_dec + err).pow(2).sum(1).mean() / (err - err.mean(0)).pow(2).sum(1).mean()
        assert float(out.aux.detach()) == pytest.approx(float(aux.detach()), rel=1e-12)
        loss = loss + 0.1 * aux
    loss.backward()
    for name, p in sae.named_parameters():
        torch.testing.assert_close(ours[name], p.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("arch", ["topk", "matryoshka", "relu", "jumprelu"])
def test_free_decoder_norm_gradients_and_folding_are_exact(arch: str) -> None:
    """Free row norms (SAELens's rescale_acts_by_decoder_norm): the sparse path's gradients equal dense autograd of
    codes scaled by the row norms decoded through the row directions, and folding the norms into the encoder keeps
    every code and reconstruction while giving unit rows."""
    torch.manual_seed(1)
    cfg = SAEConfig(d_in=16, width=64, arch=arch, k=4, normalize=False)  # type: ignore[arg-type]
    sae = SparseAutoencoder(cfg).double()
    sae.start_free_norm(0.1)
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(64, 1, dtype=torch.double) + 0.5)  # unequal norms
        sae.b_enc.normal_(0, 0.01)
        sae.b_dec.normal_()
    x = torch.randn(12, 16, dtype=torch.double)
    out = sae(x)
    out.loss.backward()
    ours = {n: p.grad.clone() for n, p in sae.named_parameters()}
    sae.zero_grad()
    norms = sae.W_dec.norm(dim=1)
    pre = ((x - sae.b_dec) @ sae.W_enc.t() + sae.b_enc) * norms
    directions = sae.W_dec / norms[:, None]
    if arch == "relu":
        codes = torch.relu(pre)
        loss = (codes @ directions + sae.b_dec - x).pow(2).sum(1).mean() + cfg.l1_coeff * (codes * directions.norm(dim=1)).sum(1).mean()
    elif arch == "jumprelu":
        loss = None  # its threshold gradient is a straight-through estimate: check the reconstruction only
    else:
        codes = pre * (out.codes.dense(64) > 0)
        recon = (codes @ directions + sae.b_dec - x).pow(2).sum(1).mean()
        if arch == "matryoshka":
            recon = torch.stack([((codes * (torch.arange(64) < end)) @ directions + sae.b_dec - x).pow(2).sum(1).mean()
                                 for end in cfg.matryoshka_groups]).mean()
        loss = recon
    if loss is not None:
        loss.backward()
        for name, p in sae.named_parameters():
            torch.testing.assert_close(ours[name], p.grad, rtol=1e-10, atol=1e-12, msg=name)
    sae.eval()
    codes_before, recon_before = sae.encode(x), sae.decode(sae.encode(x))
    sae.fold_decoder_norm()
    assert not sae.free_decoder_norm
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(64, dtype=torch.double))
    torch.testing.assert_close(sae.encode(x), codes_before, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sae.decode(sae.encode(x)), recon_before, rtol=1e-12, atol=1e-12)


def test_free_decoder_norm_trains_resumes_and_saves_unit_rows(store, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    cfg = small_train(n_tokens=256 * 80, checkpoint_every=40, decoder_norm="free", init_norm=0.1)
    full = train_sae(store, out=tmp_path / "full", layer=2, train=cfg, progress=False, metrics=False, **SMALL)
    torch.testing.assert_close(full.sae.W_dec.norm(dim=1), torch.ones(64), rtol=1e-5, atol=1e-5)
    reloaded = load_sae(tmp_path / "full")
    assert not reloaded.free_decoder_norm
    real = train_mod._checkpoint

    def killed(*args, **kwargs):  # type: ignore[no-untyped-def]
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "_checkpoint", killed)
    with pytest.raises(KeyboardInterrupt):
        train_sae(store, out=tmp_path / "resumed", layer=2, train=cfg, progress=False, metrics=False, **SMALL)
    monkeypatch.setattr(train_mod, "_checkpoint", real)
    resumed = train_sae(store, out=tmp_path / "resumed", layer=2, train=cfg, progress=False, metrics=False, **SMALL)
    for (k, v1), v2 in zip(full.sae.state_dict().items(), resumed.sae.state_dict().values()):
        torch.testing.assert_close(v1, v2, rtol=0, atol=0, msg=k)
    for bad in (dict(decoder_norm="loose"), dict(init_norm=0.0)):
        with pytest.raises(WorkbenchError):
            small_train(**bad)


def test_topk_codes_have_k_active_and_batchtopk_averages_k() -> None:
    torch.manual_seed(0)
    x = torch.randn(50, 16)
    topk = SparseAutoencoder(SAEConfig(d_in=16, width=64, arch="topk", k=5, normalize=False))
    assert ((topk.encode(x) > 0).sum(1) <= 5).all()
    batch = SparseAutoencoder(SAEConfig(d_in=16, width=64, arch="batchtopk", k=5, normalize=False))
    out = batch(x)
    assert len(out.codes.values) <= 5 * 50 and (out.codes.values > 0).all()
    batch.b_enc.data += 1.0  # make sure at least k * n pre-activations are positive
    batch.calibrate_threshold(x, batch_size=16)  # chunked: the global top-(n k) still comes out exactly
    assert (batch.eval().encode(x) > 0).sum(1).float().mean() == pytest.approx(5.0, abs=0.05)


def test_jumprelu_threshold_and_relu_l1_get_gradients() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 16)
    jr = SparseAutoencoder(SAEConfig(d_in=16, width=32, arch="jumprelu", normalize=False, jumprelu_bandwidth=1.0))
    jr(x).loss.backward()
    assert jr.log_threshold.grad is not None and jr.log_threshold.grad.abs().sum() > 0
    relu = SparseAutoencoder(SAEConfig(d_in=16, width=32, arch="relu", normalize=False, l1_coeff=1.0))
    out = relu(x)
    assert float(out.sparsity) == pytest.approx(float(relu.encode(x).sum(1).mean()), rel=1e-5)


@pytest.mark.parametrize("bad", [dict(arch="topk", k=65), dict(arch="topk", k=0), dict(arch="gated"), dict(width=0),
                                 dict(arch="matryoshka", matryoshka_groups=[32, 16, 64])])
def test_configs_that_do_not_fit(bad: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(WorkbenchError):
        SAEConfig(**{"d_in": 16, "width": 64, **bad})


# -- training from a store, parametrised over every architecture --------------------------------------------------
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_trains_saves_and_reloads_bit_exactly(arch: str, store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    opts = {"l1_coeff": 0.05} if arch == "relu" else {"l1_coeff": 0.01} if arch == "jumprelu" else {}
    result = train_sae(store, out=tmp_path / arch, layer=2, arch=arch, train=small_train(), progress=False, **SMALL, **opts)
    m = json.loads((tmp_path / arch / "metrics.json").read_text())
    for key in ("mse", "fve", "l0", "dead_fraction", "density_histogram", "loss_recovered", "train_tokens_per_s"):
        assert key in m
    lr = m["loss_recovered"]
    for key in ("ce_clean", "ce_sae", "ce_zero_ablation", "ce_mean_ablation", "loss_recovered"):
        assert np.isfinite(lr[key]), lr
    assert m["fve"] > 0.5, m["fve"]  # random-weight tiny model: its activations are easy, but not free
    assert m["l0"] > 0
    if arch in ("batchtopk", "matryoshka"):  # the learned inference threshold keeps about k latents per token
        assert 0.5 * SMALL["k"] <= m["l0"] <= 2 * SMALL["k"], m["l0"]
    cfg = json.loads((tmp_path / arch / "cfg.json").read_text())
    assert cfg["sae"]["arch"] == arch and cfg["store"]["layer"] == 2 and cfg["train"]["seed"] == 0
    assert cfg["store"]["manifest_sha256"] == store.manifest_sha256() and "offset_ratio" in cfg["normalization"]
    loaded = load_sae(tmp_path / arch)
    for (k1, v1), (k2, v2) in zip(result.sae.state_dict().items(), loaded.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2), k1
    x = torch.from_numpy(np.asarray(store.shard_activations(0, 2)[:100], dtype=np.float32))
    assert torch.equal(result.sae.encode(x), loaded.encode(x))
    assert not (tmp_path / f"{arch}.partial").exists()


def test_training_is_deterministic_and_normalisation_is_recorded(store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    a = train_sae(store, out=tmp_path / "a", layer=1, train=small_train(n_tokens=256 * 30), progress=False, metrics=False, **SMALL)
    b = train_sae(store, out=tmp_path / "b", layer=1, train=small_train(n_tokens=256 * 30), progress=False, metrics=False, **SMALL)
    for (k, v1), v2 in zip(a.sae.state_dict().items(), b.sae.state_dict().values()):
        assert torch.equal(v1, v2), k
    stats = train_mod.input_statistics(store, 1, holdout_fraction=0.1)
    torch.testing.assert_close(a.sae.input_mean, stats.mean)
    assert float(a.sae.input_scale) == pytest.approx(stats.scale)


def test_resume_after_kill_matches_uninterrupted(store, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    cfg = small_train(n_tokens=256 * 120, checkpoint_every=40)
    full = train_sae(store, out=tmp_path / "full", layer=2, train=cfg, progress=False, metrics=False, **SMALL)
    real = train_mod._checkpoint
    calls: list[int] = []

    def killed_after_second_checkpoint(*args, **kwargs):  # type: ignore[no-untyped-def]
        real(*args, **kwargs)
        calls.append(args[1])
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "_checkpoint", killed_after_second_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        train_sae(store, out=tmp_path / "resumed", layer=2, train=cfg, progress=False, metrics=False, **SMALL)
    assert calls == [40, 80] and not (tmp_path / "resumed").exists()
    monkeypatch.setattr(train_mod, "_checkpoint", real)
    resumed = train_sae(store, out=tmp_path / "resumed", layer=2, train=cfg, progress=False, metrics=False, **SMALL)
    for (k, v1), v2 in zip(full.sae.state_dict().items(), resumed.sae.state_dict().values()):
        torch.testing.assert_close(v1, v2, rtol=0, atol=0, msg=k)


def test_resume_refuses_another_store_or_corrupt_checkpoint(store, tiny_esm2: Path, oas_fasta: Path, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    cfg = small_train(n_tokens=256 * 60, checkpoint_every=20)
    real = train_mod._checkpoint

    def killed_after_first_checkpoint(*args, **kwargs):  # type: ignore[no-untyped-def]
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "_checkpoint", killed_after_first_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        train_sae(store, out=tmp_path / "x", layer=2, train=cfg, progress=False, **SMALL)
    monkeypatch.undo()
    other = workbench.extract(str(tiny_esm2), oas_fasta, layers=[2], out=tmp_path / "other", shard_tokens=700, progress=False)
    with pytest.raises(WorkbenchError, match="trained on another store"):
        train_sae(other, out=tmp_path / "x", layer=2, train=cfg, progress=False, **SMALL)
    ckpt = tmp_path / "x.partial" / "checkpoint.safetensors"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    before = sorted(p.name for p in (tmp_path / "x.partial").iterdir())
    with pytest.raises(WorkbenchError, match="corrupt or truncated checkpoint"):
        train_sae(store, out=tmp_path / "x", layer=2, train=cfg, progress=False, **SMALL)
    assert sorted(p.name for p in (tmp_path / "x.partial").iterdir()) == before and not (tmp_path / "x").exists()


def test_nan_store_existing_output_and_truncated_weights(store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import shutil

    bad = tmp_path / "nan_store"
    shutil.copytree(store.path, bad)
    arr = np.load(bad / "shards" / "shard-00000" / "layer_2.npy", mmap_mode="r+")
    arr[3, 0] = np.nan
    arr.flush()
    del arr
    with pytest.raises(StoreError, match="NaN"):
        train_sae(bad, out=tmp_path / "s", layer=2, train=small_train(holdout_fraction=0.0), progress=False, **SMALL)
    assert not (tmp_path / "s").exists() and not (tmp_path / "s.partial").exists()
    done = train_sae(store, out=tmp_path / "ok", layer=2, train=small_train(n_tokens=256 * 5), progress=False, metrics=False, **SMALL)
    with pytest.raises(WorkbenchError, match="already exists"):
        train_sae(store, out=tmp_path / "ok", layer=2, train=small_train(n_tokens=256 * 5), progress=False, **SMALL)
    weights = done.path / "sae.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(WorkbenchError, match="corrupt or truncated"):
        load_sae(done.path)


def test_offset_ratio_warning_and_normalisation(tmp_path: Path, oas_fasta: Path) -> None:
    """A layer far from the origin (here: a large final-layer-norm bias) warns when trained uncentred."""
    from domains.sequence.testing import write_esm2_checkpoint

    ckpt = write_esm2_checkpoint(tmp_path / "esm2_t2_offset.pt")
    data = torch.load(ckpt, weights_only=False)
    data["model"]["encoder.sentence_encoder.emb_layer_norm_after.bias"] += 5.0
    torch.save(data, ckpt)
    shifted = workbench.extract(str(ckpt), oas_fasta, layers=[2], out=tmp_path / "s", progress=False)
    stats = train_mod.input_statistics(shifted, 2, holdout_fraction=0.1)
    assert stats.offset_ratio > 5
    cfg = small_train(n_tokens=256 * 5, loss_recovered_sequences=0)
    with pytest.warns(UserWarning, match="far from the origin"):
        train_sae(shifted, out=tmp_path / "raw", normalize=False, train=cfg, progress=False, metrics=False, **SMALL)
    centred = train_sae(shifted, out=tmp_path / "centred", train=cfg, progress=False, metrics=False, **SMALL)
    torch.testing.assert_close(centred.sae.input_mean, stats.mean)
    assert json.loads((tmp_path / "centred" / "cfg.json").read_text())["normalization"]["offset_ratio"] == pytest.approx(stats.offset_ratio)


def test_random_weight_control_store_measures_loss_on_the_random_model(tiny_esm2: Path, oas_fasta: Path, tmp_path: Path) -> None:
    ctrl = workbench.extract(str(tiny_esm2), oas_fasta, layers=[2], out=tmp_path / "ctrl", random_weights=1, shard_tokens=500, progress=False)
    assert ctrl.manifest["control"] == {"random_weights_seed": 1} and ctrl.model.endswith(":random-init-1")
    result = train_sae(ctrl, out=tmp_path / "ctrl_sae", train=small_train(n_tokens=256 * 20), progress=False, **SMALL)
    assert result.metrics["control"] == {"random_weights_seed": 1}
    assert "ce_clean" in result.metrics["loss_recovered"], result.metrics["loss_recovered"]


def test_two_rank_ddp_matches_one_rank(store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Global batch 512 as 1 x 512 and as 2 ranks x 256: same quality after 300 steps (stated tolerance 0.03 FVE)."""
    args = ["--store", str(store.path), "--layer", "2", "--width", "64", "--k", "4", "--n-tokens", str(512 * 300),
            "--batch-size", "512", "--lr", "3e-3", "--warmup-steps", "10", "--aux-k", "16", "--holdout-fraction", "0.1",
            "--eval-tokens", "2000", "--loss-recovered-sequences", "0", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "workbench.cli", "train", *args, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                          str(29600 + os.getpid() % 1000), "-m", "workbench.cli", "train", *args, "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert two.returncode == 0, two.stderr[-2000:]
    m1 = json.loads((tmp_path / "one" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert json.loads((tmp_path / "two" / "cfg.json").read_text())["world_size"] == 2
    assert m1["fve"] > 0.5 and abs(m1["fve"] - m2["fve"]) < 0.03, (m1["fve"], m2["fve"])
    assert abs(m1["l0"] - m2["l0"]) < 0.5 and abs(m1["dead_fraction"] - m2["dead_fraction"]) < 0.1


def test_sweep_reuses_a_finished_run_only_with_the_same_training_settings(store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from workbench.sae import sweep

    opts = dict(out=tmp_path / "sweep", layer=2, arch=["topk"], k=[4], width=[64], progress=False)
    sweep(store, train=small_train(n_tokens=256 * 20, loss_recovered_sequences=0), **opts)
    weights = tmp_path / "sweep" / "topk_w64_k4" / "sae.safetensors"
    first = weights.stat().st_mtime_ns
    sweep(store, train=small_train(n_tokens=256 * 20, loss_recovered_sequences=0), **opts)
    assert weights.stat().st_mtime_ns == first  # same settings: reused
    table = sweep(store, train=small_train(n_tokens=256 * 30, loss_recovered_sequences=0), **opts)
    assert weights.stat().st_mtime_ns != first  # another token budget: trained again
    cfg = json.loads((tmp_path / "sweep" / "topk_w64_k4" / "cfg.json").read_text())
    assert cfg["train"]["n_tokens"] == 256 * 30 and len(table) == 1
