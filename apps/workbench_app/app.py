"""Entry point of the catalog explorer: ``streamlit run app.py -- --catalog DIR`` (``workbench app`` does this)."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

HERE = Path(__file__).resolve().parent
PAGES = [
    ("app_pages/overview.py", "Overview", ":material/dashboard:"),
    ("app_pages/features.py", "Feature browser", ":material/search:"),
    ("app_pages/concepts.py", "Concept explorer", ":material/category:"),
    ("app_pages/discovery.py", "Discovery", ":material/lightbulb:"),
    ("app_pages/atlas.py", "Feature atlas", ":material/scatter_plot:"),
    ("app_pages/live.py", "Live input", ":material/edit:"),
]

st.set_page_config(page_title="Microscope-AI workbench", layout="wide")
navigation = st.navigation([st.Page(str(HERE / path), title=title, icon=icon) for path, title, icon in PAGES])
navigation.run()
