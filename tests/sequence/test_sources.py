"""Command-line annotation specs map onto sequence_labels' options, with clear errors for bad ones."""

from __future__ import annotations

import pytest

from domains.sequence.sources import parse_specs
from workbench.errors import InputError


def test_specs_become_sequence_labels_options() -> None:
    opts = parse_specs(["anarci", "table:CH1 Isotype,VD LC", "table:Target", "pfam:mini.hmm", "uniprot:x.dat", "motif"])
    assert opts["sources"] == ("anarci", "table", "pfam", "uniprot", "motif")
    assert opts["table_columns"] == ["CH1 Isotype", "VD LC", "Target"]
    assert opts["pfam_hmm"] == "mini.hmm" and opts["uniprot"] == "x.dat"


def test_antibody_biology_specs_are_plain_sources() -> None:
    opts = parse_specs(["anarci", "germline", "humanness", "liability", "cdr", "airr:reads.tsv"])
    assert opts["sources"] == ("anarci", "germline", "humanness", "liability", "cdr", "airr")
    assert opts["airr"] == "reads.tsv"


@pytest.mark.parametrize(("specs", "message"), [
    (["anarci:x"], "takes no argument"),
    (["germline:x"], "takes no argument"),
    (["airr:"], "needs an argument"),
    (["uniprot:"], "needs an argument"),
    (["user:a.csv", "user:b.csv"], "given twice"),
    (["blast"], "unknown annotation source"),
    ([], "no annotation source"),
])
def test_bad_specs(specs: list[str], message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_specs(specs)
