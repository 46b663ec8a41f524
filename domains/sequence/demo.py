"""The antibody demo on the bundled real data: activation stores from the three real antibody models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .readers import bundled

__all__ = ["run", "DEMO_STORES"]

THERA_META = ["CH1 Isotype", "VD LC", "Est. Status", "Target", "Genetics (Bispecifics delimited with semicolon)"]

DEMO_STORES: dict[str, dict[str, Any]] = {
    # OAS human IgG memory-B heavy chains through the heavy-chain model, middle layer.
    "sapiens-vh_oas_L2": {
        "model": "sapiens-vh", "input": "oas_human_igg_memory_b_vh", "layers": [2],
        "read_options": {"id_col": "seq_id", "seq_cols": "sequence_alignment_aa", "meta_cols": ["v_family", "cdr3_aa"]},
    },
    # Thera-SAbDab light chains through the light-chain model.
    "sapiens-vl_thera_L2": {
        "model": "sapiens-vl", "input": "therasabdab", "layers": [2],
        "read_options": {"id_col": "Therapeutic", "seq_cols": {"LC": "light"}, "meta_cols": THERA_META, "skip_missing": True},
    },
    # Thera-SAbDab heavy and light chains (one record per chain) through AntiBERTy, middle and last layer.
    "antiberty_thera_L4": {
        "model": "antiberty", "input": "therasabdab", "layers": [4],
        "read_options": {"id_col": "Therapeutic", "seq_cols": {"HC": "heavy", "LC": "light"}, "meta_cols": THERA_META},
    },
}


def run(out: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """Build every demo store under ``out`` (stores already there are reused) and return them by name."""
    import workbench
    from workbench.errors import StoreError

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stores = {}
    for name, spec in DEMO_STORES.items():
        path = out / name
        try:
            store = workbench.open_store(path)
            print(f"[demo] reusing {path}")
        except StoreError:
            print(f"[demo] {name}: {spec['model']} layers {spec['layers']} on bundled {spec['input']}")
            store = workbench.extract(
                spec["model"], bundled(spec["input"]), layers=spec["layers"], out=path,
                read_options=spec["read_options"], progress=progress,
            )
        stores[name] = store
        print(f"[demo]   {store}")
    return stores
