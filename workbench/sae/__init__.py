"""Sparse autoencoders: five architectures, streaming training from an activation store, fidelity metrics."""

from __future__ import annotations

from ._config import ARCHITECTURES, SAEConfig, TrainConfig
from ._io import load_sae, save_sae
from ._metrics import evaluate, fidelity, loss_recovered
from ._models import SAEOutput, SparseAutoencoder, SparseCodes
from ._sweep import sweep
from ._train import RunSpec, TrainResult, input_statistics, train_sae, train_saes

__all__ = [
    "ARCHITECTURES", "SAEConfig", "TrainConfig", "SparseAutoencoder", "SAEOutput", "SparseCodes",
    "train_sae", "train_saes", "RunSpec", "TrainResult", "input_statistics", "load_sae", "save_sae", "evaluate", "fidelity", "loss_recovered", "sweep",
]
