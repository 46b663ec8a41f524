"""Rendering and cached-data helpers shared by the catalog explorer's pages.

Pure helpers (no Streamlit call): number formatting (:func:`fmt_num`, :func:`fmt_q`, :func:`fmt_pct`), IMGT
positions (:func:`parse_positions`, :func:`imgt_region`, :data:`IMGT_REGIONS`), activation colours
(:func:`activation_color`) and HTML for residues coloured by activation (:func:`residues_html`,
:func:`examples_html`, :func:`legend_html`); every text that goes into HTML is escaped.

Streamlit helpers: :func:`feature_maxima` (a feature's per-sequence maxima, the catalog's ``X`` column, read
lazily and cached), :func:`cached_feature`, :func:`cached_neighbors`, :func:`cached_search`, :func:`feature_labels`,
:func:`example_rows`, :func:`open_feature` (select a feature and go to the feature browser) and
:func:`csv_download` / :func:`table_downloads` (CSV and Parquet buttons under a table); :func:`distinct_palette`
gives category colours. Cached functions are keyed on the catalog file path (``str(cat.path)``) and the feature id,
so they stay valid across reruns and sessions of one server process and never mix two catalogs.

The signatures here are stable: other pages import them.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench._catalog_encode import parse_positions
from workbench._catalog_views import tokens_of

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import scipy.sparse

    from workbench.catalog import Catalog

__all__ = [
    "IMGT_REGIONS", "CDR_COLOURS", "FEATURES_PAGE", "ResidueRow", "fmt_num", "fmt_q", "fmt_pct", "is_missing", "md_escape",
    "activation_color", "parse_positions", "imgt_region", "tokens_of", "residues_html", "examples_html",
    "legend_html", "feature_maxima", "cached_feature", "cached_neighbors", "cached_search", "feature_labels",
    "example_rows", "open_feature", "resolve_feature", "csv_download", "table_downloads", "distinct_palette",
    "asked_feature", "obs_matrix", "units", "example_concepts", "histogram_spec", "metrics_html",
]

FEATURES_PAGE = "app_pages/features.py"
"""The feature browser's page path (relative to ``app.py``), for ``st.switch_page``."""

IMGT_REGIONS: tuple[tuple[str, int, int], ...] = (
    ("FR1", 1, 26), ("CDR1", 27, 38), ("FR2", 39, 55), ("CDR2", 56, 65), ("FR3", 66, 104), ("CDR3", 105, 117),
    ("FR4", 118, 128),
)
"""IMGT regions of an antibody variable domain: ``(name, first, last)`` position, inclusive."""

CDR_COLOURS = {"CDR1": "#cfe3f7", "CDR2": "#d5f0d0", "CDR3": "#f9dcc4"}
"""Background of the IMGT-number header cells of each CDR."""

_HOT = (214, 39, 40)
"""RGB of a residue at the feature's maximum activation (alpha scales with the activation)."""


# ------------------------------------------------------------------------------------------------------------ formatting
from workbench._catalog_encode import is_missing  # noqa: E402 - one definition, shared with the catalog's encoding


def units(cat: Any) -> Any:
    """What the catalog's rows and tokens are called (:attr:`workbench.catalog.Catalog.units`): images and grid
    positions for image catalogs, sequences and residues otherwise."""
    from workbench.catalog import Units

    found = getattr(cat, "units", None)
    return found if isinstance(found, Units) else Units("sequence", "sequences", "residue", "residues")


def example_concepts(cat: Any, *, n: int = 2) -> list[str]:
    """The ``n`` most common top concepts of the catalog's features (for placeholders: examples that exist)."""
    var = cat.features
    if "top_concept" not in var.columns:
        return []
    return [str(c) for c in var["top_concept"].dropna().astype(str).value_counts().index[:n]]


def fmt_num(value: Any, *, digits: int = 3) -> str:
    """A number with ``digits`` significant digits (``"–"`` when missing, text passes through)."""
    if is_missing(value):
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    try:
        x = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isinf(x):
        return "∞" if x > 0 else "-∞"
    return f"{x:.{digits}g}"


