"""Sequence readers and record validation, on real published data files."""

from __future__ import annotations

import csv
import filecmp
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from domains.sequence.readers import bundled, read_fasta, read_sequences, read_table, read_uniprot
from domains.sequence.records import SequenceRecord, validate_records
from workbench.errors import InputError

SHARED = Path(os.environ.get("WORKBENCH_SHARED_DATA", "/work/shared/data"))
PROTEIN = SHARED / "protein"
CASES = PROTEIN / "swissprot_format_cases"
SWISS_100 = PROTEIN / "swissprot_human_100.dat"
FASTA = PROTEIN / "bindpredict" / "indep_indep_set.fasta"
THERA_CHAINS = {"HC": "heavy", "LC": "light"}

needs_shared = pytest.mark.skipif(not PROTEIN.is_dir(), reason=f"shared reference data not found at {SHARED}")


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------ bundled data


@pytest.mark.parametrize("name", ["therasabdab.csv", "oas_human_igg_memory_b_vh.csv", "jain137_biophysical.csv"])
def test_bundled_files_are_unchanged_copies(name: str) -> None:
    path = bundled(name)
    assert path.is_file() and bundled(Path(name).stem) == path
    if (SHARED / "antibody" / name).is_file():
        assert filecmp.cmp(path, SHARED / "antibody" / name, shallow=False)


def test_bundled_unknown_name_lists_available() -> None:
    with pytest.raises(InputError, match=r"'nope'.*therasabdab\.csv"):
        bundled("nope")


# ------------------------------------------------------------------------------------------------ tables


def test_therasabdab_one_record_per_present_chain() -> None:
    path = bundled("therasabdab.csv")
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    present = sum(row[col].strip() not in ("", "na") for row in rows for col in THERA_CHAINS)

    records = read_table(path, id_col="Therapeutic", seq_cols=THERA_CHAINS, meta_cols=["Target", "CH1 Isotype"])

    assert len(records) == present == 2237
    by_id = {r.id: r for r in records}
    abago = by_id["Abagovomab|heavy"]
    assert abago.sequence == rows[0]["HC"] and abago.meta["chain"] == "heavy"
    assert abago.meta["Target"] == "MUC16/CA125" and abago.meta["CH1 Isotype"] == "G1"
    assert by_id["Abagovomab|light"].sequence == rows[0]["LC"]
    assert {r.meta["chain"] for r in records} == {"heavy", "light"}
    # Lulizumab has no heavy chain ('na'): only its light chain is read
    assert "Lulizumab|light" in by_id and "Lulizumab|heavy" not in by_id


def test_therasabdab_meta_all_excludes_id_and_sequence_columns() -> None:
    records = read_table(bundled("therasabdab"), id_col="Therapeutic", seq_cols=THERA_CHAINS, meta_cols="all")
    meta = records[0].meta
    assert not {"Therapeutic", "HC", "LC"} & set(meta)
    assert meta["Est. Status"] == "Discontinued" and meta["Conditions Approved"] is None  # 'na' cell


def test_oas_single_sequence_column() -> None:
    records = read_sequences(
        bundled("oas_human_igg_memory_b_vh.csv"), id_col="seq_id", seq_cols="sequence_alignment_aa",
        meta_cols=["v_family"],
    )
    assert len(records) == 1999
    assert records[0].id == "OAS_0" and records[0].sequence.startswith("SVKVSCKASGYTF")
    assert records[0].meta == {"v_family": "IGHV1"}
    assert all(r.meta["v_family"].startswith("IGHV") for r in records)


def test_table_separator_from_extension_and_sniffed(tmp_path: Path) -> None:
    tsv = write(tmp_path / "abs.tsv", "name\tvh\tnote\nab1\tqvqlv\tx\nab2\tEVQ LV\t\n")
    records = read_table(tsv, id_col="name", seq_cols="vh", meta_cols="all")
    assert [(r.id, r.sequence, r.meta["note"]) for r in records] == [("ab1", "QVQLV", "x"), ("ab2", "EVQLV", None)]
    semi = write(tmp_path / "abs.txt", "name;vh\nab1;QVQLV\nab2;EVQLV\n")
    assert [r.id for r in read_table(semi, id_col="name", seq_cols="vh")] == ["ab1", "ab2"]


