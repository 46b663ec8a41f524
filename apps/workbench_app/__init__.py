"""The feature-catalog explorer: a multi-page Streamlit app over one catalog folder (``workbench app CATALOG``)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["APP_SCRIPT"]

APP_SCRIPT = Path(__file__).with_name("app.py")
"""The script ``streamlit run`` starts."""
