"""AIRR Rearrangement input (read_airr), the nucleotide guard of the readers, and the ANARCI-free ``airr`` SHM source.

The bundled file is the AIRR Community's own example (``good_rearrangement.tsv`` of the ``airr`` package): nine
annotated 454 reads of human IGHV4 heavy chains, five productive, every AIRR-required field present but
``sequence_alignment`` and ``germline_alignment`` left empty. Where a test needs alignments it derives them from
those real reads: each read starts on a codon boundary of the V gene (its translation opens ``GPGLVKPSQ``, IMGT
codons 8-16 of IGHV4-31), so the read itself is an ungapped ``sequence_alignment``; the most abundant read of the
clone (IVKNQEJ01EI5S4, duplicate_count 2913) stands in for the germline of the reads of its length. The facts
checked are visible in the file: the reads' nucleotide differences, and the file's own ``junction_aa``.
"""

from __future__ import annotations

import csv
import gzip
import logging
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import workbench
from domains.sequence.annotations import airr_labels, sequence_labels
from domains.sequence.annotations.airr import AIRR_SCOPE, airr_walk
from domains.sequence.readers import (
    bundled,
    read_airr,
    read_airr_table,
    read_fasta,
    read_sequences,
    read_table,
)
from domains.sequence.records import SequenceRecord
from domains.sequence.sources import parse_specs
from workbench.concepts import ConceptLabels
from workbench.errors import InputError
from workbench.store import ActivationStore

PRODUCTIVE = ["IVKNQEJ01BVGQ6", "IVKNQEJ01AQVWS", "IVKNQEJ01EI5S4", "IVKNQEJ01DGRRI", "IVKNQEJ01AJ44V"]
NOT_PRODUCTIVE = ["IVKNQEJ01AOYFZ", "IVKNQEJ01APN5N", "IVKNQEJ01B0TT2", "IVKNQEJ01AIS74"]
GERMLINE_STAND_IN = "IVKNQEJ01EI5S4"
# Translation of read IVKNQEJ01BVGQ6 (IGHV4-31*03 / IGHJ4*02): FR1 from IMGT codon 8 to the end of FR4.
BVGQ6_PROTEIN = ("GPGLVKPSQTLSLTCTVSGGSISSGGYYWSWIRQHPGKGLEWIGYIYYSGSTYYNPSLKSRVTISVDTSKNQFSLKLSSVTAADTAVYYC"
                 "ASGVAGTFDYWGQGTLVTVSS")


# ----------------------------------------------------------------------------------------------- helpers