def test_table_blank_rows_ignored_all_chains_empty_rejected(tmp_path: Path) -> None:
    ok = write(tmp_path / "ok.csv", "id,HC,LC\nbi1,EVQLV,na\n,,\nbi2,NA,DIQMT\n")
    assert [r.id for r in read_table(ok, id_col="id", seq_cols=THERA_CHAINS)] == ["bi1|heavy", "bi2|light"]
    bad = write(tmp_path / "bad.csv", "id,HC,LC\nbi1,EVQLV,na\nghost,na,\n")
    with pytest.raises(InputError, match=r"bad\.csv: row 'ghost' has no sequence"):
        read_table(bad, id_col="id", seq_cols=THERA_CHAINS)


def test_table_unknown_column_lists_available() -> None:
    with pytest.raises(InputError, match=r"unknown column\(s\) 'VH'; available: 'seq_id', 'sequence_alignment_aa'"):
        read_table(bundled("oas_human_igg_memory_b_vh"), id_col="seq_id", seq_cols="VH")
    with pytest.raises(InputError, match=r"unknown column\(s\) 'Origin'"):
        read_table(bundled("therasabdab"), id_col="Therapeutic", seq_cols=THERA_CHAINS, meta_cols=["Origin"])


def test_table_missing_id_and_duplicate_ids(tmp_path: Path) -> None:
    missing = write(tmp_path / "missing.csv", "id,seq\na,MKV\n,MKL\n")
    with pytest.raises(InputError, match=r"missing\.csv: data row 2 has no value in id column 'id'"):
        read_table(missing, id_col="id", seq_cols="seq")
    dup = write(tmp_path / "dup.csv", "id,seq\na,MKV\nb,MKL\na,MKA\n")
    with pytest.raises(InputError, match=r"dup\.csv: duplicate id 'a'"):
        read_table(dup, id_col="id", seq_cols="seq")


def test_table_empty_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"empty\.csv: empty table"):
        read_table(write(tmp_path / "empty.csv", ""), id_col="id", seq_cols="seq")
    with pytest.raises(InputError, match=r"header\.csv: no table rows"):
        read_table(write(tmp_path / "header.csv", "id,seq\n"), id_col="id", seq_cols="seq")


def test_read_sequences_table_needs_options() -> None:
    with pytest.raises(InputError, match=r"therasabdab\.csv: reading a table needs the option\(s\) id_col and seq_"):
        read_sequences(bundled("therasabdab"))
    with pytest.raises(InputError, match=r"needs the option\(s\) seq_cols"):
        read_sequences(bundled("therasabdab"), id_col="Therapeutic", seq_cols=None)


# ------------------------------------------------------------------------------------------------ FASTA


@needs_shared
def test_fasta_real_file() -> None:
    records = read_sequences(FASTA)
    headers = [line[1:].split()[0] for line in FASTA.read_text().splitlines() if line.startswith(">")]
    assert [r.id for r in records] == headers and len(records) == 46
    assert records[0].id == "A0A0B0QJR1" and records[0].sequence.startswith("MTNIEPVIIETRLELIGRYLDHLKK")
    assert records == read_fasta(FASTA)


