"""Entry point of the catalog explorer: ``streamlit run app.py -- --catalog DIR`` (``workbench app`` does this).

The app works offline: the page icons are Streamlit's Material Symbols font, which Streamlit serves itself, and the
browser tab's icon is :data:`FAVICON`, an emoji Streamlit turns into an inline image (with a Material icon there,
or none, the page's icon would become the tab icon, which Streamlit fetches from Google's font CDN).
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

HERE = Path(__file__).resolve().parent
PAGES = [
    ("app_pages/overview.py", "Overview", ":material/dashboard:"),
    ("app_pages/features.py", "Feature browser", ":material/search:"),
    ("app_pages/compare.py", "Compare features", ":material/compare:"),
    ("app_pages/concepts.py", "Concept explorer", ":material/category:"),
    ("app_pages/beyond.py", "Beyond position", ":material/filter_alt:"),
    ("app_pages/discovery.py", "Discovery", ":material/lightbulb:"),
    ("app_pages/atlas.py", "Feature atlas", ":material/scatter_plot:"),
    ("app_pages/universality.py", "Universality", ":material/compare_arrows:"),
    ("app_pages/live.py", "Live input", ":material/edit:"),
]
IMAGE_PAGES = [("app_pages/images.py", "Images", ":material/image:")]  # image catalogs only, after the feature browser
# The browser tab's icon: an emoji, drawn inline (no request leaves the machine). No bare strings in this script:
# Streamlit's magic would show them on every page.
FAVICON = "🔬"


def _is_image_catalog() -> bool:
    """True when the app's catalog holds images; False for sequence catalogs and when it cannot be opened (the pages
    then report the problem as before)."""
    try:
        from apps.workbench_app._images import is_image_catalog
        from apps.workbench_app._state import get_catalog

        return is_image_catalog(get_catalog())
    except (Exception, SystemExit):  # noqa: BLE001 - navigation must not fail on a bad catalog
        return False


st.set_page_config(page_title="Microscope-AI workbench", page_icon=FAVICON, layout="wide")
pages = list(PAGES)
if _is_image_catalog():
    pages[2:2] = IMAGE_PAGES
navigation = st.navigation([st.Page(str(HERE / path), title=title, icon=icon) for path, title, icon in pages])
navigation.run()
