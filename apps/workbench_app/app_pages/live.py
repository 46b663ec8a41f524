"""Live input: run new sequences through the catalog's model and SAE and see which features fire where.

The model (``provenance["model_source"]``) and the SAE (``provenance["sae_path"]``) are the ones the catalog was
built with, loaded once per server process. Input is pasted text (FASTA or a plain sequence) or an uploaded FASTA
file read in memory; the model's adapter validates it (alphabet, length limit) and the page adds its own limits
(number of sequences and residues). Any :class:`~workbench.errors.WorkbenchError` is shown as a one-line error.

On antibody catalogs (``obs["imgt"]``) the input is numbered by ANARCI and the activation track is drawn on IMGT
columns with the CDRs marked, as in the feature browser, with the germline genes linked to IMGT/GENE-DB; without
HMMER's ``hmmscan`` the track keeps raw positions and a one-line note says so.
"""

from __future__ import annotations

import hashlib
from typing import Any

import streamlit as st

from apps.workbench_app import _links as links
from apps.workbench_app import _live
from apps.workbench_app import _views as views
from apps.workbench_app._images import is_image_catalog
from apps.workbench_app._state import get_catalog
from workbench.errors import WorkbenchError

RESULT_KEY = "live_result"
MAX_UPLOAD_BYTES = _live.MAX_TEXT_CHARS * 2


def _input_text(pasted: str, upload: Any) -> str:
    """The text to encode: the uploaded file (decoded in memory) when there is one, else the pasted text."""
    if upload is None:
        return pasted
    data = upload.getvalue()
    if len(data) > MAX_UPLOAD_BYTES:
        raise WorkbenchError(f"{upload.name}: {len(data):,} bytes; live input takes files up to {MAX_UPLOAD_BYTES:,}")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise WorkbenchError(f"{upload.name}: not a text (UTF-8) FASTA file") from None


def _encode(cat: Any, model_source: str, sae_path: str, text: str) -> _live.LiveResult:
    """The input's validated records encoded by :meth:`Catalog.encode_sparse` with the cached model and SAE."""
    adapter = _live.load_model(model_source)
    sae = _live.load_sae_cached(sae_path)
    return cat.encode_sparse(_live.read_records(adapter, text), adapter=adapter, sae=sae)


def _show_result(cat: Any, result: _live.LiveResult) -> None:
    n_res = result.n_tokens
    st.markdown(f"**{len(result.ids)}** sequence(s), **{n_res:,}** residues encoded; "
                f"**{int((result.codes.getnnz(axis=0) > 0).sum()):,}** features fire.")
    scope = None
    if len(result.ids) > 1:
        choice = st.selectbox("Sequence", ["all sequences", *result.ids], key="live_scope")
        scope = None if choice == "all sequences" else choice
    table = _live.top_features(result, cat.features, sequence_id=scope, limit=50)
    if table.empty:
        st.warning("No feature fires on this input.")
        return
    st.subheader("Top features by maximum activation")
    st.caption("Activation is divided by the feature's maximum over the catalog's sequences (1 = as strong as its "
               "strongest catalog firing; live input can exceed 1).")
    st.dataframe(table, hide_index=True, width="stretch", column_config={
        "max_activation": st.column_config.ProgressColumn("max activation", min_value=0.0,
                                                          max_value=max(1.0, float(table["max_activation"].max())),
                                                          format="%.2f"),
        "n_residues": st.column_config.NumberColumn("residues firing"),
        "peak": st.column_config.TextColumn("strongest at"),
        "top_concept": st.column_config.TextColumn("top concept"),
    })
    views.table_downloads(table, name="live_features", key="live")

    st.subheader("Where a feature fires")
    descriptions = dict(zip(table["feature"], table["description"]))
    c1, c2 = st.columns([3, 2])
    fid = c1.selectbox("Feature", table["feature"].tolist(), key="live_feature",
                       format_func=lambda f: f"{f} — {descriptions.get(f, '')[:80]}")
    seqs = [scope] if scope else result.ids
    numbered = _numbering(cat, result)
    if fid:
        rows = []
        for sid in seqs:
            track = _live.feature_track(result, fid, sid)
            if (track > 0).any() or len(seqs) == 1:
                rows.append(views.ResidueRow(label=sid, tokens=list(result.sequences[sid]), activations=track,
                                             positions=numbered.positions.get(sid) if numbered else None,
                                             note=f"max {track.max():.2f}"))
        hidden = len(seqs) - len(rows)
        st.html(views.examples_html(rows, align=True) + views.legend_html())
        if numbered is not None:
            _numbering_notes(numbered, seqs)
        if hidden:
            st.caption(f"{hidden} sequence(s) where {fid} does not fire are not shown.")
        if c2.button(f"Open {fid} in the feature browser", key="live_open", icon=":material/open_in_new:"):
            views.open_feature(fid)


