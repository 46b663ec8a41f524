"""Microscope-AI workbench: learn what trained scientific models know.

The top-level names are imported lazily so that ``import workbench`` stays light (no torch, no domain).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from workbench._version import __version__

if TYPE_CHECKING:  # pragma: no cover
    from workbench._extract import extract
    from workbench._pipeline import AnnotateConfig, annotate
    from workbench.catalog import Catalog
    from workbench.records import SequenceRecord
    from workbench.registry import get_card, list_models, load_adapter
    from workbench.store import ActivationStore, open_store
    from workbench._universality import Universality, universality, write_universality

__all__ = [
    "__version__", "extract", "open_store", "ActivationStore", "load_adapter", "list_models", "get_card", "annotate",
    "AnnotateConfig", "Catalog", "universality", "write_universality", "Universality", "SequenceRecord",
]

_LAZY = {
    "extract": "workbench._extract",
    "open_store": "workbench.store",
    "ActivationStore": "workbench.store",
    "load_adapter": "workbench.registry",
    "list_models": "workbench.registry",
    "get_card": "workbench.registry",
    "annotate": "workbench._pipeline",
    "AnnotateConfig": "workbench._pipeline",
    "Catalog": "workbench.catalog",
    "universality": "workbench._universality",
    "write_universality": "workbench._universality",
    "Universality": "workbench._universality",
    "SequenceRecord": "workbench.records",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
