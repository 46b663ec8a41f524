"""Sequence logos of the windows where features fire most strongly (logomaker).

A feature's *top windows* are its top examples (:meth:`Catalog.examples`, ``kind == "top"``), each cut to
``half`` residues on either side of its strongest residue. On catalogs that number their sequences (``obs["imgt"]``)
every residue goes to the column of its IMGT position (insertions, which share their position's number, get columns
``111.1``, ``111.2`` ... after it); otherwise columns are offsets from the strongest residue (``-5`` ... ``+5``).
Each residue of a window counts once (the logo shows the sequence context the feature fires in); the logo is drawn
in bits (information content of each column's frequencies).

:func:`window_counts` is pure (no Streamlit); :func:`logo_png` draws a counts table into PNG bytes (matplotlib's
Agg backend, the figure closed afterwards); :func:`cached_logo` caches both per catalog and feature set.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench._catalog_encode import parse_positions
from workbench._catalog_views import tokens_of

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["HALF", "AMINO_ACIDS", "window_counts", "logo_png", "peak_label", "cached_logo"]

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


def logo_png(counts: pd.DataFrame, *, title: str = "", highlight: str | None = None) -> bytes:
    """PNG of a logo (bits) of ``counts`` (rows: columns of the logo, labelled below; columns: amino acids);
    ``highlight`` names a row drawn on a light background (the most common peak).

    The heights are logomaker's information transform of the counts and the colours its ``chemistry`` scheme; the
    letters are drawn the way ``logomaker.Glyph`` draws them (each letter's outline stretched into its box, narrow
    letters not stretched wider than an ``E``), from outlines made once per letter and added without re-computing
    the axes limits: ``logomaker.Logo`` makes a glyph for every letter of every column, zero or not (220 for an
    11-residue window), at several milliseconds each, which made a feature's first view seconds slower."""
    import io

    import logomaker
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from logomaker.src.colors import get_color_dict
    from matplotlib.patches import PathPatch
    from matplotlib.transforms import Affine2D

    labels = [str(i) for i in counts.index]
    matrix = counts.reset_index(drop=True).astype(float)
    info = logomaker.transform_matrix(matrix, from_type="counts", to_type="information", pseudocount=0)
    info = info.fillna(0.0)
    colours = get_color_dict("chemistry", list(info.columns))
    width = max(3.5, 0.32 * len(labels) + 0.8)
    fig, ax = plt.subplots(figsize=(width, 1.9))
    try:
        top = 0.0
        if highlight is not None and highlight in labels:
            i = labels.index(highlight)
            ax.axvspan(i - 0.5, i + 0.5, color="#fde2e2", zorder=0, lw=0)
        for p, row in enumerate(info.to_numpy()):
            floor = 0.0
            for k in np.argsort(row, kind="stable"):  # small letters at the bottom, big on top
                h = float(row[k])
                if h <= 1e-6:
                    continue
                c = str(info.columns[k])
                path, (x0, y0, w, hh), max_w = _outline(c)
                box_w, pad = 0.95, 0.05 * h
                sx = min(box_w / w, box_w / max_w)
                shift = (box_w - sx * w) / 2.0
                placed = Affine2D().translate(-x0, -y0).scale(sx, (h - pad) / hh).translate(
                    p - box_w / 2.0 + shift, floor + pad / 2.0).transform_path(path)
                ax.add_artist(PathPatch(placed, facecolor=colours[c], edgecolor="none", zorder=3))
                floor += h
            top = max(top, floor)
        ax.set_xlim(-0.5, len(labels) - 0.5)
        ax.set_ylim(0, max(1.0, top * 1.05))
        ax.set_xticks([])  # column labels as plain texts: matplotlib's tick objects cost ~3 ms each
        below = ax.get_xaxis_transform()
        for p, label in enumerate(labels):
            ax.text(p, -0.03, label, transform=below, rotation=90, ha="center", va="top", fontsize=7)
        ax.set_yticks([t for t in range(0, 5) if t <= max(1.0, top * 1.05)])
        ax.set_ylabel("bits", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        if title:
            ax.set_title(title, fontsize=8, loc="left")
        fig.subplots_adjust(left=0.8 / width, right=0.98, bottom=0.22, top=0.86 if title else 0.95)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        return buf.getvalue()
    finally:
        plt.close(fig)


_OUTLINES: dict[str, tuple[Any, tuple[float, float, float, float], float]] = {}


def _outline(c: str) -> tuple[Any, tuple[float, float, float, float], float]:
    """The outline of letter ``c`` (bold DejaVu Sans Mono, size 1), its bounds ``(x0, y0, width, height)`` and the
    width of an ``E`` (no letter is stretched wider than that), made once per process."""
    if c not in _OUTLINES:
        from matplotlib.font_manager import FontProperties
        from matplotlib.textpath import TextPath

        prop = FontProperties(family="DejaVu Sans Mono", weight="bold")
        path = TextPath((0, 0), c, size=1, prop=prop)
        box = path.get_extents()
        ref = TextPath((0, 0), "E", size=1, prop=prop).get_extents()
        _OUTLINES[c] = (path, (box.x0, box.y0, box.width, box.height), ref.width)
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


def cached_logo(cat: Any, features: Sequence[str], *, title: str = "") -> tuple[bytes, str, int] | None:
    """``(png, kind, n_windows)`` of the pooled top windows of ``features``, cached per catalog, features and title
    (``st.cache_data``); None when they have no top example."""
    import streamlit as st

    @st.cache_data(show_spinner=False, max_entries=256)
    def _logo(path: str, features: tuple[str, ...], title: str, _cat: Any) -> tuple[bytes, str, int] | None:
        examples = {f: _cat.examples(f) for f in features}
        made = window_counts(_cat, features, examples=examples)
        if made is None:
            return None
        counts, kind = made
        n = sum(1 for f in features for ex in examples[f] if ex.kind == "top")
        highlight = peak_label(_cat, features, kind, examples)
        return logo_png(counts, title=title, highlight=highlight), kind, n

    return _logo(str(cat.path), tuple(str(f) for f in features), title, cat)


def show_logo(cat: Any, features: Sequence[str], *, lead: str, empty: str) -> None:
    """Draw the logo of ``features``' top windows with its caption (``lead``: how it starts, ``{n}`` the number of
    windows, e.g. ``"Top {n} windows of f00012"``), or ``empty`` as a note when they have no top example."""
    import streamlit as st

    made = cached_logo(cat, features)
    if made is None:
        st.info(empty)
        return
    png, kind, n = made
    where = "IMGT positions (insertions as .1, .2)" if kind == "imgt" else "offsets from the strongest residue"
    st.image(png, caption=f"{lead.format(n=n)} ({HALF} residues either side of the strongest one), by {where}; "
                          "letter height in bits, the most common peak shaded.")