def test_fasta_cleans_sequences_and_keeps_description(tmp_path: Path) -> None:
    path = write(tmp_path / "x.fa", ">p1 some protein\nmkv la\nGG\n>p2\nMKL\n")
    assert read_fasta(path) == [
        SequenceRecord("p1", "MKVLAGG", {"description": "some protein"}),
        SequenceRecord("p2", "MKL", {}),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"empty\.fasta: no FASTA records found"),
        ("MKVLAGG\nMKL\n", r"empty\.fasta: malformed FASTA file \(.*comments at the beginning"),
        (">a\nMKV\n>b\nMKL\n>a\nMKA\n", r"empty\.fasta: duplicate id 'a'"),
    ],
    ids=["empty", "no-header", "duplicate-id"],
)
def test_fasta_bad_inputs(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        read_fasta(write(tmp_path / "empty.fasta", text))


# ------------------------------------------------------------------------------------------------ UniProt


@needs_shared
def test_uniprot_flat_file_matches_sq_lines() -> None:
    text = SWISS_100.read_text()
    declared = [int(n) for n in re.findall(r"^SQ   SEQUENCE\s+(\d+) AA;", text, flags=re.M)]
    accessions = re.findall(r"^ID .*\nAC   (\w+);", text, flags=re.M)

    records = read_sequences(SWISS_100)

    assert len(records) == 100 == len(declared)
    assert [len(r) for r in records] == declared
    assert [r.id for r in records] == accessions
    first = records[0]
    assert first.id == "P31946" and len(first) == 246 and first.sequence.startswith("MTMDKSELVQKAKLAEQAER")
    assert first.meta["entry_name"] == "1433B_HUMAN" and "14-3-3 protein beta/alpha" in first.meta["description"]


@needs_shared
@pytest.mark.parametrize("xml", sorted(p.name for p in CASES.glob("*.xml") if not p.name.startswith("UniRef")))
def test_uniprot_xml_cases_match_flat_files(xml: str) -> None:
    records = read_uniprot(CASES / xml)
    assert records and all(r.sequence.isalpha() and r.meta["entry_name"] for r in records)
    flat = (CASES / xml).with_suffix(".txt")
    if flat.is_file():
        assert [(r.id, r.sequence) for r in records] == [(r.id, r.sequence) for r in read_uniprot(flat)]


@needs_shared
def test_uniprot_xml_q13639() -> None:
    (rec,) = read_sequences(CASES / "Q13639.xml")
    (flat,) = read_uniprot(CASES / "Q13639.txt", format="swiss")
    assert rec.id == flat.id == "Q13639" and rec.sequence == flat.sequence and len(rec) == 388
    assert rec.meta == {"entry_name": "5HT4R_HUMAN", "description": "5-hydroxytryptamine receptor 4"}


@needs_shared
def test_uniprot_multi_entry_files_agree() -> None:
    xml, flat = read_uniprot(CASES / "multi_ex.xml"), read_uniprot(CASES / "multi_ex.txt")
    assert len(xml) == 8 and [(r.id, r.sequence) for r in xml] == [(r.id, r.sequence) for r in flat]


@pytest.fixture
def q13639_lines() -> list[str]:
    path = CASES / "Q13639.txt"
    if not path.is_file():
        pytest.skip(f"shared reference data not found at {SHARED}")
    return path.read_text().splitlines(keepends=True)


@needs_shared
@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda ls: "".join(ls[: len(ls) // 2]), r"bad\.dat: malformed UniProt flat file \(Unexpected end of stream"),
        (lambda ls: "".join(ls[:-1]), r"bad\.dat: malformed UniProt flat file \(Unexpected end of stream"),
        (lambda ls: "".join(ls[:-3] + ls[-1:]), r"bad\.dat: malformed entry 'Q13639': sequence has 300 residues"),
        (lambda ls: "".join(ls).replace("AVECGGQWES", "AVECAGQWES"), r"bad\.dat: malformed entry 'Q13639'.*CRC64"),
        (lambda ls: "".join(ls[1:]), r"bad\.dat: malformed UniProt flat file \(Failed to find ID"),
        (lambda ls: "", r"bad\.dat: no UniProt flat records"),
    ],
    ids=["cut-in-half", "no-terminator", "sequence-lines-lost", "residue-changed", "no-ID-line", "empty"],
)
def test_uniprot_flat_file_corrupted(
    tmp_path: Path, q13639_lines: list[str], corrupt: Callable[[list[str]], str], message: str
) -> None:
    with pytest.raises(InputError, match=message) as info:
        read_sequences(write(tmp_path / "bad.dat", corrupt(q13639_lines)))
    assert "\n" not in str(info.value)


@needs_shared
def test_uniprot_xml_truncated_and_wrong_namespace(tmp_path: Path) -> None:
    cut = write(tmp_path / "cut.xml", (CASES / "Q13639.xml").read_text()[:3000])
    with pytest.raises(InputError, match=r"cut\.xml: malformed UniProt XML file"):
        read_uniprot(cut)
    with pytest.raises(InputError, match=r"UniRef90_P99999\.xml: malformed UniProt XML file \(.*namespace"):
        read_uniprot(CASES / "UniRef90_P99999.xml")


def test_uniprot_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"unknown UniProt format 'embl'"):
        read_uniprot(write(tmp_path / "x.dat", "ID   X\n"), format="embl")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ dispatch


