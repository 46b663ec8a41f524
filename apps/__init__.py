"""Streamlit apps for domain scientists (run with ``workbench app``)."""
