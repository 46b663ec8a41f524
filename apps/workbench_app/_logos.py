"""Sequence logos of the windows where features fire most strongly (logomaker).

A feature's *top windows* are its top examples (:meth:`Catalog.examples`, ``kind == "top"``), each cut to
``half`` residues on either side of its strongest residue. On catalogs that number their sequences (``obs["imgt"]``)
every residue goes to the column of its IMGT position (insertions, which share their position's number, get columns
``111.1``, ``111.2`` ... after it); otherwise columns are offsets from the strongest residue (``-5`` ... ``+5``).
Each residue of a window counts once (the logo shows the sequence context the feature fires in); the logo is drawn
in bits (information content of each column's frequencies).

:func:`window_counts` is pure (no Streamlit); :func:`logo_svg` draws a counts table as an SVG document (letter
outlines from matplotlib's font machinery, made once); :func:`cached_logo` caches both per catalog and feature set.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench._catalog_encode import parse_positions
from workbench._catalog_views import tokens_of

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["HALF", "AMINO_ACIDS", "window_counts", "logo_svg", "peak_label", "cached_logo"]

HALF = 5
"""Residues kept on each side of the strongest one."""
AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"


def _column_labels(positions: list[int | None]) -> list[tuple[int, int] | None]:
    """``(imgt, k)`` of every residue: ``k`` counts earlier residues of the sequence with the same IMGT number
    (0 for the position itself, 1, 2 ... for its insertions); None for unnumbered residues."""
    seen: dict[int, int] = {}
    out: list[tuple[int, int] | None] = []
    for p in positions:
        if p is None:
            out.append(None)
            continue
        k = seen.get(p, 0)
        seen[p] = k + 1
        out.append((p, k))
    return out


def window_counts(cat: Any, features: Sequence[str], *, half: int = HALF, examples: dict[str, list[Any]] | None = None,
                  use_imgt: bool = True) -> tuple[pd.DataFrame, str] | None:
    """Residue counts of the top windows of ``features`` (pooled): a DataFrame with one row per
    column (index: IMGT labels ``"27"``, ``"111.1"``, or offsets ``"-5"`` ... ``"+5"``) and one column per amino
    acid, and the kind of columns (``"imgt"`` or ``"offset"``). None when no top example exists.

    ``examples`` maps a feature id to its examples (as :meth:`Catalog.examples` returns them) when they are at hand."""
    import pandas as pd

    obs = cat.sequences
    sep = str(cat.provenance.get("sequence_separator") or "")
    numbered = use_imgt and "imgt" in obs.columns
    counts: dict[Any, dict[str, float]] = {}
    kind = "imgt" if numbered else "offset"
    for fid in features:
        exs = examples.get(fid) if examples is not None and fid in examples else cat.examples(fid)
        for ex in exs:
            if ex.kind != "top" or not len(ex.activations):
                continue
            tokens = tokens_of(ex.sequence, sep)
            acts = np.asarray(ex.activations, dtype=np.float64)
            peak = int(np.argmax(acts))
            lo, hi = max(0, peak - half), min(len(tokens), peak + half + 1)
            labels: list[Any]
            if numbered:
                positions = parse_positions(obs.at[ex.sequence_id, "imgt"], len(tokens))
                if positions is None:
                    continue
                labels = _column_labels(positions)
            else:
                labels = [i - peak for i in range(len(tokens))]
            for i in range(lo, hi):
                key, aa = labels[i], tokens[i].upper()
                if key is None or aa not in AMINO_ACIDS:
                    continue
                col = counts.setdefault(key, {})
                col[aa] = col.get(aa, 0.0) + 1.0
    if not counts:
        return None
    keys = sorted(counts)
    if kind == "imgt":
        index = [f"{p}" if k == 0 else f"{p}.{k}" for p, k in keys]
    else:
        index = [f"{k:+d}" if k else "0" for k in keys]
    frame = pd.DataFrame([[counts[k].get(a, 0.0) for a in AMINO_ACIDS] for k in keys], index=index,
                         columns=list(AMINO_ACIDS))
    return frame, kind


# Layout of :func:`logo_svg`, in pixels.
_COLUMN = 32  # width of one logo column
_PLOT_HEIGHT = 128
_LEFT, _RIGHT, _BELOW, _ABOVE, _TITLE = 46, 8, 40, 8, 16


def logo_svg(counts: pd.DataFrame, *, title: str = "", highlight: str | None = None) -> str:
    """SVG of a logo (bits) of ``counts`` (rows: columns of the logo, labelled below; columns: amino acids);
    ``highlight`` names a row drawn on a light background (the most common peak).

    The heights are logomaker's information transform of the counts and the colours its ``chemistry`` scheme; each
    letter is the outline of a bold DejaVu Sans Mono glyph stretched into its box the way ``logomaker.Glyph`` does it
    (narrow letters not stretched wider than an ``E``), small letters at the bottom. The SVG is written directly: one
    ``<path>`` per letter with a non-zero height, sharing the outline made once per letter. Drawing the same logo
    through matplotlib and encoding a PNG took 65-145 ms per feature on the app's 2-core machine, a third of a feature
    switch's page script; this takes about 6 ms (most of it the information transform), and the logo stays sharp at
    any zoom."""
    import html

    import logomaker
    from logomaker.src.colors import get_color_dict

    labels = [str(i) for i in counts.index]
    matrix = counts.reset_index(drop=True).astype(float)
    info = logomaker.transform_matrix(matrix, from_type="counts", to_type="information", pseudocount=0).fillna(0.0)
    colours = get_color_dict("chemistry", list(info.columns))
    heights = info.to_numpy(dtype=np.float64)
    top = float(np.clip(heights, 0.0, None).sum(axis=1).max()) if len(heights) else 0.0
    y_max = max(1.0, top * 1.05)
    above = _ABOVE + (_TITLE if title else 0)
    width = max(350, _LEFT + _COLUMN * len(labels) + _RIGHT)
    height = above + _PLOT_HEIGHT + _BELOW
    bottom = above + _PLOT_HEIGHT

    def y_px(bits: float) -> float:
        return bottom - _PLOT_HEIGHT * bits / y_max

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           'font-family="DejaVu Sans, Arial, sans-serif" role="img">']
    if title:
        out.append(f'<text x="{_LEFT}" y="{_ABOVE + 8}" font-size="11">{html.escape(title)}</text>')
    if highlight is not None and highlight in labels:
        x = _LEFT + _COLUMN * labels.index(highlight)
        out.append(f'<rect class="peak" x="{x}" y="{above}" width="{_COLUMN}" height="{_PLOT_HEIGHT}" fill="#fde2e2"/>')
    box = 0.95  # of a column, as logomaker's default glyph width
    for p, row in enumerate(heights):
        floor = 0.0
        centre = _LEFT + _COLUMN * (p + 0.5)
        for k in np.argsort(row, kind="stable"):  # small letters at the bottom, big on top
            h = float(row[k])
            if h <= 1e-6:
                continue
            c = str(info.columns[k])
            d, ratio = _outline(c)
            pad = 0.05 * h
            w_px = _COLUMN * box * min(1.0, ratio)
            h_px = _PLOT_HEIGHT * (h - pad) / y_max
            y0 = y_px(floor + pad / 2.0)
            out.append(f'<path class="glyph" data-letter="{c}" data-bits="{h:.4f}" fill="{_hex(colours[c])}" '
                       f'transform="matrix({w_px:.3f} 0 0 {-h_px:.3f} {centre - w_px / 2:.3f} {y0:.3f})" d="{d}"/>')
            floor += h
    axis = '#444'
    out.append(f'<line x1="{_LEFT}" y1="{above}" x2="{_LEFT}" y2="{bottom}" stroke="{axis}" stroke-width="0.8"/>')
    out.append(f'<line x1="{_LEFT}" y1="{bottom}" x2="{_LEFT + _COLUMN * len(labels)}" y2="{bottom}" stroke="{axis}" '
               'stroke-width="0.8"/>')
    for t in range(0, int(y_max) + 1):
        y = y_px(t)
        out.append(f'<line x1="{_LEFT - 4}" y1="{y:.1f}" x2="{_LEFT}" y2="{y:.1f}" stroke="{axis}" stroke-width="0.8"/>'
                   f'<text x="{_LEFT - 6}" y="{y + 3.5:.1f}" font-size="9" text-anchor="end">{t}</text>')
    mid = (above + bottom) / 2
    out.append(f'<text transform="translate(12 {mid:.1f}) rotate(-90)" font-size="10" text-anchor="middle">bits</text>')
    for p, label in enumerate(labels):
        x = _LEFT + _COLUMN * (p + 0.5)
        out.append(f'<text class="column" transform="translate({x + 3:.1f} {bottom + 4}) rotate(-90)" font-size="9" '
                   f'text-anchor="end">{html.escape(label)}</text>')
    out.append("</svg>")
    return "".join(out)


def _hex(colour: Any) -> str:
    """``#rrggbb`` of a matplotlib colour (logomaker's schemes give RGB arrays)."""
    from matplotlib.colors import to_hex

    return to_hex(colour)