def fmt_q(value: Any) -> str:
    """A p/q-value: ``<1e-300`` for 0, scientific below 0.001, else three decimals."""
    if is_missing(value):
        return "–"
    q = float(value)
    if q <= 0:
        return "<1e-300"
    if q < 1e-3:
        return f"{q:.0e}"
    return f"{q:.3f}"


def fmt_pct(value: Any, *, digits: int = 2) -> str:
    """A fraction as a percentage with ``digits`` significant digits."""
    if is_missing(value):
        return "–"
    return f"{100 * float(value):.{digits}g}%"


def md_escape(text: Any) -> str:
    """``text`` with Markdown and HTML specials backslash-escaped, for ``st.markdown`` (``IGHV1-3*01``, ``q <1e-300``)."""
    out = []
    for ch in str(text):
        out.append("\\" + ch if ch in "\\`*_{}[]()#+-.!|<>~$:" else ch)
    return "".join(out)


# ------------------------------------------------------------------------------------------------------------ residues
def activation_color(a: float) -> str:
    """CSS background for a normalised activation ``a`` in [0, 1] (transparent at 0, full red at 1)."""
    if is_missing(a) or a <= 0:
        return "transparent"
    alpha = 0.12 + 0.88 * min(float(a), 1.0)
    return f"rgba({_HOT[0]},{_HOT[1]},{_HOT[2]},{alpha:.2f})"


def imgt_region(position: int | None) -> str | None:
    """The IMGT region (``FR1`` ... ``FR4``, ``CDR1`` ... ``CDR3``) of a position, None outside 1-128."""
    if position is None:
        return None
    for name, lo, hi in IMGT_REGIONS:
        if lo <= position <= hi:
            return name
    return None


@dataclass
class ResidueRow:
    """One sequence to draw: a label, its residues, their activations (0..1) and optional IMGT positions."""

    label: str
    tokens: list[str]
    activations: np.ndarray
    positions: list[int | None] | None = None
    note: str = ""
    """Shown after the label (for example the activation quantile)."""
    extra: dict[str, Any] = field(default_factory=dict)


_STYLE = (
    "<style>"
    ".wbx{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:13px;line-height:1.5}"
    ".wbx span.a{border-radius:2px}"
    ".wbx .al{display:grid;grid-template-columns:max-content max-content;column-gap:8px;overflow-x:auto;"
    "padding-bottom:6px;margin-bottom:4px}"
    ".wbx .al .l{font-family:sans-serif;font-size:12px;white-space:nowrap}"
    ".wbx .al .q{white-space:pre;letter-spacing:1px}"  # one font size on every line: the columns stay aligned
    ".wbx .al .n{color:#666}"
    ".wbx .al .c{font-weight:600;color:#333}"
    ".wbx .al .r{color:#888;border-bottom:1px solid #ccc}"
    ".wbx .al .g{color:#bbb}"
    ".wbx .w{color:#fff}"
    ".wbx .k{color:#888}"
    ".wbx .s{word-break:break-all}"
    "</style>"
)
"""CSS of the residue views (scoped to ``.wbx``; the ``<style>`` sits inside the block so HTML sanitisers keep it)."""


def _residue(token: str, a: float, tip: str | None) -> str:
    """A residue: plain text when the feature is silent there, else a coloured span with a tooltip."""
    if not a > 0:
        return html.escape(token)
    cls = "a w" if a > 0.6 else "a"
    title = f' title="{html.escape(tip)}"' if tip else ""
    return f'<span class="{cls}" style="background:{activation_color(a)}"{title}>{html.escape(token)}</span>'


def _label_html(row: ResidueRow) -> str:
    note = f' <span class="k">{html.escape(row.note)}</span>' if row.note else ""
    return f"<b>{html.escape(row.label)}</b>{note}"


def _residues_block(row: ResidueRow) -> str:
    acts = np.asarray(row.activations, dtype=np.float32)
    parts = []
    for i, tok in enumerate(row.tokens):
        a = float(acts[i]) if i < len(acts) else 0.0
        imgt = row.positions[i] if row.positions is not None and i < len(row.positions) else None
        tip = f"{tok} {i + 1}" + (f" · IMGT {imgt}" if imgt is not None else "") + f" · {a:.2f}"
        parts.append(_residue(tok, a, tip))
        if (i + 1) % 10 == 0:
            parts.append(" ")
    return f'<div style="margin:2px 0 6px 0">{_label_html(row)}<div class="s">{"".join(parts)}</div></div>'


