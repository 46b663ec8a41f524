"""The shipped MedResNet weights on the bundled MedMNIST test sets, beside a pixel logistic regression and the
published ResNet-18 (28) figures.

Run on demand (not a test):

    .venv/bin/python benchmarks/bench_imaging_cnn.py [--models models/] [--no-write]

For PneumoniaMNIST and BreastMNIST it loads ``models/medcnn_<name>.safetensors`` (written by
``python -m domains.imaging.train``), checks that its report's data checksum matches the bundled ``.npz``, and
scores the test split: accuracy (argmax), recall per class, ROC AUC of label 1's softmax probability (as MedMNIST's
evaluator does) with a bootstrap 95% interval. In the same run it fits the peer, scikit-learn's LogisticRegression
on the raw pixels scaled to [0, 1] (fitted on train for each C of a grid; the C with the best validation AUC is
kept), and prints both next to the ResNet-18 (28) figures of the MedMNIST v2 paper (Yang et al., Scientific Data
2023, 2D benchmark table), with ratios. The bundled PneumoniaMNIST test set is a class-balanced subsample (468
images) of the official one (624, mostly pneumonia), so its comparison with the paper is indicative (the section
also gives the accuracy reweighted to the official class mix); BreastMNIST's is the official test set. Appends a
dated section to benchmarks/RESULTS.md (about 20 s on 2 cores).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

#: MedMNIST v2 paper (2D benchmark table): ResNet-18 (28) test AUC and accuracy.
PUBLISHED = {"pneumoniamnist": {"auc": 0.944, "accuracy": 0.854}, "breastmnist": {"auc": 0.901, "accuracy": 0.863}}
C_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
#: Class counts of the official PneumoniaMNIST test set (normal, pneumonia); the bundled one is balanced.
OFFICIAL_PNEUMONIA_TEST = (234, 390)
N_BOOTSTRAP = 1000


def bootstrap_auc(y, prob, *, n: int = N_BOOTSTRAP, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the test AUC (test images resampled with replacement)."""
    import numpy as np

    from domains.imaging.train import _auc

    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n):
        idx = rng.integers(0, len(y), len(y))
        value = _auc(y[idx], prob[idx])
        if value == value:
            values.append(value)
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def _fmt(x: float, digits: int = 3) -> str:
    return "n/a" if x != x else f"{x:.{digits}f}"


def _split(path: Path, split: str):
    import numpy as np

    from domains.imaging.readers import read_medmnist

    recs = read_medmnist(path, splits=(split,))
    return [r.image for r in recs], np.array([r.meta["label"] for r in recs])


def score_cnn(weights: Path, npz: Path) -> dict[str, float]:
    """Test accuracy and AUC of the shipped weights, with the preprocessing recorded in their metadata."""
    import torch
    from safetensors import safe_open

    from domains.imaging.train import _auc, load_medcnn
    from domains.imaging.transforms import Preprocess

    with safe_open(str(weights), framework="pt") as fh:
        meta = fh.metadata() or {}
    prep = Preprocess.from_dict(json.loads(meta["preprocess"])) if "preprocess" in meta else Preprocess()
    model = load_medcnn(weights)
    images, y = _split(npz, "test")
    t0 = time.perf_counter()
    with torch.no_grad():
        prob = torch.softmax(model(prep(images)), dim=1).numpy()
    seconds = time.perf_counter() - t0
    return {"accuracy": float((prob.argmax(1) == y).mean()), "auc": _auc(y, prob), "seconds": seconds,
            "n": len(y), "params": sum(p.numel() for p in model.parameters()), "prob": prob, "y": y}


