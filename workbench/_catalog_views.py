"""Short readable views of a catalog's features and examples: reprs for notebooks and tidy example tables.

:class:`FeatureInfo` (what :meth:`workbench.catalog.Catalog.feature` returns: a dict with a short ``repr`` and an
HTML view), the one-line ``repr`` of :class:`workbench.catalog.Example`, and :func:`examples_frame` behind
:meth:`Catalog.examples_frame`. Nothing here is public API except through those.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from workbench.catalog import Catalog, Example

__all__ = ["FeatureInfo"]

WINDOW = 5
"""Residues shown on each side of an example's strongest residue."""


def tokens_of(sequence: str, separator: str = "") -> list[str]:
    """The residues (tokens) of an ``obs["sequence"]`` string (``separator`` = ``provenance["sequence_separator"]``)."""
    return sequence.split(separator) if separator else list(sequence)


def peak_window(tokens: list[str], activations: np.ndarray, *, width: int = WINDOW,
                separator: str = "") -> tuple[int, str]:
    """``(index, text)`` of the strongest token (first on ties; -1 when there is none) and the ``width`` tokens on each
    side, the strongest in brackets: ``"GYTFT[N]YWMQW"`` (``…`` where the sequence goes on)."""
    acts = np.asarray(activations)
    if not len(acts):
        return -1, ""
    p = int(np.argmax(acts))
    if not tokens or p >= len(tokens):
        return p, ""
    lo, hi = max(0, p - width), min(len(tokens), p + width + 1)
    text = (("…" if lo > 0 else "") + separator.join(tokens[lo:p]) + f"[{tokens[p]}]"
            + separator.join(tokens[p + 1 : hi]) + ("…" if hi < len(tokens) else ""))
    return p, text


def example_repr(ex: Example) -> str:
    """One line: id, kind, length and the strongest residue with its neighbours."""
    acts = np.asarray(ex.activations)
    p, window = peak_window(list(ex.sequence), acts)
    peak = f", max {float(acts[p]):.2f} at {p + 1}" if p >= 0 else ""
    shown = f" {window}" if window else ""
    return f"Example({ex.sequence_id!r}, {ex.kind}, {len(acts)} positions{peak}{shown})"


def _fmt(value: Any, spec: str = ".3g") -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return format(float(value), spec) if isinstance(value, (float, np.floating)) else str(int(value))
    return str(value)


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


class FeatureInfo(dict):  # type: ignore[type-arg]
    """Everything about one feature (:meth:`Catalog.feature`): a plain dict (``info["examples"]``,
    ``info["concepts"]``, the ``var`` columns...) whose ``repr`` is a few lines and whose HTML view is a small
    table in notebooks. ``units`` is the catalog's :attr:`~workbench.catalog.Catalog.units` (the repr speaks of
    images and positions for image catalogs), ``grid`` the layer's ``(h, w)`` for image catalogs (None for sequences)."""

    units: Any = None
    grid: tuple[int, int] | None = None

    def _lines(self) -> list[tuple[str, str]]:
        examples = self.get("examples") or []
        concepts = self.get("concepts")
        n_top = sum(1 for ex in examples if ex.kind == "top")
        units, tokens = (self.units.items, self.units.tokens) if self.units is not None else ("sequences", "residues")
        lines = [
            ("feature", f"{self.get('feature')} (#{self.get('index')}, family {_fmt(self.get('family'))})"),
            ("fires", f"in {_fmt(self.get('n_sequences'))} {units}, on {_fmt(self.get('density'))} of {tokens}, "
                      f"max activation {_fmt(self.get('max_activation'))}"),
            ("top concept", f"{_fmt(self.get('top_concept'))} (F1 {_fmt(self.get('top_f1'), '.2f')}, "
                            f"q {_fmt(self.get('top_q'), '.2g')})"),
            ("description", _clip(_fmt(self.get("description")), 100)),
        ]
        if concepts is not None and len(concepts):
            best = ", ".join(f"{c} {_fmt(f, '.2f')}" for c, f in zip(concepts["concept"].astype(str).head(3),
                                                                      concepts["test_f1"].head(3)))
            lines.append(("concepts", _clip(f"{len(concepts)} by test F1: {best}", 100)))
        first = ""
        if examples and self.grid:
            p = int(np.argmax(examples[0].activations))
            first = f"; first {examples[0].sequence_id}, peak at row {p // self.grid[1]}, col {p % self.grid[1]}"
        elif examples:
            window = peak_window(list(examples[0].sequence), examples[0].activations)[1]
            first = f"; first {examples[0].sequence_id} {window}"
        lines.append(("examples", _clip(f"{len(examples)} ({n_top} top){first}", 100)))
        return lines

    def __repr__(self) -> str:
        rows = self._lines()
        head = f"<FeatureInfo {rows[0][1]}>"
        body = [f"  {k}: {v}" for k, v in rows[1:]]
        keys = f"  {len(self)} keys: feature, index, the feature table's columns, umap, concepts, examples"
        return "\n".join([head, *body, keys])

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th><td style='text-align:left'>"
                       f"{html.escape(v)}</td></tr>" for k, v in self._lines())
        return f"<table>{rows}</table>"