def residues_html(row: ResidueRow) -> str:
    """One sequence as wrapped residues coloured by activation (a space every 10 residues; tooltips on firing
    residues give the residue, its 1-based position, IMGT position and activation). Self-contained HTML."""
    return f'<div class="wbx">{_STYLE}{_residues_block(row)}</div>'


def _column_keys(positions: list[int | None]) -> list[tuple[int, int]]:
    """Column key of every residue: ``(0, 0)`` before the first numbered residue, ``(1, pos)`` for numbered residues
    and unnumbered ones between them (they join the previous position, like insertions), ``(2, 0)`` after the last."""
    numbered = [i for i, p in enumerate(positions) if p is not None]
    first, last = (numbered[0], numbered[-1]) if numbered else (len(positions), -1)
    keys = []
    current = None
    for i, p in enumerate(positions):
        if i < first:
            keys.append((0, 0))
        elif i > last:
            keys.append((2, 0))
        else:
            if p is not None:
                current = p
            keys.append((1, int(current if current is not None else 0)))
    return keys


def _runs(columns: list[tuple[int, int]], region_of: dict[tuple[int, int], str | None]) -> list[list[tuple[int, int]]]:
    """Consecutive columns of one IMGT region (or of no region)."""
    runs: list[list[tuple[int, int]]] = []
    for k in columns:
        if runs and region_of[runs[-1][-1]] == region_of[k]:
            runs[-1].append(k)
        else:
            runs.append([k])
    return runs


def _blocks(columns: list[tuple[int, int]], region_of: dict[tuple[int, int], str | None],
            max_columns: int) -> list[list[tuple[int, int]]]:
    """Columns cut into blocks of at most ``max_columns``, at region boundaries where possible."""
    blocks: list[list[tuple[int, int]]] = [[]]
    for run in _runs(columns, region_of):
        while len(run) > max_columns:  # a region wider than a block is cut
            if blocks[-1]:
                blocks.append([])
            blocks[-1].extend(run[:max_columns])
            blocks.append([])
            run = run[max_columns:]
        if blocks[-1] and len(blocks[-1]) + len(run) > max_columns:
            blocks.append([])
        blocks[-1].extend(run)
    return [b for b in blocks if b]


def _number_line(columns: list[tuple[int, int]], width: dict[tuple[int, int], int],
                 region_of: dict[tuple[int, int], str | None]) -> str:
    """The IMGT numbers above a block's columns: the first column, every multiple of 10 and each region's first
    position, where there is room (a number never overwrites the previous one nor runs past the block)."""
    total = sum(width[k] for k in columns)
    chars: list[str] = []
    free = 0  # first character a new number may start at
    previous = None
    for k in columns:
        start = len(chars)
        chars += [" "] * width[k]
        if k[0] != 1:
            continue
        label = str(k[1])
        wanted = start == 0 or k[1] % 10 == 0 or region_of[k] != previous
        previous = region_of[k]
        if wanted and start >= free and start + len(label) <= total:
            chars[start:start + len(label)] = list(label)
            free = start + len(label) + 1
    return html.escape("".join(chars).rstrip())