def score_logreg(npz: Path) -> dict[str, float]:
    """Pixel logistic regression: fit on train for each C, keep the best validation AUC, score test."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from domains.imaging.train import _auc

    data = {}
    for split in ("train", "val", "test"):
        images, y = _split(npz, split)
        data[split] = (np.stack(images).reshape(len(images), -1).astype(np.float64) / 255.0, y)
    t0 = time.perf_counter()
    best = None
    for c in C_GRID:
        model = LogisticRegression(C=c, max_iter=5000).fit(*data["train"])
        val_auc = _auc(data["val"][1], model.predict_proba(data["val"][0]))
        if best is None or val_auc > best[0]:
            best = (val_auc, c, model)
    val_auc, c, model = best
    prob = model.predict_proba(data["test"][0])
    y = data["test"][1]
    return {"accuracy": float((prob.argmax(1) == y).mean()), "auc": _auc(y, prob), "C": c, "val_auc": val_auc,
            "seconds": time.perf_counter() - t0, "prob": prob, "y": y}


def report(models_dir: Path) -> str:
    import torch

    from _machine import cpu_model
    from domains.imaging.readers import LABEL_NAMES, bundled
    from domains.imaging.train import _sha256

    lines = [f"## {dt.date.today().isoformat()} — bench_imaging_cnn (MedResNet on bundled MedMNIST)", ""]
    lines.append(f"Machine: {cpu_model()}, {os.cpu_count()} cores, CPU only, torch {torch.__version__} "
                 f"({torch.get_num_threads()} threads). Test-set accuracy (argmax) and ROC AUC (softmax probability of "
                 "label 1), as MedMNIST's evaluator computes them; published = ResNet-18 (28) from the MedMNIST v2 "
                 "paper's 2D benchmark table.")
    lines.append("")
    lines += ["| dataset | n test | model | test acc | recall per class | test AUC | AUC 95% CI | published acc | "
              "published AUC | acc ratio | AUC ratio | selected on val | train s |", "|---" * 13 + "|"]
    notes = []
    for name in ("pneumoniamnist", "breastmnist"):
        npz = bundled(name)
        weights = models_dir / f"medcnn_{name}.safetensors"
        info_path = weights.with_suffix(".json")
        if not weights.is_file():
            lines.append(f"| {name} | | MedResNet | missing: {weights} |" + " |" * 9)
            continue
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        if info.get("dataset_sha256") not in (None, _sha256(npz)):
            notes.append(f"WARNING: {info_path.name} was trained on a different {npz.name} (checksum differs).")
        cnn = score_cnn(weights, npz)
        lr = score_logreg(npz)
        pub = PUBLISHED[name]
        cnn_sel = (f"epoch {info.get('best_epoch', '?')}/{info.get('epochs_run', '?')}, "
                   f"val AUC {_fmt(info.get('val_auc', float('nan')))}")
        rows = (
            (f"MedResNet ({cnn['params'] / 1e6:.2f} M params, shipped)", cnn, cnn_sel,
             _fmt(info.get("training_seconds", float("nan")), 0)),
            ("LogisticRegression on pixels", lr, f"C={lr['C']:g}, val AUC {_fmt(lr['val_auc'])}",
             _fmt(lr["seconds"], 1)),
        )
        for label, res, sel, secs in rows:
            lo, hi = bootstrap_auc(res["y"], res["prob"])
            pred = res["prob"].argmax(1)
            recall = ", ".join(f"{LABEL_NAMES[name][c]} {_fmt(float((pred[res['y'] == c] == c).mean()), 2)}"
                               for c in sorted(LABEL_NAMES[name]))
            if name == "pneumoniamnist":
                rec = [float((pred[res["y"] == c] == c).mean()) for c in (0, 1)]
                mixed = sum(r * k for r, k in zip(rec, OFFICIAL_PNEUMONIA_TEST)) / sum(OFFICIAL_PNEUMONIA_TEST)
                notes.append(f"{name}, {label.split(' (')[0]}: accuracy reweighted to the official test mix "
                             f"({OFFICIAL_PNEUMONIA_TEST[0]} normal / {OFFICIAL_PNEUMONIA_TEST[1]} pneumonia) "
                             f"from its per-class recalls: {_fmt(mixed)} (published {pub['accuracy']:.3f}).")
            lines.append(f"| {name} | {cnn['n']} | {label} | {_fmt(res['accuracy'])} | {recall} | {_fmt(res['auc'])} | "
                         f"{_fmt(lo)}-{_fmt(hi)} | "
                         f"{pub['accuracy']:.3f} | {pub['auc']:.3f} | {res['accuracy'] / pub['accuracy']:.3f} | "
                         f"{res['auc'] / pub['auc']:.3f} | {sel} | {secs} |")
        if info.get("test_auc") is not None and abs(info["test_auc"] - cnn["auc"]) > 1e-6:
            notes.append(f"WARNING: {name}: recomputed test AUC {cnn['auc']:.4f} differs from the report's "
                         f"{info['test_auc']:.4f}.")
    lines.append("")
    lines.append("PneumoniaMNIST here is the bundled class-balanced subsample (test 234 normal + 234 pneumonia; "
                 "the official test set has 624 images, 390 pneumonia), so its comparison with the paper is "
                 "indicative only; BreastMNIST uses the official split. 'train s' is the model's training time (from "
                 f"its JSON report) or the logistic regression's C search. AUC 95% CI: percentile bootstrap over the "
                 f"test images ({N_BOOTSTRAP} resamples).")
    lines += ["", *(f"- {n}" for n in notes)] if notes else []
    return "\n".join(lines) + "\n"


def main() -> None:
    from _machine import record

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=ROOT / "models", help="folder with medcnn_<name>.safetensors")
    parser.add_argument("--no-write", action="store_true", help="print only; do not append to RESULTS.md")
    args = parser.parse_args()
    record(report(args.models), write=not args.no_write)


if __name__ == "__main__":
    main()
