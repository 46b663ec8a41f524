"""What every page shares: the one catalog the app was started with, loaded once and cached.

The catalog folder comes from the command line (``streamlit run app.py -- --catalog DIR``, which ``workbench app``
builds) or the ``WORKBENCH_APP_CATALOG`` environment variable, never from the page: the app opens no path a user
types, and reads catalogs through :class:`workbench.catalog.Catalog` (HDF5, no pickles).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["catalog_path", "get_catalog", "feature_ids", "select_feature", "ENV"]

ENV = "WORKBENCH_APP_CATALOG"


def catalog_path() -> Path:
    """The catalog folder given at start-up (command line after ``--``, else the environment variable)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--catalog")
    args, _ = parser.parse_known_args(sys.argv[1:])
    value = args.catalog or os.environ.get(ENV)
    if not value:
        raise SystemExit("start the app with `workbench app CATALOG` (or set WORKBENCH_APP_CATALOG)")
    return Path(value).resolve()


def get_catalog() -> Any:
    """The app's catalog, opened once per server process (``st.cache_resource``)."""
    import streamlit as st

    @st.cache_resource(show_spinner="Opening the catalog ...")
    def _open(path: str) -> Any:
        from workbench.catalog import Catalog

        return Catalog.open(path)

    return _open(str(catalog_path()))


def feature_ids() -> list[str]:
    """All feature ids of the catalog, in order."""
    return [str(i) for i in get_catalog().features.index]


def select_feature(fid: str) -> None:
    """Make ``fid`` the feature shown by the feature browser (shared through ``st.session_state``)."""
    import streamlit as st

    st.session_state["feature"] = fid
