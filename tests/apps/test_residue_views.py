"""The residue views of the feature browser, the compare and live pages: sequences aligned on IMGT positions as
monospace lines (a character per residue, a column per position) under a region band and the IMGT numbers."""

from __future__ import annotations

import html
import re

import numpy as np

from apps.workbench_app import _views as views


def _lines(block: str) -> list[str]:
    """The text of every line of the aligned block (band, numbers, sequences), tags removed."""
    found = re.findall(r'<span class="q(?: n)?">(.*?)</span>(?=<span class="l|</div>)', block)
    return [html.unescape(re.sub(r"<[^>]+>", "", f)) for f in found]


def test_sequences_align_on_imgt_columns_with_insertions_and_gaps() -> None:
    # A has an insertion after IMGT 2 (it joins column 2), B lacks IMGT 3
    a = views.ResidueRow("A", list("QVKLE"), np.array([0, 0, 1.0, 0, 0.3]), [1, 2, None, 3, 4])
    b = views.ResidueRow("B", list("QVLE"), np.zeros(4), [1, 2, 4, 5])
    block = views.examples_html([a, b], align=True)
    band, numbers, line_a, line_b = _lines(block)
    assert line_a == "QVKLE-" and line_b == "QV.-LE"  # column 2 is two wide; "-" no residue, "." insertion filler
    assert len(band) == len(line_a) and band.strip() == "FR1"
    assert numbers.startswith("1") and len(numbers) <= len(line_a)
    # firing residues carry their activation colour and a tooltip with the IMGT column
    assert 'title="K 3 · IMGT 2 (insertion) · 1.00"' in block and "background:rgba(214,39,40,1.00)" in block
    assert 'title="E 5 · IMGT 4 · 0.30"' in block
    assert block.count('<span class="a') == 2  # silent residues are plain characters
    assert '<span class="l k">IMGT</span>' in block and "<b>A</b>" in block and "<b>B</b>" in block


def test_numbers_regions_and_blocks() -> None:
    positions = list(range(1, 129))
    row = views.ResidueRow("H", ["A"] * 128, np.zeros(128), positions)
    block = views.examples_html([row], align=True, max_columns=70)
    lines = _lines(block)
    assert len(lines) == 6  # two blocks cut at region boundaries: band, numbers and the sequence each
    bands, numbers = lines[0::3], lines[1::3]
    assert all(len(band) == len(seq) for band, seq in zip(bands, lines[2::3]))
    assert re.search(r">CDR1 *</span>", block) and re.search(r">CDR3 *</span>", block)
    assert bands[0].startswith("FR1") and "CDR1" in bands[0] and "FR3" in bands[1]
    # numbers at the first column, each region's first position and the multiples of 10, never overlapping
    first = numbers[0].split()
    assert first[:4] == ["1", "10", "20", "27"] and "39" in first and "56" in first
    assert all(int(x) <= 128 for n in numbers for x in n.split())
    # a light chain's three-position CDR2 is named C2 (the name does not fit)
    light = views.ResidueRow("L", list("AAAAA"), np.zeros(5), [55, 56, 57, 65, 66])
    assert ">C2 </span>" in views.examples_html([light], align=True)