def _aligned_table(rows: Sequence[ResidueRow], cells: list[dict[tuple[int, int], list[int]]],
                   columns: list[tuple[int, int]], region_of: dict[tuple[int, int], str | None]) -> str:
    """One block of aligned rows as monospace lines (a character per residue, ``-`` where a sequence has no residue
    at a position, ``.`` filling an insertion column other sequences use more of) under a region band and the IMGT
    numbers, with labels in a column of their own. Lines, not a table: a few elements per sequence, so the browser
    draws a switch of feature quickly (bench_app)."""
    width = {k: max(1, *(len(c.get(k, ())) for c in cells)) for k in columns}
    band = []
    for run in _runs(columns, region_of):
        name = region_of[run[0]] or ""
        span = sum(width[k] for k in run)
        short = "C" + name[3:] if name.startswith("CDR") and len(name) > span else name  # a light chain's CDR2: C2
        text = html.escape(short[:span].ljust(span))
        if name in CDR_COLOURS:
            lo, hi = next((a, b) for n, a, b in IMGT_REGIONS if n == name)
            band.append(f'<span class="c" style="background:{CDR_COLOURS[name]}" title="IMGT {name}: {lo}-{hi}">{text}</span>')
        else:
            band.append(f'<span class="r">{text}</span>')
    lines = ['<span class="l"></span>', f'<span class="q">{"".join(band)}</span>',
             '<span class="l k">IMGT</span>', f'<span class="q n">{_number_line(columns, width, region_of)}</span>']
    for row, by_key in zip(rows, cells):
        acts = np.asarray(row.activations, dtype=np.float32)
        parts = []
        for k in columns:
            idx = by_key.get(k) or []
            if not idx:
                parts.append('<span class="g">' + "-" * width[k] + "</span>")
                continue
            for i in idx:
                a = float(acts[i]) if i < len(acts) else 0.0
                pos = row.positions[i] if row.positions is not None else None
                where = f"IMGT {pos}" if pos is not None else f"IMGT {k[1]} (insertion)" if k[0] == 1 else "unnumbered"
                parts.append(_residue(row.tokens[i], a, f"{row.tokens[i]} {i + 1} · {where} · {a:.2f}"))
            parts.append("." * (width[k] - len(idx)))
        lines += [f'<span class="l">{_label_html(row)}</span>', f'<span class="q">{"".join(parts)}</span>']
    return f'<div class="al">{"".join(lines)}</div>'


def _aligned_html(rows: Sequence[ResidueRow], max_columns: int) -> str:
    """Rows aligned with a column per IMGT position (insertions share their position's column), in blocks of at most
    ``max_columns`` columns cut at region boundaries (each block repeats the row labels)."""
    cells: list[dict[tuple[int, int], list[int]]] = []
    for row in rows:
        keys = _column_keys(list(row.positions or [None] * len(row.tokens)))
        by_key: dict[tuple[int, int], list[int]] = {}
        for i, k in enumerate(keys):
            by_key.setdefault(k, []).append(i)
        cells.append(by_key)
    columns = sorted({k for c in cells for k in c})
    region_of = {k: (imgt_region(k[1]) if k[0] == 1 else None) for k in columns}
    return "".join(_aligned_table(rows, cells, block, region_of) for block in _blocks(columns, region_of, max_columns))


def examples_html(rows: Sequence[ResidueRow], *, align: bool = True, max_columns: int = 70) -> str:
    """Self-contained HTML (for ``st.html``) for example sequences coloured by activation: aligned on IMGT positions
    (a column per position with its IMGT number above, CDR1 27-38 / CDR2 56-65 / CDR3 105-117 marked; tables of at
    most ``max_columns`` positions, cut at region boundaries) when ``align``, else one wrapped line per sequence; rows
    without positions (unnumbered sequences) come as wrapped lines after the aligned ones. All text is escaped."""
    if not rows:
        return ""
    numbered = [r for r in rows if r.positions is not None] if align else []
    inner = _aligned_html(numbered, max(1, int(max_columns))) if numbered else ""
    inner += "".join(_residues_block(r) for r in rows if not numbered or r.positions is None)
    return f'<div class="wbx">{_STYLE}{inner}</div>'


def histogram_spec(edges: np.ndarray, counts: np.ndarray, *, x_title: str, y_title: str, colour: str,
                   height: int = 220) -> dict[str, Any]:
    """A Vega-Lite spec (for ``st.vega_lite_chart``) of a histogram already binned: a bar from ``edges[i]`` to
    ``edges[i + 1]`` of height ``counts[i]``, with tooltips. Written as a plain dict because building the same chart
    through Altair validates it against the Vega-Lite schema on every draw (15-40 ms, on each feature switch)."""
    values = [{"from": float(a), "to": float(b), "n": int(c)} for a, b, c in zip(edges[:-1], edges[1:], counts)]
    return {
        "data": {"values": values},
        "mark": {"type": "bar", "color": colour},
        "height": height,
        "encoding": {
            "x": {"field": "from", "type": "quantitative", "bin": "binned", "title": x_title,
                  "scale": {"domain": [float(edges[0]), float(edges[-1])]}},
            "x2": {"field": "to"},
            "y": {"field": "n", "type": "quantitative", "title": y_title},
            "tooltip": [{"field": "from", "type": "quantitative", "format": ".2f"},
                        {"field": "to", "type": "quantitative", "format": ".2f"},
                        {"field": "n", "type": "quantitative", "title": y_title}],
        },
    }


