"""Test helpers: a tiny vision model card with random weights, so the imaging pipeline runs on a CPU in seconds.

The card and weights go through exactly the path a user's own network takes (a YAML card file naming the class, a
safetensors file beside it). Never use them for demos, benchmarks or quality figures: those use the shipped,
trained ``medcnn-*`` models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["write_tiny_vision_card", "build_tiny_imaging_catalog"]


def write_tiny_vision_card(folder: str | Path, *, widths: tuple[int, int, int] = (4, 8, 8), seed: int = 0,
                           name: str = "tiny-cnn", weights_format: str = "safetensors") -> Path:
    """Write ``<name>.yaml`` and its randomly initialised MedResNet weights into ``folder``; return the card path."""
    import torch
    import yaml

    from .medcnn import MedResNet

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = MedResNet(widths=widths).eval()
    if weights_format == "safetensors":
        from safetensors.torch import save_file

        from workbench._io import set_output_mode

        weights = f"{name}.safetensors"
        save_file(model.state_dict(), str(folder / weights))
        set_output_mode(folder / weights)
    elif weights_format == "pt":
        weights = f"{name}.pt"
        torch.save(model.state_dict(), folder / weights)
    else:
        raise ValueError("weights_format is 'safetensors' or 'pt'")
    card: dict[str, Any] = {
        "name": name, "adapter": "vision", "n_layers": 3, "d_model": widths[-1], "weights": weights,
        "description": "tiny random MedResNet for tests",
        "options": {
            "architecture": "domains.imaging.medcnn:MedResNet", "kwargs": {"widths": list(widths)},
            "layers": ["stem", "layer1", "layer2", "layer3"], "default_layer": "layer3",
            "preprocess": {"size": 28, "channels": 1, "mean": [0.5], "std": [0.5]},
            "classes": ["normal", "pneumonia"], "positive_class": "pneumonia",
        },
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(card, sort_keys=False))
    return path


def build_tiny_imaging_catalog(folder: str | Path, *, limit: int = 40) -> Path:
    """The imaging demo pipeline with the tiny model on ``limit`` real PneumoniaMNIST images per split; returns the
    catalog folder."""
    from .demo import ImagingDemoConfig, run_dataset

    folder = Path(folder)
    card = write_tiny_vision_card(folder / "model")
    cfg = ImagingDemoConfig(datasets=("pneumoniamnist",), model=str(card), width=64, k=4, n_tokens=20_000, limit=limit,
                            n_causal=4)
    run_dataset(folder / "demo", "pneumoniamnist", cfg, progress=False)
    return folder / "demo" / "pneumoniamnist" / "catalog"