_OUTLINES: dict[str, tuple[str, float]] = {}


def _outline(c: str) -> tuple[str, float]:
    """SVG path data of letter ``c`` (bold DejaVu Sans Mono, from matplotlib's ``TextPath``) scaled to the unit square
    (its bounding box to 0..1 both ways, y up), and its width relative to an ``E`` (no letter is stretched wider than
    that); made once per process."""
    if c not in _OUTLINES:
        from matplotlib.font_manager import FontProperties
        from matplotlib.path import Path
        from matplotlib.textpath import TextPath

        prop = FontProperties(family="DejaVu Sans Mono", weight="bold")
        path = TextPath((0, 0), c, size=1, prop=prop)
        ext = path.get_extents()
        ref = TextPath((0, 0), "E", size=1, prop=prop).get_extents()
        x0, y0, w, h = ext.x0, ext.y0, ext.width, ext.height
        ops = {Path.MOVETO: "M", Path.LINETO: "L", Path.CURVE3: "Q", Path.CURVE4: "C"}
        parts = []
        for verts, code in path.iter_segments(simplify=False, curves=True):
            if code == Path.CLOSEPOLY:
                parts.append("Z")
                continue
            xy = np.asarray(verts, dtype=np.float64).reshape(-1, 2)
            coords = " ".join(f"{(x - x0) / w:.4f} {(y - y0) / h:.4f}" for x, y in xy)
            parts.append(f"{ops[code]}{coords}")
        _OUTLINES[c] = ("".join(parts), w / ref.width)
    return _OUTLINES[c]