def metrics_html(items: Sequence[tuple[str, str, str]]) -> str:
    """A row of metrics as one HTML block (for ``st.html``): ``(label, value, help)`` each, the help as the tooltip,
    drawn like ``st.metric`` (small faded label over a large value, in the theme's text colour). One block instead of
    a column and a metric element per value: the feature browser redraws this row on every switch."""
    cells = "".join(f'<div title="{html.escape(help_)}"><div style="font-size:14px;opacity:0.6;'
                    f'white-space:nowrap;overflow:hidden;text-overflow:ellipsis">{html.escape(label)}</div>'
                    f'<div style="font-size:2rem;line-height:1.3;white-space:nowrap">{html.escape(value)}</div></div>'
                    for label, value, help_ in items)
    return (f'<div class="wb-metrics" style="display:grid;grid-template-columns:repeat({max(1, len(items))},'
            f'minmax(0,1fr));column-gap:16px">{cells}</div>')


def legend_html() -> str:
    """A small colour scale: activation as a fraction of the feature's maximum."""
    steps = "".join(f'<span style="background:{activation_color(a)};padding:0 6px">&nbsp;</span>'
                    for a in np.linspace(0.05, 1.0, 10))
    return (f'<div style="font-size:12px;color:#666">activation (fraction of the feature\'s max): 0 {steps} 1'
            "</div>")


# ------------------------------------------------------------------------------------------------------------ cached data
def obs_matrix(cat: Catalog, key: str = "X") -> Any:
    """An ``obs x var`` matrix of the catalog (``X``, or ``layers/mean``) as CSC, or a dense float32 array when it is
    stored dense; read once per server process."""
    import streamlit as st

    @st.cache_resource(show_spinner="Reading per-sequence activations ...", max_entries=8)
    def _load(path: str, key: str, _cat: Any) -> Any:
        import h5py
        import scipy.sparse as sp

        with h5py.File(path, "r") as h5:
            node = h5[key]
            if not isinstance(node, h5py.Group):
                return np.asarray(node, dtype=np.float32)
            enc = str(node.attrs.get("encoding-type", ""))
            shape = tuple(int(s) for s in node.attrs["shape"])
            parts = (np.asarray(node["data"]), np.asarray(node["indices"]), np.asarray(node["indptr"]))
        if enc == "csc_matrix":
            return sp.csc_matrix(parts, shape=shape)
        return sp.csr_matrix(parts, shape=shape).tocsc()

    return _load(str(cat.path), key, cat)


def _x_csc(cat: Catalog) -> scipy.sparse.csc_matrix | None:
    """The catalog's ``X`` (sequences x features, per-sequence max) as CSC (None when stored dense)."""
    m = obs_matrix(cat, "X")
    return None if isinstance(m, np.ndarray) else m


def feature_maxima(cat: Catalog, fid: str) -> np.ndarray:
    """The feature's normalised max activation in every sequence where it fires (``X`` column, zeros dropped)."""
    import streamlit as st

    @st.cache_data(show_spinner=False, max_entries=512)
    def _column(path: str, fid: str, _cat: Any) -> np.ndarray:
        j = int(_cat.features.index.get_loc(_cat.feature_id(fid)))
        m = _x_csc(_cat)
        if m is None:
            import h5py

            with h5py.File(path, "r") as h5:
                col = np.asarray(h5["X"][:, j], dtype=np.float32)
            return col[col > 0]
        a, b = m.indptr[j], m.indptr[j + 1]
        col = np.asarray(m.data[a:b], dtype=np.float32)
        return col[col > 0]

    return _column(str(cat.path), str(fid), cat)


