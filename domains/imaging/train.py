"""Train :class:`~domains.imaging.medcnn.MedResNet` on a MedMNIST ``.npz`` dataset and save the weights and a report.

Command line (bundled names or a path to a MedMNIST-layout ``.npz``)::

    python -m domains.imaging.train --dataset pneumoniamnist --out models/ [--epochs N] [--seed S]

writes ``models/medcnn_pneumoniamnist.safetensors`` (the state dict; metadata: dataset, preprocessing) and
``models/medcnn_pneumoniamnist.json`` (data counts and checksum, configuration, best epoch, validation and test
accuracy / AUC, per-epoch history). The epoch kept is the one with the best validation AUC; the test split is only
evaluated once, with that epoch's weights. AUC is scikit-learn's ``roc_auc_score`` on the softmax probability of
label 1, as in MedMNIST's own evaluator.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench.errors import InputError, ModelError, WorkbenchError

if TYPE_CHECKING:
    import torch

    from domains.imaging.medcnn import MedResNet

__all__ = ["CNNTrainConfig", "DEFAULT_CONFIGS", "train_cnn", "load_medcnn", "main"]

PathLike = str | os.PathLike[str]


@dataclass
class CNNTrainConfig:
    """Training settings for :func:`train_cnn`."""

    epochs: int = 30
    """Passes over the training split (fewer if ``patience`` stops training early)."""
    batch_size: int = 128
    """Images per optimisation step."""
    lr: float = 2e-3
    """Peak learning rate of AdamW; a cosine schedule takes it to zero over all steps of ``epochs``."""
    weight_decay: float = 5e-4
    """AdamW's decoupled weight decay."""
    seed: int = 0
    """Seeds the weight initialisation, the shuffling and the augmentation: the same seed gives the same model."""
    augment: bool = True
    """Randomly translate training images by up to ``max_shift`` pixels (padding by edge replication, then
    cropping back to size) and, if ``rotate`` > 0, rotate them by a random angle."""
    max_shift: int = 2
    """Largest translation in pixels, per axis, of the augmentation."""
    rotate: float = 0.0
    """Largest rotation in degrees of the augmentation (0: no rotation)."""
    hflip: bool = False
    """Also flip training images left-right at random (off by default: anatomy has a side in chest X-rays)."""
    widths: tuple[int, ...] = (32, 64, 128)
    """Channels of the stem / layer1, layer2 and layer3 of :class:`MedResNet`."""
    patience: int | None = None
    """Stop when the validation AUC has not improved for this many epochs (None: train all ``epochs``)."""
    class_weight: str | None = None
    """``"balanced"`` weights the loss by inverse class frequency of the training split; None leaves it unweighted."""
    label_smoothing: float = 0.0
    """Label smoothing of the cross-entropy loss."""

    def __post_init__(self) -> None:
        self.widths = tuple(int(w) for w in self.widths)
        checks = [
            (self.epochs >= 1, "epochs must be at least 1"),
            (self.batch_size >= 2, "batch_size must be at least 2"),
            (self.lr > 0, "lr must be positive"),
            (self.weight_decay >= 0, "weight_decay must be non-negative"),
            (self.max_shift >= 0, "max_shift must be non-negative"),
            (self.rotate >= 0, "rotate must be non-negative"),
            (len(self.widths) == 3 and min(self.widths) >= 1, "widths must be three positive integers"),
            (self.patience is None or self.patience >= 1, "patience must be None or at least 1"),
            (self.class_weight in (None, "balanced"), "class_weight must be None or 'balanced'"),
            (0 <= self.label_smoothing < 1, "label_smoothing must lie in [0, 1)"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(f"CNNTrainConfig: {message}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the settings."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


#: Settings of the shipped models, chosen on the validation splits only. BreastMNIST (546 training images) takes
#: smaller batches and more epochs; rotation (10 degrees), flips, class weighting and a lower lr did not raise its
#: validation AUC over two seeds. PneumoniaMNIST's validation AUC is saturated (about 0.999), so it keeps the defaults.
DEFAULT_CONFIGS: dict[str, CNNTrainConfig] = {
    "pneumoniamnist": CNNTrainConfig(epochs=30, batch_size=128),
    "breastmnist": CNNTrainConfig(epochs=40, batch_size=64),
}


# --------------------------------------------------------------------------------------------------- data


def _dataset_path(dataset: PathLike) -> Path:
    """A bundled dataset's name, or a path to a ``.npz`` file, as a path."""
    from domains.imaging.readers import bundled

    text = os.fspath(dataset)
    p = Path(text)
    if p.suffix.lower() == ".npz" or os.sep in text or p.exists():
        if not p.is_file():
            raise InputError(f"{p}: no such dataset file")
        return p
    return bundled(text)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _load_splits(path: Path, name: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{split: (preprocessed images (N, 1, 28, 28), labels (N,))}`` for train / val / test."""
    import torch

    from domains.imaging.readers import read_medmnist
    from domains.imaging.transforms import Preprocess

    prep = Preprocess()
    out = {}
    for split in ("train", "val", "test"):
        records = read_medmnist(path, splits=(split,), name=name)
        if len(records) < 2:
            raise InputError(f"{path}: split {split!r} has {len(records)} image(s); "
                             "training needs at least 2 per split")
        x = prep([r.image for r in records])
        y = torch.tensor([int(r.meta["label"]) for r in records], dtype=torch.long)
        out[split] = (x, y)
    return out


# --------------------------------------------------------------------------------------------------- training


def _augment(x: torch.Tensor, config: CNNTrainConfig, gen: torch.Generator) -> torch.Tensor:
    """Random translation by padding + cropping, optional flip and small rotation, drawn from ``gen``."""
    import torch
    import torch.nn.functional as F

    b, _, h, w = x.shape
    s = config.max_shift
    if s > 0:
        padded = F.pad(x, (s, s, s, s), mode="replicate")
        dy = torch.randint(0, 2 * s + 1, (b,), generator=gen)
        dx = torch.randint(0, 2 * s + 1, (b,), generator=gen)
        rows = (dy[:, None] + torch.arange(h))[:, :, None]  # (B, H, 1)
        cols = (dx[:, None] + torch.arange(w))[:, None, :]  # (B, 1, W)
        x = padded.permute(0, 2, 3, 1)[torch.arange(b)[:, None, None], rows, cols].permute(0, 3, 1, 2)
    if config.hflip:
        flip = torch.rand(b, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if config.rotate > 0:
        angle = (torch.rand(b, generator=gen) * 2 - 1) * math.radians(config.rotate)
        cos, sin = torch.cos(angle), torch.sin(angle)
        zero = torch.zeros(b)
        theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return x.contiguous()


def _auc(y: np.ndarray, prob: np.ndarray) -> float:
    """ROC AUC of label 1's probability (binary) or one-vs-rest (more classes); nan when a class is absent."""
    from sklearn.metrics import roc_auc_score

    if len(np.unique(y)) < prob.shape[1]:
        return float("nan")
    if prob.shape[1] == 2:
        return float(roc_auc_score(y, prob[:, 1]))
    return float(roc_auc_score(y, prob, multi_class="ovr"))


def _evaluate(model: MedResNet, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> dict[str, float]:
    """Loss, accuracy (argmax) and AUC of ``model`` (put in eval mode) on preprocessed images."""
    import torch
    import torch.nn.functional as F

    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    prob = torch.softmax(logits, dim=1).numpy()
    yn = y.numpy()
    return {
        "loss": float(F.cross_entropy(logits, y)),
        "accuracy": float((prob.argmax(1) == yn).mean()),
        "auc": _auc(yn, prob),
    }


def _write_outputs(weights: Path, report: Path, state: Mapping[str, torch.Tensor], st_meta: dict[str, str],
                   summary: dict[str, Any]) -> None:
    """Write the weights and the JSON report under temporary names, then rename both."""
    from safetensors.torch import save_file

    from workbench._io import set_output_mode

    weights.parent.mkdir(parents=True, exist_ok=True)
    tmp_w = weights.with_name(f".{weights.name}.tmp{os.getpid()}")
    tmp_r = report.with_name(f".{report.name}.tmp{os.getpid()}")
    try:
        save_file({k: v.detach().contiguous() for k, v in state.items()}, str(tmp_w), metadata=st_meta)
        set_output_mode(tmp_w)  # safetensors creates the file owner-only
        tmp_r.write_text(json.dumps(summary, indent=2) + "\n")
        os.replace(tmp_w, weights)
        os.replace(tmp_r, report)
    finally:
        for tmp in (tmp_w, tmp_r):
            tmp.unlink(missing_ok=True)


def train_cnn(
    dataset: str | Path,
    *,
    out: str | Path,
    config: CNNTrainConfig | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train a MedResNet on a MedMNIST-layout dataset; save ``medcnn_<name>.safetensors`` and ``.json``.

    ``dataset`` is a bundled name (``"pneumoniamnist"``, ``"breastmnist"``) or a path to an ``.npz`` file;
    ``<name>`` is its stem. ``out`` is a folder, or the ``.safetensors`` path itself (the report goes beside it).
    ``config`` defaults to :data:`DEFAULT_CONFIGS` for bundled names and ``CNNTrainConfig()`` otherwise. Images
    go through ``Preprocess()``; training uses AdamW with a per-step cosine schedule; the epoch with the best
    validation AUC (validation accuracy where AUC is undefined) is kept and evaluated once on the test split.
    Returns the report (as written to the JSON file) plus ``weights`` and ``report`` paths.
    """
    import torch
    import torch.nn.functional as F

    from domains.imaging.medcnn import MedResNet
    from domains.imaging.transforms import Preprocess

    path = _dataset_path(dataset)
    name = path.stem
    if config is None:
        config = dataclasses.replace(DEFAULT_CONFIGS[name]) if name in DEFAULT_CONFIGS else CNNTrainConfig()
    out_path = Path(out)
    if out_path.suffix == ".safetensors":
        weights_path = out_path
    else:
        if out_path.exists() and not out_path.is_dir():
            raise InputError(f"{out_path}: exists and is not a folder")
        weights_path = out_path / f"medcnn_{name}.safetensors"
    report_path = weights_path.with_suffix(".json")

    data = _load_splits(path, name)
    x_train, y_train = data["train"]
    n_classes = max(2, int(max(int(y.max()) for _, y in data.values())) + 1)
    counts = {split: np.bincount(y.numpy(), minlength=n_classes).tolist() for split, (_, y) in data.items()}
    if min(counts["train"]) == 0:
        absent = [c for c, k in enumerate(counts["train"]) if k == 0]
        raise InputError(f"{path}: the training split lacks class(es) {absent}")

    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    model = MedResNet(in_channels=x_train.shape[1], n_classes=n_classes, widths=config.widths)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    n = len(x_train)
    steps_per_epoch = n // config.batch_size + (1 if n % config.batch_size >= 2 else 0)
    steps_per_epoch = max(steps_per_epoch, 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, config.epochs * steps_per_epoch)
                                                      / (config.epochs * steps_per_epoch))))
    weight = None
    if config.class_weight == "balanced":
        c = torch.tensor(counts["train"], dtype=torch.float32)
        weight = c.sum() / (n_classes * c)

    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"score": -math.inf, "epoch": 0, "state": None, "val": None}
    t0 = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        te = time.perf_counter()
        model.train()
        order = torch.randperm(n, generator=gen)
        total, correct, seen = 0.0, 0, 0
        for step in range(steps_per_epoch):
            idx = order[step * config.batch_size:(step + 1) * config.batch_size]
            xb, yb = x_train[idx], y_train[idx]
            if config.augment:
                xb = _augment(xb, config, gen)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb, weight=weight, label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
            seen += len(idx)
        val = _evaluate(model, *data["val"])
        row = {"epoch": epoch, "train_loss": total / seen, "train_accuracy": correct / seen,
               "val_loss": val["loss"], "val_accuracy": val["accuracy"], "val_auc": val["auc"],
               "lr": optimizer.param_groups[0]["lr"], "seconds": round(time.perf_counter() - te, 3)}
        history.append(row)
        score = val["auc"] if not math.isnan(val["auc"]) else val["accuracy"]
        improved = score > best["score"]
        if improved:
            best = {"score": score, "epoch": epoch, "val": val,
                    "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
        if progress:
            print(f"[{name}] epoch {epoch:3d}/{config.epochs}  loss {row['train_loss']:.4f}  train acc "
                  f"{row['train_accuracy']:.3f}  val acc {val['accuracy']:.3f}  val auc {val['auc']:.4f}"
                  f"{'  *' if improved else ''}  ({row['seconds']:.1f} s)", file=sys.stderr, flush=True)
        if config.patience is not None and epoch - best["epoch"] >= config.patience:
            if progress:
                print(f"[{name}] no validation AUC gain for {config.patience} epochs: stopping", file=sys.stderr)
            break
    seconds = time.perf_counter() - t0

    model.load_state_dict(best["state"])
    test = _evaluate(model, *data["test"])
    prep = Preprocess()
    summary: dict[str, Any] = {
        "dataset": name,
        "dataset_file": path.name,
        "dataset_sha256": _sha256(path),
        "n_train": len(data["train"][1]),
        "n_val": len(data["val"][1]),
        "n_test": len(data["test"][1]),
        "class_counts": counts,
        "n_classes": n_classes,
        "in_channels": int(x_train.shape[1]),
        "preprocess": prep.to_dict(),
        "config": config.to_dict(),
        "best_epoch": best["epoch"],
        "epochs_run": len(history),
        "val_accuracy": best["val"]["accuracy"],
        "val_auc": best["val"]["auc"],
        "test_accuracy": test["accuracy"],
        "test_auc": test["auc"],
        "training_seconds": round(seconds, 2),
        "torch_version": torch.__version__,
        "history": history,
    }
    st_meta = {"dataset": name, "format": "pt", "model": "MedResNet", "n_classes": str(n_classes),
               "in_channels": str(summary["in_channels"]), "widths": json.dumps(list(config.widths)),
               "preprocess": json.dumps(prep.to_dict()), "dataset_sha256": summary["dataset_sha256"]}
    _write_outputs(weights_path, report_path, model.state_dict(), st_meta, summary)
    if progress:
        print(f"[{name}] best epoch {best['epoch']}: val acc {summary['val_accuracy']:.3f} auc {summary['val_auc']:.4f}"
              f"; test acc {test['accuracy']:.3f} auc {test['auc']:.4f}; {seconds:.0f} s -> {weights_path}",
              file=sys.stderr, flush=True)
    return {**summary, "weights": str(weights_path), "report": str(report_path)}


# --------------------------------------------------------------------------------------------------- loading


def load_medcnn(weights_path: PathLike) -> MedResNet:
    """A MedResNet with the weights of a ``.safetensors`` file written by :func:`train_cnn`, in eval mode.

    ``in_channels``, ``n_classes`` and ``widths`` are read off the tensor shapes; the load is strict.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from domains.imaging.medcnn import MedResNet

    p = Path(weights_path)
    if not p.is_file():
        raise InputError(f"{p}: no such weights file")
    try:
        state = load_file(str(p))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{p}: cannot read safetensors weights: {' '.join(str(exc).split())}") from None
    keys = ("stem.0.weight", "layer2.conv1.weight", "layer3.conv1.weight", "fc.weight")
    missing = [k for k in keys if k not in state]
    if missing:
        raise ModelError(f"{p}: not MedResNet weights (missing {', '.join(missing)})")
    stem = state["stem.0.weight"]
    widths = tuple(int(state[k].shape[0]) for k in ("stem.0.weight", "layer2.conv1.weight", "layer3.conv1.weight"))
    model = MedResNet(in_channels=int(stem.shape[1]), n_classes=int(state["fc.weight"].shape[0]), widths=widths)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0:2]
        raise ModelError(f"{p}: weights do not fit MedResNet: {' '.join(' '.join(first).split())[:300]}") from None
    return model.eval()


# --------------------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m domains.imaging.train``: train one model; prints progress to stderr and the test metrics."""
    parser = argparse.ArgumentParser(prog="python -m domains.imaging.train", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="pneumoniamnist, breastmnist or a path to a MedMNIST .npz")
    parser.add_argument("--out", required=True, help="output folder (or the .safetensors path)")
    parser.add_argument("--epochs", type=int, help="epochs (default: the dataset's tuned setting)")
    parser.add_argument("--seed", type=int, help="random seed (default 0)")
    parser.add_argument("--lr", type=float, help="peak learning rate")
    parser.add_argument("--batch-size", type=int, help="images per step")
    parser.add_argument("--no-augment", action="store_true", help="train without augmentation")
    parser.add_argument("--quiet", action="store_true", help="no per-epoch progress")
    args = parser.parse_args(argv)
    try:
        name = _dataset_path(args.dataset).stem
        base = DEFAULT_CONFIGS.get(name, CNNTrainConfig())
        changes = {k: v for k, v in (("epochs", args.epochs), ("seed", args.seed), ("lr", args.lr),
                                     ("batch_size", args.batch_size)) if v is not None}
        if args.no_augment:
            changes["augment"] = False
        config = dataclasses.replace(base, **changes)
        result = train_cnn(args.dataset, out=args.out, config=config, progress=not args.quiet)
    except WorkbenchError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: result[k] for k in ("dataset", "best_epoch", "val_accuracy", "val_auc", "test_accuracy",
                                             "test_auc", "training_seconds", "weights")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