def _numbering(cat: Any, result: _live.LiveResult) -> _live.Numbered | None:
    """ANARCI's IMGT numbering of the input on antibody catalogs (``obs["imgt"]``), None on other catalogs."""
    if "imgt" not in cat.sequences.columns:
        return None
    return _live.cached_numbering({sid: "".join(result.sequences[sid]) for sid in result.ids})


def _numbering_notes(numbered: _live.Numbered, seqs: list[str]) -> None:
    """A one-line note when numbering failed, and the germline genes of the sequences shown, linked to IMGT."""
    if numbered.note:
        st.caption(numbered.note)
    genes = [(numbered.genes[s].get(k), numbered.genes[s].get("species")) for s in seqs if s in numbered.genes
             for k in ("v_gene", "j_gene")]
    found = links.gene_links(genes)
    if found:
        st.markdown(f"IMGT numbering by ANARCI (CDRs marked); germline genes: {links.md_links(found)}")


# ------------------------------------------------------------------------------------------------ page

catalog = get_catalog()
st.title("Live input")
if is_image_catalog(catalog):
    st.info("Live input takes sequences; this catalog holds images. To analyse new images, extract their activations "
            "with `workbench extract` and build a catalog from them.")
    st.stop()
prov = catalog.provenance
model_source, sae_path, problem = _live.live_sources(prov)
st.caption(
    f"Encode your own sequences with the catalog's model ({prov.get('model', '?')}, layer {prov.get('layer', '?')}) "
    f"and SAE. Up to {_live.MAX_SEQUENCES} sequences and {_live.MAX_RESIDUES:,} residues at a time."
)
if problem is not None:
    st.info(problem)
    st.stop()

with st.form("live_input"):
    pasted = st.text_area("Sequence(s): FASTA, or one plain sequence", key="live_text", height=150,
                          max_chars=_live.MAX_TEXT_CHARS, placeholder=">my_antibody\nEVQLVESGGGLVQPGGSLRLSCAAS...")
    upload = st.file_uploader("… or upload a FASTA file (read in memory)", type=["fasta", "fa", "faa", "fas", "txt"],
                              key="live_upload")
    submitted = st.form_submit_button("Encode", icon=":material/play_arrow:", type="primary")

if submitted:
    try:
        text = _input_text(pasted or "", upload)
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        previous = st.session_state.get(RESULT_KEY)
        if previous is None or previous[0] != digest:  # the same input again is not re-encoded
            with st.spinner("Running the model and the SAE ..."):
                result = _encode(catalog, model_source or "", sae_path or "", text)
            st.session_state[RESULT_KEY] = (digest, result)
    except WorkbenchError as exc:
        st.session_state.pop(RESULT_KEY, None)
        st.error(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    except Exception as exc:  # noqa: BLE001 - the page shows one line, never a traceback
        st.session_state.pop(RESULT_KEY, None)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        st.error(f"live input failed ({type(exc).__name__}{': ' + first if first else ''})")

stored = st.session_state.get(RESULT_KEY)
if stored is not None:
    _show_result(catalog, stored[1])
elif not submitted:
    st.caption("Paste a sequence and press **Encode**.")