def peak_label(cat: Any, features: Sequence[str], kind: str,
               examples: dict[str, list[Any]] | None = None) -> str | None:
    """The column label where the top examples of ``features`` peak most often (None without examples)."""
    from collections import Counter

    obs = cat.sequences
    sep = str(cat.provenance.get("sequence_separator") or "")
    found: Counter[str] = Counter()
    for fid in features:
        exs = examples.get(fid) if examples is not None and fid in examples else cat.examples(fid)
        for ex in exs:
            if ex.kind != "top" or not len(ex.activations):
                continue
            peak = int(np.argmax(ex.activations))
            if kind != "imgt":
                found["0"] += 1
                continue
            tokens = tokens_of(ex.sequence, sep)
            positions = parse_positions(obs.at[ex.sequence_id, "imgt"], len(tokens))
            if positions is None:
                continue
            label = _column_labels(positions)[peak]
            if label is not None:
                found[f"{label[0]}" if label[1] == 0 else f"{label[0]}.{label[1]}"] += 1
    return found.most_common(1)[0][0] if found else None


def cached_logo(cat: Any, features: Sequence[str], *, title: str = "") -> tuple[str, str, int] | None:
    """``(svg, kind, n_windows)`` of the pooled top windows of ``features``, cached per catalog, features and title
    (``st.cache_data``); None when they have no top example."""
    import streamlit as st

    @st.cache_data(show_spinner=False, max_entries=256)
    def _logo(path: str, features: tuple[str, ...], title: str, _cat: Any) -> tuple[str, str, int] | None:
        examples = {f: _cat.examples(f) for f in features}
        made = window_counts(_cat, features, examples=examples)
        if made is None:
            return None
        counts, kind = made
        n = sum(1 for f in features for ex in examples[f] if ex.kind == "top")
        highlight = peak_label(_cat, features, kind, examples)
        return logo_svg(counts, title=title, highlight=highlight), kind, n

    return _logo(str(cat.path), tuple(str(f) for f in features), title, cat)


def show_logo(cat: Any, features: Sequence[str], *, lead: str, empty: str) -> None:
    """Draw the logo of ``features``' top windows with its caption (``lead``: how it starts, ``{n}`` the number of
    windows, e.g. ``"Top {n} windows of f00012"``), or ``empty`` as a note when they have no top example."""
    import streamlit as st

    made = cached_logo(cat, features)
    if made is None:
        st.info(empty)
        return
    svg, kind, n = made
    where = "IMGT positions (insertions as .1, .2)" if kind == "imgt" else "offsets from the strongest residue"
    st.image(svg, caption=f"{lead.format(n=n)} ({HALF} residues either side of the strongest one), by {where}; "
                          "letter height in bits, the most common peak shaded.")