def bundled_rows() -> tuple[list[str], list[dict[str, str]]]:
    with bundled("good_rearrangement").open(newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        return list(reader.fieldnames or []), list(reader)


def write_airr(path: Path, header: list[str], rows: Iterable[dict[str, str]]) -> Path:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", newline="") as fh:  # type: ignore[operator]
        writer = csv.DictWriter(fh, fieldnames=header, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


def derived_rows() -> tuple[list[str], list[dict[str, str]]]:
    """The bundled rows with each read as its own sequence_alignment and the stand-in germline (same length only)."""
    header, rows = bundled_rows()
    germline = next(r["sequence"] for r in rows if r["sequence_id"] == GERMLINE_STAND_IN)
    out = []
    for r in rows:
        same_length = len(r["sequence"]) == len(germline)
        out.append({**r, "sequence_alignment": r["sequence"], "germline_alignment": germline if same_length else ""})
    return header, out


def by_id(rows: Iterable[dict[str, str]]) -> dict[str, dict[str, str]]:
    return {r["sequence_id"]: r for r in rows}


@pytest.fixture()
def derived(tmp_path: Path) -> Path:
    return write_airr(tmp_path / "derived.tsv", *derived_rows())


# ----------------------------------------------------------------------------------------------- bundled file


def test_bundled_file_is_the_airr_example_read_by_airrs_own_reader() -> None:
    import airr

    path = bundled("good_rearrangement")
    assert path == bundled("airr/good_rearrangement.tsv") and path.parent.name == "airr"
    assert (path.parent / "LICENSE").read_text().startswith("Attribution 4.0 International")
    assert airr.validate_rearrangement(str(path))
    ids = [row["sequence_id"] for row in airr.read_rearrangement(str(path))]
    assert sorted(ids) == sorted(PRODUCTIVE + NOT_PRODUCTIVE)


def test_bundled_file_rows_are_counted_by_reason() -> None:
    result = read_airr_table(bundled("good_rearrangement"))
    assert result.rows == 9 and result.records == []
    assert result.skipped["not_productive"] == 4 and result.skipped["no_sequence_alignment"] == 5
    assert sum(result.skipped.values()) == 9
    assert result.summary() == "4 not productive, 5 without sequence_alignment"


def test_bundled_file_without_alignments_is_refused_with_the_counts(caplog: pytest.LogCaptureFixture) -> None:
    path = bundled("good_rearrangement")
    with caplog.at_level(logging.INFO, logger="domains.sequence.readers"):
        with pytest.raises(InputError, match=r"good_rearrangement\.tsv: no usable AIRR rearrangement in 9 row\(s\) "
                                             r"\(skipped: 4 not productive, 5 without sequence_alignment\)"):
            read_airr(path)
    assert "skipped: 4 not productive, 5 without sequence_alignment" in caplog.text
    with pytest.raises(InputError, match="no usable AIRR rearrangement"):
        read_sequences(path)  # detected as AIRR by its header, not read as a table


# ----------------------------------------------------------------------------------------------- read_airr


def test_read_airr_translates_the_productive_alignments(derived: Path) -> None:
    records = read_airr(derived)
    assert [r.id for r in records] == PRODUCTIVE
    seqs = {r.id: r.sequence for r in records}
    assert seqs["IVKNQEJ01BVGQ6"] == BVGQ6_PROTEIN
    assert seqs["IVKNQEJ01AQVWS"].startswith("GPGLVKPSQTLSLTCTVSGGSISSGGYYWSWIRQHPGKGLEWIGYIYYSGSTN")  # TAC->AAC
    _, rows = bundled_rows()
    for rec in records:
        # the file's own junction_aa is part of every translation
        assert rec.meta["junction_aa"] in rec.sequence
        assert rec.meta["v_call"] == by_id(rows)[rec.id]["v_call"] and rec.meta["j_call"] == "IGHJ4*02"
        assert "c_call" not in rec.meta and "locus" not in rec.meta  # empty / absent fields are dropped


def test_not_productive_reads_have_stop_codons(derived: Path) -> None:
    result = read_airr_table(derived, productive_only=False)
    assert [r.id for r in result.records] == PRODUCTIVE
    assert result.skipped["stop_codon"] == 4 and result.skipped["not_productive"] == 0
    assert read_airr_table(derived).skipped["not_productive"] == 4


def test_imgt_gaps_and_a_trailing_incomplete_codon_are_removed(tmp_path: Path) -> None:
    header, rows = derived_rows()
    row = by_id(rows)["IVKNQEJ01BVGQ6"]
    read = row["sequence"]
    gapped = read[:30] + "..." + read[30:60] + "---" + read[60:] + "GA"
    gapped_row = {**row, "sequence_alignment": gapped, "germline_alignment": ""}
    path = write_airr(tmp_path / "gapped.tsv", header, [gapped_row])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Biopython warns on a partial codon: it must have been dropped first
        (rec,) = read_airr(path)
    assert rec.sequence == BVGQ6_PROTEIN


def test_untranslatable_and_unknown_productive_rows_are_counted(tmp_path: Path) -> None:
    header, rows = derived_rows()
    row = by_id(rows)["IVKNQEJ01BVGQ6"]
    path = write_airr(tmp_path / "odd.tsv", header, [
        row,
        {**row, "sequence_id": "bad_letters", "sequence_alignment": "ATGXYZ" + row["sequence"]},
        {**row, "sequence_id": "unknown", "productive": ""},
        {**row, "sequence_id": "empty", "sequence_alignment": "..."},
    ])
    result = read_airr_table(path)
    assert [r.id for r in result.records] == ["IVKNQEJ01BVGQ6"]
    assert (result.skipped["untranslatable"], result.skipped["productive_unknown"],
            result.skipped["no_sequence_alignment"]) == (1, 1, 1)


def test_gzip_file_reads_like_the_plain_one(derived: Path, tmp_path: Path) -> None:
    gz = write_airr(tmp_path / "derived.tsv.gz", *derived_rows())
    assert gzip.open(gz).read(2)  # really compressed
    assert read_airr(gz) == read_airr(derived)
    assert read_sequences(gz) == read_airr(derived)


def test_read_sequences_detects_airr_by_header(derived: Path, tmp_path: Path) -> None:
    assert read_sequences(derived) == read_airr(derived)
    tab = tmp_path / "derived.airr.tab"
    tab.write_bytes(derived.read_bytes())
    assert read_sequences(tab) == read_airr(derived)
    other = tmp_path / "derived.data"
    other.write_bytes(derived.read_bytes())
    assert read_sequences(other, format="airr") == read_airr(derived)
    # table options mean a table: the same file read by its junction_aa column
    junctions = read_sequences(derived, id_col="sequence_id", seq_cols="junction_aa")
    assert len(junctions) == 9 and junctions[0].sequence == "CASGVAGTFDYW"
    with pytest.raises(InputError, match="only apply to tables"):
        read_sequences(derived, format="airr", id_col="sequence_id")


def test_airr_chain_column_becomes_meta_chain(tmp_path: Path) -> None:
    header, rows = derived_rows()
    path = write_airr(tmp_path / "locus.tsv", [*header, "locus"], [{**r, "locus": "IGH"} for r in rows])
    records = read_airr(path, chain_col="locus")
    assert {r.meta["locus"] for r in records} == {"IGH"} and {r.meta["chain"] for r in records} == {"IGH"}
    with pytest.raises(InputError, match="no column.*'chain_type'"):
        read_airr(path, chain_col="chain_type")


@pytest.mark.parametrize(("make", "message"), [
    (lambda h, rows: ([c for c in h if c != "germline_alignment"], rows),
     r"missing required fields \(germline_alignment\)"),
    (lambda h, rows: (h, []), r"no usable AIRR rearrangement in 0 row"),
    (lambda h, rows: (h, [{**r, "productive": "F"} for r in rows]), r"\(skipped: 9 not productive\)"),
    (lambda h, rows: (h, [{**rows[0], "productive": "yes"}]), r"malformed AIRR file at data row 1 .*productive"),
    (lambda h, rows: (h, [rows[0], rows[0]]), r"duplicate id 'IVKNQEJ01BVGQ6'"),
])
def test_bad_airr_files_are_one_line_input_errors(tmp_path: Path, make: Callable[..., Any], message: str) -> None:
    header, rows = make(*derived_rows())
    path = write_airr(tmp_path / "bad.tsv", header, [{k: v for k, v in r.items() if k in header} for r in rows])
    with pytest.raises(InputError, match=message) as info:
        read_airr(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_empty_unreadable_and_missing_airr_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    with pytest.raises(InputError, match="empty AIRR file"):
        read_airr(empty)
    fake_gz = tmp_path / "plain.tsv.gz"
    fake_gz.write_bytes(bundled("good_rearrangement").read_bytes())
    with pytest.raises(InputError, match="unreadable AIRR file"):
        read_airr(fake_gz)
    with pytest.raises(InputError, match="no such file"):
        read_airr(tmp_path / "absent.tsv")


# ----------------------------------------------------------------------------------------------- nucleotide guard


def test_nucleotides_given_as_protein_are_refused(tmp_path: Path) -> None:
    _, rows = bundled_rows()
    read = rows[0]["sequence"]
    fasta = tmp_path / "reads.fasta"
    fasta.write_text(f">{rows[0]['sequence_id']}\n{read}\n")
    with pytest.raises(InputError, match=r"reads\.fasta: record 'IVKNQEJ01BVGQ6' looks like nucleotides .*AIRR"):
        read_fasta(fasta)
    with pytest.raises(InputError, match="looks like nucleotides"):
        read_sequences(fasta)
    with pytest.raises(InputError, match=r"good_rearrangement\.tsv: record 'IVKNQEJ01BVGQ6' looks like nucleotides"):
        read_table(bundled("good_rearrangement"), id_col="sequence_id", seq_cols="sequence")
    rna = tmp_path / "rna.fasta"
    rna.write_text(">r\n" + read.replace("T", "U") + "\n")
    with pytest.raises(InputError, match="looks like nucleotides"):
        read_fasta(rna)


def test_proteins_and_short_sequences_pass_the_guard(tmp_path: Path) -> None:
    fasta = tmp_path / "ok.fasta"
    # 20 amino acids (5 of them nucleotide letters), a 29-letter DNA-like peptide (too short to judge), and 30
    # letters of which 28 are A/C/G/T (93%, under the 95% bar)
    fasta.write_text(">aa\n" + "ACDEFGHIKLMNPQRSTVWY" * 3 + "\n>short\n" + "ACGT" * 7 + "A\n"
                     ">edge\n" + "ACGT" * 7 + "KL\n")
    assert [r.id for r in read_fasta(fasta)] == ["aa", "short", "edge"]
    refused = tmp_path / "refused.fasta"
    refused.write_text(">edge\n" + "ACGT" * 7 + "AK\n")  # 29 of 30 (97%)
    with pytest.raises(InputError, match=r"'edge' looks like nucleotides \(97% of its 30 letters"):
        read_fasta(refused)
    table = tmp_path / "t.csv"
    table.write_text("id,seq\np1," + "ACDEFGHIKLMNPQRSTVWY" * 3 + "\n")
    assert read_table(table, id_col="id", seq_cols="seq")[0].sequence.startswith("ACDEF")


# ----------------------------------------------------------------------------------------------- codon walk


def test_walk_skips_gap_codons_and_leaves_germline_gaps_and_ns_unlabelled() -> None:
    #          M   K   (gap) L   W   S   G     Y
    seq = "ATG" "AAA" "..." "CTG" "TGG" "AGC" "GGC" "TAC"
    germ = "ATG" "AGA" "CCC" "..." "NTG" "AGC" "GGA" "TAA"
    walk = airr_walk(seq, germ)
    assert walk.residues == "MKLWSGY" and not walk.frame_break
    # residue 1 M=M, 2 K vs R (mutated), 3 L vs gap (unlabelled), 4 W vs N-codon (unlabelled), 5 S=S, 6 GGC/GGA G=G,
    # 7 Y vs a germline stop codon (unlabelled)
    assert walk.compared == [(1, "M"), (2, "R"), (5, "S"), (6, "G")]


def test_walk_stops_at_a_partly_gapped_codon() -> None:
    walk = airr_walk("ATG" "AAA" "A.." "CTG", "ATG" "AAA" "AAA" "CTG")
    assert walk.frame_break and walk.residues == "MK" and walk.compared == [(1, "M"), (2, "K")]


# ----------------------------------------------------------------------------------------------- airr source


@pytest.fixture(scope="module")
def airr_case(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[SequenceRecord]]:
    """An AIRR file of the derived real reads plus three made rows, and the store records read from it plus three."""
    header, rows = derived_rows()
    rows_by_id = by_id(rows)
    aqvws = rows_by_id["IVKNQEJ01AQVWS"]
    bvgq6 = rows_by_id["IVKNQEJ01BVGQ6"]

    def gap(s: str, codon: int) -> str:  # an IMGT gap codon before codon ``codon`` (1-based)
        return s[: 3 * (codon - 1)] + "..." + s[3 * (codon - 1):]

    germ = aqvws["germline_alignment"]
    germ_gapped = gap(germ, 10)
    germ_gapped = germ_gapped[:6] + "..." + germ_gapped[9:]  # germline codon 3 gapped: residue 3 unlabelled
    made = [
        {**aqvws, "sequence_id": "gapped", "sequence_alignment": gap(aqvws["sequence"], 10),
         "germline_alignment": germ_gapped},
        {**bvgq6, "sequence_id": "mismatch"},
        {**bvgq6, "sequence_id": "framebreak",
         "sequence_alignment": bvgq6["sequence"][:57] + "A.." + bvgq6["sequence"][60:]},
    ]
    path = write_airr(tmp_path_factory.mktemp("airr") / "case.tsv", header, [*rows, *made])
    records = read_airr_table(path).records
    # the frame break shifts the rest of "framebreak" into a stop codon, so the reader leaves it out
    assert [r.id for r in records] == [*PRODUCTIVE, "gapped", "mismatch"]
    records = records[:-1] + [
        SequenceRecord("mismatch", BVGQ6_PROTEIN[:4] + "A" + BVGQ6_PROTEIN[5:]),  # V5A: not the file's translation
        SequenceRecord("framebreak", BVGQ6_PROTEIN[:19] + "GGGGG"),
        SequenceRecord("absent", BVGQ6_PROTEIN),
    ]
    return path, records


@pytest.fixture(scope="module")
def airr_store(tiny_esm2: Path, airr_case: tuple[Path, list[SequenceRecord]],
               tmp_path_factory: pytest.TempPathFactory) -> ActivationStore:
    return workbench.extract(str(tiny_esm2), airr_case[1], layers=[1], out=tmp_path_factory.mktemp("airr") / "store",
                             progress=False)


@pytest.fixture(scope="module")
def airr_result(airr_store: ActivationStore, airr_case: tuple[Path, list[SequenceRecord]]) -> ConceptLabels:
    return airr_labels(airr_store, airr_case[0])


def positions_with(labels: ConceptLabels, obs: pd.DataFrame, concept: str, sequence_id: str) -> list[int]:
    names = labels.token_concepts["concept"].tolist()
    if concept not in names:
        return []
    rows = labels.tokens[:, names.index(concept)].nonzero()[0]
    sel = obs.iloc[np.sort(rows)]
    return sel.loc[sel["sequence_id"] == sequence_id, "position"].astype(int).tolist()


def test_mutated_residues_match_the_hand_count(airr_result: ConceptLabels, airr_store: ActivationStore) -> None:
    obs = airr_store.obs(["sequence_id", "position", "residue"])
    # AQVWS differs from the stand-in germline read at nucleotides 157 (codon 53: TAC->AAC, Y->N), 168 (codon 56:
    # CCG->CCC, silent) and 186 (codon 62: GTT->GTC, silent): one mutated residue, 53, which replaced a Y.
    assert positions_with(airr_result, obs, "shm_airr=mutated", "IVKNQEJ01AQVWS") == [53]
    assert positions_with(airr_result, obs, "germline_residue_airr=Y", "IVKNQEJ01AQVWS") == [53]
    aqvws = obs[obs["sequence_id"] == "IVKNQEJ01AQVWS"]
    assert aqvws["residue"].iloc[52] == "N"
    # BVGQ6's one difference (nucleotide 323, ACC->ACT) is silent; the germline read matches itself
    for sid in ("IVKNQEJ01BVGQ6", "IVKNQEJ01EI5S4"):
        assert positions_with(airr_result, obs, "shm_airr=mutated", sid) == []
        assert len(positions_with(airr_result, obs, "germline_airr=conserved", sid)) == 111
    measures = airr_result.measures
    assert measures is not None and list(measures.columns) == ["shm_airr_count", "shm_airr_fraction"]
    order = airr_store.sequences["sequence_id"].tolist()
    at = measures.set_axis(order)
    assert at.loc["IVKNQEJ01AQVWS", "shm_airr_count"] == 1
    assert at.loc["IVKNQEJ01AQVWS", "shm_airr_fraction"] == pytest.approx(1 / 111)
    assert at.loc["IVKNQEJ01BVGQ6", "shm_airr_count"] == 0
    for sid in ("absent", "mismatch", "IVKNQEJ01DGRRI"):
        assert np.isnan(at.loc[sid, "shm_airr_count"]) and np.isnan(at.loc[sid, "shm_airr_fraction"])


def test_scope_is_exactly_the_compared_residues(airr_result: ConceptLabels, airr_store: ActivationStore) -> None:
    obs = airr_store.obs(["sequence_id", "position", "residue"])
    scope = airr_result.scopes[AIRR_SCOPE]
    compared = (np.asarray(airr_result.tokens[:, airr_result.token_concepts["concept"].tolist().index(
        "shm_airr=mutated")].todense()).ravel()
        | np.asarray(airr_result.tokens[:, airr_result.token_concepts["concept"].tolist().index(
            "germline_airr=conserved")].todense()).ravel())
    assert np.array_equal(scope, compared)
    assert int(scope.sum()) == airr_result.token_concepts.attrs["airr_compared_residues"]
    assert set(airr_result.token_concepts["scope"]) == {AIRR_SCOPE}
    in_scope = obs[scope].groupby("sequence_id").size()
    assert in_scope.to_dict() == {"IVKNQEJ01AQVWS": 111, "IVKNQEJ01BVGQ6": 111, "IVKNQEJ01EI5S4": 111,
                                  "gapped": 110, "framebreak": 19}
    frame = obs[scope & (obs["sequence_id"] == "framebreak").to_numpy()]
    assert frame["position"].tolist() == list(range(1, 20))


def test_germline_gap_leaves_the_residue_unlabelled(airr_result: ConceptLabels, airr_store: ActivationStore) -> None:
    obs = airr_store.obs(["sequence_id", "position", "residue"])
    scope = airr_result.scopes[AIRR_SCOPE]
    gapped = obs["sequence_id"].to_numpy() == "gapped"
    unlabelled = obs[gapped & ~scope]["position"].astype(int).tolist()
    assert unlabelled == [3]
    # the IMGT gap codon in both alignments shifts nothing: the mutation is still residue 53
    assert positions_with(airr_result, obs, "shm_airr=mutated", "gapped") == [53]


def test_counters_name_what_was_skipped(airr_result: ConceptLabels) -> None:
    attrs = airr_result.token_concepts.attrs
    assert attrs["airr_not_in_file"] == 1  # "absent"
    assert attrs["airr_sequences_matched"] == 8
    assert attrs["airr_no_germline"] == 2  # the two 327-nt reads have no stand-in germline of their length
    assert attrs["airr_residue_mismatches"] == 1  # "mismatch"
    assert attrs["airr_frame_breaks"] == 1
    assert attrs["airr_compared_residues"] == 111 * 3 + 110 + 19
    assert attrs["airr_mutated_residues"] == 2  # AQVWS and its gapped copy
    assert attrs["airr_compared_sequences"] == 5


def test_sequence_labels_and_cli_spec_reach_the_airr_source(
    airr_store: ActivationStore, airr_case: tuple[Path, list[SequenceRecord]], airr_result: ConceptLabels,
) -> None:
    opts = parse_specs(["motif", f"airr:{airr_case[0]}"])
    assert opts["sources"] == ("motif", "airr") and opts["airr"] == str(airr_case[0])
    combined = sequence_labels(airr_store, **{k: v for k, v in opts.items() if k != "sources"}, sources=["motif"])
    assert "shm_airr=mutated" in combined.token_concepts["concept"].tolist()
    assert combined.token_concepts.attrs["airr_mutated_residues"] == 2
    assert np.array_equal(combined.scopes[AIRR_SCOPE], airr_result.scopes[AIRR_SCOPE])
    assert combined.measures is not None and "shm_airr_count" in combined.measures.columns
    with pytest.raises(InputError, match="needs an argument"):
        parse_specs(["airr"])
