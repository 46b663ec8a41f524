"""Exceptions the workbench raises for problems the user can fix."""

from __future__ import annotations

__all__ = ["WorkbenchError", "InputError", "StoreError", "ModelError"]


class WorkbenchError(ValueError):
    """Base class: a problem with what the user asked for, reported as one line without a traceback."""


class InputError(WorkbenchError):
    """Malformed or invalid input records (bad residues, duplicate ids, empty files, over-length sequences)."""


class StoreError(WorkbenchError):
    """An activation store that is missing, incomplete, corrupt or incompatible with the request."""


class ModelError(WorkbenchError):
    """An unknown model, an unknown layer, or weights that cannot be loaded."""