def test_read_sequences_unknown_extension_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"seqs\.pdb: unknown file extension '\.pdb'"):
        read_sequences(write(tmp_path / "seqs.pdb", ">a\nMKV\n"))
    with pytest.raises(InputError, match=r"absent\.fasta: no such file"):
        read_sequences(tmp_path / "absent.fasta")
    with pytest.raises(InputError, match=r"absent\.csv: no such file"):
        read_table(tmp_path / "absent.csv", id_col="id", seq_cols="seq")


def test_read_sequences_explicit_format_and_misplaced_options(tmp_path: Path) -> None:
    path = write(tmp_path / "seqs.pdb", ">a\nMKV\n")
    assert read_sequences(path, format="fasta") == [SequenceRecord("a", "MKV", {})]
    with pytest.raises(InputError, match=r"unknown format 'pdb'"):
        read_sequences(path, format="pdb")
    with pytest.raises(InputError, match=r"option\(s\) id_col only apply to tables"):
        read_sequences(path, format="fasta", id_col="x")
    with pytest.raises(TypeError, match="colour"):
        read_sequences(path, colour="red")


# ------------------------------------------------------------------------------------------------ validate_records

PROTEIN_ALPHABET = "ACDEFGHIKLMNPQRSTVWY"


def oas_records(n: int = 3) -> list[SequenceRecord]:
    return read_table(bundled("oas_human_igg_memory_b_vh"), id_col="seq_id", seq_cols="sequence_alignment_aa")[:n]


def test_validate_records_accepts_real_sequences() -> None:
    records = oas_records()
    assert validate_records(records, alphabet=PROTEIN_ALPHABET, max_length=200) == records


def test_validate_records_invalid_residue_names_record_and_position() -> None:
    good = oas_records(1)[0]
    bad = SequenceRecord("OAS_bad", good.sequence[:9] + "J" + good.sequence[10:])
    with pytest.raises(InputError, match=r"record 'OAS_bad' has invalid residue 'J' at position 10"):
        validate_records([good, bad], alphabet=PROTEIN_ALPHABET)


def test_validate_records_length_limit_and_truncation() -> None:
    rec = oas_records(1)[0]
    over = rf"'OAS_0' has {len(rec)} residues, over the model's maximum of 50 .*--truncate"
    with pytest.raises(InputError, match=over):
        validate_records([rec], alphabet=PROTEIN_ALPHABET, max_length=50)
    (cut,) = validate_records([rec], alphabet=PROTEIN_ALPHABET, max_length=50, truncate=True)
    assert cut.sequence == rec.sequence[:50] and cut.meta["truncated_from"] == len(rec)


def test_validate_records_duplicates_and_empty() -> None:
    rec = oas_records(1)[0]
    with pytest.raises(InputError, match=r"my\.csv: duplicate id 'OAS_0'"):
        validate_records([rec, rec], alphabet=PROTEIN_ALPHABET, source="my.csv")
    with pytest.raises(InputError, match="no sequences found"):
        validate_records([], alphabet=PROTEIN_ALPHABET)