def examples_frame(cat: Catalog, feature: str | int | None = None) -> pd.DataFrame:
    """What :meth:`Catalog.examples_frame` returns (see there)."""
    import pandas as pd

    table = cat._example_table()
    if feature is not None:
        j = cat._index(feature)
        a, b = cat._example_range(j)
        table = table.iloc[a:b]
    grid = cat.image_info["grid"] if cat.image_info is not None else None
    columns = ["feature", "kind", "rank", "sequence_id", "activation", "length", "peak",
               *(["row", "col"] if grid is not None else ["residue", "window"])]
    if not len(table):
        return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
    offsets = table["offset"].to_numpy(dtype=np.int64)
    lengths = table["length"].to_numpy(dtype=np.int64)
    lo, hi = int(offsets.min()), int((offsets + lengths).max())
    block = cat._example_activations(lo, hi)
    if grid is not None:
        return _image_examples(table, block, lo, int(grid[1]), columns)
    sep = str(cat.provenance.get("sequence_separator") or "")
    ids = table["sequence_id"].astype(str).to_numpy()
    obs = cat.sequences
    sequences = obs["sequence"].astype(str).reindex(ids).fillna("").to_numpy()
    position_col = "imgt" if "imgt" in obs.columns else None
    numbering = obs[position_col].reindex(ids).to_numpy() if position_col else None
    peaks, residues, windows, numbers = [], [], [], []
    for i, (off, n) in enumerate(zip(offsets, lengths)):
        tokens = tokens_of(sequences[i], sep) if sequences[i] else []
        p, window = peak_window(tokens, block[off - lo : off - lo + n], separator=sep)
        peaks.append(p + 1 if p >= 0 else None)
        residues.append(tokens[p] if 0 <= p < len(tokens) else None)
        windows.append(window)
        if numbering is not None:
            from workbench._catalog_encode import parse_positions

            positions = parse_positions(numbering[i], len(tokens))
            numbers.append(positions[p] if positions is not None and 0 <= p < len(positions) else None)
    out = pd.DataFrame({
        "feature": table["feature"].astype(str).to_numpy(),
        "kind": table["kind"].astype(str).to_numpy(),
        "rank": table["rank"].to_numpy(),
        "sequence_id": ids,
        "activation": table["max_activation"].to_numpy(dtype=np.float32),
        "length": lengths,
        "peak": pd.array(peaks, dtype="Int64"),
        "residue": residues,
        "window": windows,
    })
    if numbering is not None:
        out.insert(out.columns.get_loc("residue") + 1, position_col, pd.array(numbers, dtype="Int64"))
    return out


def _image_examples(table: pd.DataFrame, block: np.ndarray, lo: int, width: int, columns: list[str]) -> pd.DataFrame:
    """:func:`examples_frame` for image catalogs: the peak position and its grid cell (``row``, ``col``, 0-based
    like the store's ``y``, ``x``; ``width`` = the grid's columns)."""
    import pandas as pd

    offsets = table["offset"].to_numpy(dtype=np.int64)
    lengths = table["length"].to_numpy(dtype=np.int64)
    peaks = np.array([int(np.argmax(block[o - lo : o - lo + n])) if n else -1 for o, n in zip(offsets, lengths)])
    found = peaks >= 0
    out = pd.DataFrame({
        "feature": table["feature"].astype(str).to_numpy(),
        "kind": table["kind"].astype(str).to_numpy(),
        "rank": table["rank"].to_numpy(),
        "sequence_id": table["sequence_id"].astype(str).to_numpy(),
        "activation": table["max_activation"].to_numpy(dtype=np.float32),
        "length": lengths,
        "peak": pd.array(np.where(found, peaks + 1, 0), dtype="Int64"),
        "row": pd.array(peaks // width, dtype="Int64"),
        "col": pd.array(peaks % width, dtype="Int64"),
    })
    for c in ("peak", "row", "col"):
        out.loc[~found, c] = pd.NA
    return out[columns]