def cached_feature(cat: Catalog, fid: str, *, n_concepts: int = 25) -> dict[str, Any]:
    """:meth:`Catalog.feature` (row, ``concepts`` pairs by test F1, ``examples``), cached per catalog and feature."""
    import streamlit as st

    @st.cache_data(show_spinner=False, max_entries=256)
    def _feature(path: str, fid: str, n_concepts: int, _cat: Any) -> dict[str, Any]:
        return _cat.feature(fid, n_concepts=n_concepts)

    return _feature(str(cat.path), str(fid), n_concepts, cat)


def cached_neighbors(cat: Catalog, fid: str, *, k: int = 10) -> pd.DataFrame:
    """:meth:`Catalog.neighbors` (nearest decoder directions), cached per catalog, feature and ``k``."""
    import streamlit as st

    @st.cache_data(show_spinner=False, max_entries=512)
    def _neighbors(path: str, fid: str, k: int, _cat: Any) -> Any:
        return _cat.neighbors(fid, k)

    return _neighbors(str(cat.path), str(fid), k, cat)


def cached_search(cat: Catalog, query: str, *, limit: int = 50) -> pd.DataFrame:
    """:meth:`Catalog.search` (id, concept substring, description words), cached per catalog and query."""
    import streamlit as st

    @st.cache_data(show_spinner=False, max_entries=256)
    def _search(path: str, query: str, limit: int, _cat: Any) -> Any:
        return _cat.search(query, limit=limit)

    return _search(str(cat.path), query.strip(), limit, cat)


def feature_labels(cat: Catalog) -> dict[str, str]:
    """``{feature id: "f00042 · top concept"}`` for selectboxes (built once per catalog, shared, do not modify)."""
    import streamlit as st

    @st.cache_resource(show_spinner=False, max_entries=4)
    def _labels(path: str, _cat: Any) -> dict[str, str]:
        var = _cat.features
        ids = [str(i) for i in var.index]
        top = var["top_concept"].astype(object).to_numpy() if "top_concept" in var else [None] * len(ids)
        dead = (var["density"].to_numpy() <= 0) if "density" in var else np.zeros(len(ids), dtype=bool)
        out = {}
        for fid, c, d in zip(ids, top, dead):
            out[fid] = f"{fid} · dead" if d else (f"{fid} · {c}" if not is_missing(c) else f"{fid} · unexplained")
        return out

    return _labels(str(cat.path), cat)


def example_rows(cat: Catalog, fid: str, *, use_imgt: bool = True) -> list[ResidueRow]:
    """The feature's examples (:meth:`Catalog.examples`) as :class:`ResidueRow` s, with IMGT positions from
    ``obs["imgt"]`` when the catalog has that column and ``use_imgt``. ``row.extra`` holds ``kind``,
    ``sequence_id`` and ``max`` (the sequence's max activation)."""
    sep = str(cat.provenance.get("sequence_separator") or "")
    examples = cached_feature(cat, fid)["examples"]
    obs = cat.sequences
    has_imgt = use_imgt and "imgt" in obs.columns
    rows = []
    for ex in examples:
        tokens = tokens_of(ex.sequence, sep)
        positions = parse_positions(obs.at[ex.sequence_id, "imgt"], len(tokens)) if has_imgt else None
        top = float(np.max(ex.activations)) if len(ex.activations) else 0.0
        note = f"max {top:.2f}" if ex.kind == "top" else f"{ex.kind} · max {top:.2f}"
        rows.append(ResidueRow(label=str(ex.sequence_id), tokens=tokens, activations=np.asarray(ex.activations),
                               positions=positions, note=note,
                               extra={"kind": str(ex.kind), "sequence_id": str(ex.sequence_id), "max": top}))
    return rows


# ------------------------------------------------------------------------------------------------------------ navigation
def resolve_feature(cat: Catalog, value: Any) -> str | None:
    """The catalog's id for ``value`` (an id such as ``f00042``, a number, ``"42"``), None when it names no feature."""
    from workbench.errors import WorkbenchError

    if is_missing(value) or str(value).strip() == "":
        return None
    try:
        return cat.feature_id(value if isinstance(value, (int, np.integer)) else str(value).strip())
    except (WorkbenchError, ValueError, TypeError, IndexError):
        return None


