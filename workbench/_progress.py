"""Progress bars: tqdm's notebook widget where ipywidgets is installed, its plain text bar everywhere else.

``tqdm.auto`` picks the widget in any Jupyter kernel and, without ipywidgets, warns "IProgress not found" before
falling back to the text bar; asking for ipywidgets first keeps notebooks quiet and terminals unchanged.
"""

from __future__ import annotations

import importlib.util
from typing import Any

__all__ = ["progress_bar"]


def progress_bar(**kwargs: Any) -> Any:
    """A ``tqdm`` bar (``kwargs`` go to it): ``tqdm.auto``'s when ipywidgets is importable, else ``tqdm.tqdm``."""
    if importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.auto import tqdm
    else:
        from tqdm import tqdm
    return tqdm(**kwargs)
