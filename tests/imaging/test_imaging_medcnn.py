"""MedResNet shapes and the CNN training script, on small subsamples of the bundled PneumoniaMNIST."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from domains.imaging.medcnn import MedResNet
from domains.imaging.readers import bundled
from domains.imaging.train import CNNTrainConfig, _sha256, load_medcnn, main, train_cnn
from workbench.errors import InputError, ModelError

TINY = dict(epochs=2, batch_size=32, widths=(8, 16, 32))


@pytest.fixture(scope="module")
def small_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """96 train / 40 val / 40 test images of the bundled PneumoniaMNIST (half of each class), in the same layout.

    The bundled file is sorted by label (pneumonia first), so the subsample takes each split's first and last rows.
    """
    raw = np.load(bundled("pneumoniamnist"))
    sizes = {"train": 96, "val": 40, "test": 40}
    arrays = {}
    for s, n in sizes.items():
        total = len(raw[f"{s}_labels"])
        keep = np.r_[0:n // 2, total - n // 2:total]
        for kind in ("images", "labels"):
            arrays[f"{s}_{kind}"] = raw[f"{s}_{kind}"][keep]
    for s in sizes:
        assert len(np.unique(arrays[f"{s}_labels"])) == 2
    path = tmp_path_factory.mktemp("data") / "pneumo_small.npz"
    np.savez_compressed(path, **arrays)
    return path


def test_medresnet_shapes_per_layer() -> None:
    torch.manual_seed(0)
    model = MedResNet(in_channels=3, n_classes=4, widths=(8, 16, 24)).eval()
    sizes: dict[str, tuple[int, ...]] = {}
    for name in ("stem", "layer1", "layer2", "layer3", "pool", "fc"):
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: sizes.__setitem__(name, tuple(o.shape)))
    logits = model(torch.randn(5, 3, 28, 28))
    assert logits.shape == (5, 4)
    assert sizes == {"stem": (5, 8, 28, 28), "layer1": (5, 8, 28, 28), "layer2": (5, 16, 14, 14),
                     "layer3": (5, 24, 7, 7), "pool": (5, 24, 1, 1), "fc": (5, 4)}
    assert isinstance(model.layer1.shortcut, torch.nn.Identity)  # same shape: identity shortcut
    assert isinstance(model.layer2.shortcut[0], torch.nn.Conv2d) and model.layer2.shortcut[0].stride == (2, 2)
    default = MedResNet()
    assert default.stem[0].in_channels == 1 and default.fc.out_features == 2
    assert default(torch.randn(2, 1, 28, 28)).shape == (2, 2)
    with pytest.raises(ValueError, match="three positive widths"):
        MedResNet(widths=(8, 16))


def test_load_medcnn_round_trip(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(1)
    model = MedResNet(in_channels=1, n_classes=3, widths=(4, 8, 12))
    model.train()
    model(torch.randn(16, 1, 28, 28))  # move the batch-norm running statistics off their defaults
    model.eval()
    save_file(model.state_dict(), str(tmp_path / "m.safetensors"))
    loaded = load_medcnn(tmp_path / "m.safetensors")
    assert not loaded.training and loaded.widths == (4, 8, 12) and loaded.n_classes == 3
    x = torch.randn(6, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ModelError, match="not MedResNet weights"):
        load_medcnn(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(ModelError, match="cannot read safetensors"):
        load_medcnn(tmp_path / "junk.safetensors")
    with pytest.raises(InputError, match="no such weights file"):
        load_medcnn(tmp_path / "absent.safetensors")


def test_train_cnn_writes_reloadable_deterministic_model(small_npz: Path, tmp_path: Path) -> None:
    from safetensors import safe_open

    from domains.imaging.readers import read_medmnist
    from domains.imaging.train import _auc
    from domains.imaging.transforms import Preprocess

    cfg = CNNTrainConfig(**TINY, seed=3)
    a = train_cnn(small_npz, out=tmp_path / "a", config=cfg, progress=False)
    weights, report = tmp_path / "a" / "medcnn_pneumo_small.safetensors", tmp_path / "a" / "medcnn_pneumo_small.json"
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [report.name, weights.name]  # no temp files left
    saved = json.loads(report.read_text())
    assert saved["dataset"] == "pneumo_small" and (saved["n_train"], saved["n_val"], saved["n_test"]) == (96, 40, 40)
    assert saved["dataset_sha256"] == _sha256(small_npz)
    assert sum(saved["class_counts"]["train"]) == 96
    assert saved["config"]["widths"] == [8, 16, 32] and saved["config"]["seed"] == 3
    assert len(saved["history"]) == 2 and 1 <= saved["best_epoch"] <= 2
    assert saved["best_epoch"] == 1 + int(np.argmax([h["val_auc"] for h in saved["history"]]))
    assert saved["val_auc"] == max(h["val_auc"] for h in saved["history"])
    for key in ("val_accuracy", "val_auc", "test_accuracy", "test_auc"):
        assert 0.0 <= saved[key] <= 1.0
    assert a["weights"] == str(weights) and a["test_auc"] == saved["test_auc"]
    with safe_open(str(weights), framework="pt") as fh:
        assert fh.metadata()["dataset"] == "pneumo_small"

    # the shipped weights reproduce the reported test metrics
    model = load_medcnn(weights)
    test = read_medmnist(small_npz, splits=("test",))
    with torch.no_grad():
        prob = torch.softmax(model(Preprocess()([r.image for r in test])), 1).numpy()
    y = np.array([r.meta["label"] for r in test])
    assert float((prob.argmax(1) == y).mean()) == pytest.approx(saved["test_accuracy"])
    assert _auc(y, prob) == pytest.approx(saved["test_auc"])

    # same seed: the same model; another seed: another model
    same = CNNTrainConfig(**TINY, seed=3)
    b = train_cnn(small_npz, out=tmp_path / "b" / "same.safetensors", config=same, progress=False)
    assert Path(b["weights"]).name == "same.safetensors" and (tmp_path / "b" / "same.json").is_file()
    assert [h["train_loss"] for h in b["history"]] == [h["train_loss"] for h in a["history"]]
    other = load_medcnn(b["weights"])
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in model.state_dict().items())
    c = train_cnn(small_npz, out=tmp_path / "c", config=CNNTrainConfig(**TINY, seed=4), progress=False)
    assert [h["train_loss"] for h in c["history"]] != [h["train_loss"] for h in a["history"]]


def test_train_cnn_bad_inputs(small_npz: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such dataset file"):
        train_cnn(tmp_path / "absent.npz", out=tmp_path, progress=False)
    with pytest.raises(InputError, match="unknown bundled imaging dataset 'octmnist'"):
        train_cnn("octmnist", out=tmp_path, progress=False)
    bad = tmp_path / "bad.npz"
    np.savez(bad, train_images=np.zeros((4, 28, 28), np.uint8), train_labels=np.zeros(4, np.uint8))
    with pytest.raises(InputError, match=r"bad\.npz: missing key 'val_images'"):
        train_cnn(bad, out=tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()
    with pytest.raises(InputError, match="CNNTrainConfig: epochs must be at least 1"):
        CNNTrainConfig(epochs=0)
    with pytest.raises(InputError, match="class_weight"):
        CNNTrainConfig(class_weight="inverse")


def test_cli(small_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--dataset", str(tmp_path / "nope.npz"), "--out", str(tmp_path)]) == 2
    assert "error: " in capsys.readouterr().err
    argv = ["--dataset", str(small_npz), "--out", str(tmp_path / "cli"), "--epochs", "1", "--seed", "2", "--quiet"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["dataset"] == "pneumo_small" and printed["best_epoch"] == 1
    assert json.loads((tmp_path / "cli" / "medcnn_pneumo_small.json").read_text())["config"]["seed"] == 2