def open_feature(fid: str) -> None:
    """Select ``fid`` and go to the feature browser (``?feature=fid``); when the page runs outside the app's
    navigation (a page script run on its own) it stays put and says where to look. Call it from the script body
    (``if st.button(...): open_feature(fid)``), not from a widget callback."""
    import streamlit as st
    from streamlit.errors import StreamlitAPIException

    from apps.workbench_app._state import select_feature

    select_feature(fid)
    try:
        st.switch_page(FEATURES_PAGE, query_params={"feature": fid})
    except StreamlitAPIException:
        st.info(f"Selected {fid}: open the Feature browser page to see it.")


def asked_feature(cat: Catalog) -> str | None:
    """The feature other pages selected (``st.session_state["feature"]``) as a catalog id; warns in the page and
    returns None when it names no feature."""
    import streamlit as st

    asked = st.session_state.get("feature")
    fid = resolve_feature(cat, asked)
    if fid is None and not is_missing(asked) and str(asked).strip():
        st.warning(f"No feature {str(asked)!r} in this catalog; showing another feature instead.")
    return fid


def csv_download(frame: pd.DataFrame, *, name: str, key: str) -> None:
    """Download buttons for ``frame`` (the rows shown, as they are), side by side: ``<name>.csv`` (key
    ``<key>_csv``) and ``<name>.parquet`` (key ``<key>_parquet``), both written only when clicked. Downloading does
    not rerun the page."""
    import streamlit as st

    snapshot = frame.copy()  # the rows as shown now, for the files written when a button is clicked
    with st.container(horizontal=True, gap="small"):
        st.download_button(f"Download {len(frame):,} rows (CSV)", _csv_bytes(snapshot),
                           file_name=f"{name}.csv", mime="text/csv", key=f"{key}_csv", icon=":material/download:",
                           on_click="ignore")
        st.download_button("Parquet", _parquet_bytes(snapshot), file_name=f"{name}.parquet",
                           mime="application/vnd.apache.parquet", key=f"{key}_parquet", icon=":material/download:",
                           on_click="ignore", help="The same rows as a Parquet file (column types kept)")


table_downloads = csv_download
"""CSV and Parquet downloads of a table (:func:`csv_download`); every table of the app has them."""


def _csv_bytes(frame: pd.DataFrame) -> Any:
    """A callable writing ``frame`` as UTF-8 CSV bytes (Streamlit calls it when the button is clicked, so a page that
    shows six tables does not write six CSV files on every rerun); ``frame`` must not change afterwards."""

    def make() -> bytes:
        return frame.to_csv(index=False).encode("utf-8")

    return make


def _parquet_bytes(frame: pd.DataFrame) -> Any:
    """A callable writing ``frame`` as Parquet bytes (Streamlit calls it when the button is clicked); columns of
    mixed objects are written as text; ``frame`` must not change afterwards."""

    def make() -> bytes:
        import io

        out = frame.copy()
        for col in out.columns:
            if out[col].dtype == object:
                out[col] = [None if is_missing(v) else str(v) for v in out[col]]
        out.columns = [str(c) for c in out.columns]
        buf = io.BytesIO()
        out.to_parquet(buf, index=False)
        return buf.getvalue()

    return make


def distinct_palette(n: int) -> list[str]:
    """``n`` distinct colours for categories, none repeated: Tableau 10, then Kelly's colours of maximum contrast,
    then hues spread by the golden angle at alternating lightness (grey is left out; it marks "none")."""
    import colorsys

    base = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
            "#f3c300", "#875692", "#f38400", "#a1caf1", "#be0032", "#c2b280", "#008856", "#e68fac", "#0067a5",
            "#f99379", "#604e97", "#f6a600", "#b3446c", "#dcd300", "#882d17", "#8db600", "#654522", "#e25822",
            "#2b3d26"]
    out = list(dict.fromkeys(base))[: max(0, n)]
    i = 0
    while len(out) < n:
        hue = (i * 0.618033988749895) % 1.0
        light = (0.35, 0.55, 0.7)[i % 3]
        sat = (0.75, 0.6)[(i // 3) % 2]
        r, g, b = colorsys.hls_to_rgb(hue, light, sat)
        colour = f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"
        if colour not in out:
            out.append(colour)
        i += 1
    return out
