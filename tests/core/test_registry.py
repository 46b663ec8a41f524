"""Model cards and the entry-point registry; ``import workbench`` stays light."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from workbench.errors import ModelError
from workbench.registry import ModelCard, _parse_cards, adapter_class, get_card, list_models


def test_import_is_light() -> None:
    code = "import sys, workbench; print(any(m in sys.modules for m in ('torch', 'transformers', 'domains', 'esm')))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_cards_come_from_entry_points() -> None:
    names = {c.name for c in list_models()}
    assert {"antiberty", "sapiens-vh", "sapiens-vl", "esm2_t6_8M_UR50D", "esm2_t48_15B_UR50D"} <= names
    vh, vl = get_card("sapiens-vh"), get_card("sapiens-vl")
    assert (vh.max_length, vl.max_length) == (142, 126)
    assert vh.options["checkpoint"] == "checkpoint_vh.pt" and vh.license == vl.license == "MIT"
    assert (get_card("esm2_t33_650M_UR50D").n_layers, get_card("esm2_t33_650M_UR50D").d_model) == (33, 1280)
    assert adapter_class(get_card("antiberty").adapter).__name__ == "AntiBERTyAdapter"


def test_variant_cards_inherit_and_override(tmp_path: Path) -> None:
    f = tmp_path / "fam.yaml"
    f.write_text("adapter: x\nn_layers: 2\nd_model: 8\noptions: {a: 1}\nvariants:\n  one: {}\n  two: {d_model: 16, options: {b: 2}}\n")
    one, two = _parse_cards(f)
    assert (one.name, one.d_model, one.options) == ("one", 8, {"a": 1})
    assert (two.name, two.d_model, two.options) == ("two", 16, {"a": 1, "b": 2})


def test_bad_cards_and_names() -> None:
    with pytest.raises(ModelError, match="unknown fields"):
        ModelCard.from_dict({"name": "x", "adapter": "y", "n_layers": 1, "d_model": 2, "colour": "red"})
    with pytest.raises(ModelError, match="known models: antiberty"):
        get_card("nope")
    with pytest.raises(ModelError, match="no adapter registered"):
        adapter_class("nope")
