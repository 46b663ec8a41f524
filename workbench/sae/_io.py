"""Saving and loading dictionaries: ``sae.safetensors`` + ``cfg.json``, no pickle anywhere."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from workbench.errors import WorkbenchError

from ._config import SAEConfig
from ._models import SparseAutoencoder

__all__ = ["save_sae", "load_sae", "SAE_WEIGHTS", "SAE_CONFIG"]

SAE_WEIGHTS = "sae.safetensors"
SAE_CONFIG = "cfg.json"


def save_sae(sae: SparseAutoencoder, folder: str | os.PathLike[str], *, extra: dict[str, Any] | None = None) -> Path:
    """Write ``sae.safetensors`` and ``cfg.json`` into ``folder`` (each to a temporary name, then renamed)."""
    from safetensors.torch import save_file

    from workbench._io import set_output_mode
    from workbench.store import write_json_atomic

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in sae.state_dict().items()}
    tmp = folder / f".{SAE_WEIGHTS}.tmp-{os.getpid()}"
    save_file(tensors, str(tmp), metadata={"format": "workbench-sae", "arch": sae.cfg.arch})
    set_output_mode(tmp)  # safetensors creates it owner-only; the other outputs follow the umask
    os.replace(tmp, folder / SAE_WEIGHTS)
    write_json_atomic(folder / SAE_CONFIG, {"sae": sae.cfg.to_dict(), **(extra or {})})
    return folder


def load_sae(folder: str | os.PathLike[str], *, device: str = "cpu") -> SparseAutoencoder:
    """Rebuild a dictionary from ``cfg.json`` and load ``sae.safetensors`` into it (bit-exact)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg_path, weights = folder / SAE_CONFIG, folder / SAE_WEIGHTS
    if not cfg_path.is_file() or not weights.is_file():
        raise WorkbenchError(f"{folder}: not a saved SAE (needs {SAE_CONFIG} and {SAE_WEIGHTS})")
    try:
        cfg = SAEConfig.from_dict(json.loads(cfg_path.read_text())["sae"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise WorkbenchError(f"{cfg_path}: corrupt SAE config ({exc})") from exc
    try:
        tensors = load_file(str(weights), device=device)
    except (SafetensorError, OSError, ValueError) as exc:
        raise WorkbenchError(f"{weights}: corrupt or truncated SAE weights ({exc})") from exc
    sae = SparseAutoencoder(cfg).to(device)
    try:
        sae.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise WorkbenchError(f"{weights}: weights do not match {cfg_path} ({str(exc).splitlines()[0]})") from exc
    return sae.eval()
