"""Read sequence files (FASTA, UniProt flat file / XML, CSV / TSV tables, AIRR Rearrangement TSV) into
:class:`SequenceRecord` lists.

Parsing is done by Biopython (``Bio.SeqIO``, ``Bio.SwissProt``), pandas and the AIRR Community's reference
library (``airr``). Readers reject missing, empty or malformed files and duplicate ids with a one-line
:class:`~workbench.errors.InputError` naming the file, and refuse protein records that look like nucleotides (a
DNA column read as protein would otherwise pass: A, C, G, T and N are amino-acid letters too). They do not check
the alphabet or lengths, which :func:`~domains.sequence.records.validate_records` does later against the model's
alphabet.
"""

from __future__ import annotations

import csv
import gzip
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

from domains.sequence.records import SequenceRecord
from workbench.errors import InputError, WorkbenchError

__all__ = [
    "read_fasta",
    "read_uniprot",
    "read_table",
    "read_airr",
    "read_airr_table",
    "AirrReadResult",
    "AIRR_SKIP_REASONS",
    "read_sequences",
    "bundled",
    "FORMATS",
]

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
UniProtFormat = Literal["swiss", "uniprot-xml"]

#: Formats accepted by :func:`read_sequences`.
FORMATS: tuple[str, ...] = ("fasta", "swiss", "uniprot-xml", "table", "airr")

_EXTENSIONS: dict[str, str] = {
    **dict.fromkeys((".fasta", ".fa", ".faa", ".fas"), "fasta"),
    **dict.fromkeys((".dat", ".txt", ".swiss", ".sp"), "swiss"),
    ".xml": "uniprot-xml",
    **dict.fromkeys((".csv", ".tsv", ".tab", ".tsv.gz", ".tab.gz"), "table"),
}
_TABLE_OPTIONS = ("id_col", "seq_cols", "meta_cols", "sep", "skip_missing")
_TAB_EXTENSIONS = (".tsv", ".tab")
# Tab-separated files that are read as AIRR Rearrangement files when their header names both AIRR fields below.
_AIRR_EXTENSIONS = (".tsv", ".tab", ".tsv.gz", ".tab.gz")
_AIRR_DETECT = ("sequence_id", "sequence_alignment")
# Per-sequence AIRR fields carried into ``meta`` (when the file has them and the cell is not empty).
_AIRR_META = ("v_call", "j_call", "c_call", "junction_aa", "locus")
# IMGT numbering gaps in an AIRR sequence_alignment / germline_alignment.
_AIRR_GAPS = ".-"
# Nucleotide guard: protein records at least this long made of at least this share of A/C/G/T/U/N are refused.
_NUCLEOTIDE_MIN_LENGTH = 30
_NUCLEOTIDE_SHARE = 0.95
_NUCLEOTIDE_LETTERS = frozenset("ACGTUN")
# Cell values that mean "no value" in addition to pandas' defaults ('', 'NA', 'NaN', 'None', 'null', ...);
# Thera-SAbDab writes 'na' for an absent chain.
_EXTRA_MISSING = ["na", "n.a.", "-"]
# What Biopython's parsers raise on malformed content (ElementTree's ParseError is a SyntaxError; the
# UniProt XML parser asserts on truncated entries; UnicodeDecodeError is a ValueError).
_PARSE_ERRORS = (ValueError, AssertionError, SyntaxError, KeyError, IndexError, AttributeError)
_DATA_DIR = Path(__file__).resolve().parent / "data"


# --------------------------------------------------------------------------------------------------- helpers


def _existing_file(path: PathLike) -> Path:
    """Return ``path`` as a Path, or raise InputError if it is not an existing file."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file")
    if not p.is_file():
        raise InputError(f"{p}: not a file")
    return p


def _clean_sequence(seq: object) -> str:
    """Upper-case a sequence and drop all whitespace inside it."""
    return re.sub(r"\s+", "", str(seq)).upper()


def _suffix(path: Path) -> str:
    """Lower-case extension, with the one before it for gzip files (``.tsv.gz``)."""
    suffixes = [s.lower() for s in path.suffixes]
    if len(suffixes) >= 2 and suffixes[-1] == ".gz":
        return suffixes[-2] + ".gz"
    return path.suffix.lower()


def _nucleotide_share(seq: str) -> float:
    """Share of A/C/G/T/U/N letters in ``seq`` (0 for an empty sequence, and for a sequence with fewer than three
    different bases: a homopolymer such as poly-A is a protein as easily as a nucleic acid)."""
    if not seq or len(set(seq) & set("ACGTU")) < 3:
        return 0.0
    return sum(c in _NUCLEOTIDE_LETTERS for c in seq) / len(seq)


def _check_protein(records: Iterable[SequenceRecord], source: PathLike) -> None:
    """Refuse the first record that looks like a nucleotide sequence rather than a protein.

    A sequence of at least 30 letters, with at least three different bases, of which at least 95% are A, C, G, T,
    U or N is taken for DNA / RNA (every one of those but U is also an amino-acid letter, so the model's alphabet
    check would let it through).
    """
    for rec in records:
        seq = rec.sequence
        if len(seq) >= _NUCLEOTIDE_MIN_LENGTH and _nucleotide_share(seq) >= _NUCLEOTIDE_SHARE:
            raise InputError(
                f"{source}: record {rec.id!r} looks like nucleotides ({_nucleotide_share(seq):.0%} of its "
                f"{len(seq)} letters are A/C/G/T/U/N); translate it to protein, or give an AIRR rearrangement file"
            )


def _reason(exc: BaseException) -> str:
    """First sentence of an exception message on one line (the type name if it has no message)."""
    text = " ".join(str(exc).split())
    if not text:
        return type(exc).__name__
    sentence = re.split(r"(?<=\.)\s", text, maxsplit=1)[0]
    return sentence if len(sentence) <= 200 else sentence[:197] + "..."


def _parsed(path: Path, kind: str, parse: Callable[[], Iterable[SequenceRecord]]) -> list[SequenceRecord]:
    """Run a parser, turning its exceptions into a one-line InputError; reject empty results and duplicate ids."""
    try:
        records = list(parse())
    except InputError:
        raise
    except _PARSE_ERRORS as exc:
        raise InputError(f"{path}: malformed {kind} file ({_reason(exc)})") from exc
    if not records:
        raise InputError(f"{path}: no {kind} records found")
    _check_unique_ids(records, path)
    _check_protein(records, path)
    return records


def _check_unique_ids(records: Iterable[SequenceRecord], source: PathLike) -> None:
    """Raise InputError naming the first id that occurs twice."""
    seen: set[str] = set()
    for rec in records:
        if rec.id in seen:
            raise InputError(f"{source}: duplicate id {rec.id!r}")
        seen.add(rec.id)


def _check_declared(path: Path, rec_id: str, seq: str, length: int | None, crc: str | None) -> None:
    """Compare a UniProt entry's sequence with the length and CRC64 declared in the file."""
    from Bio.SeqUtils.CheckSum import crc64

    if length is not None and int(length) != len(seq):
        raise InputError(
            f"{path}: malformed entry {rec_id!r}: sequence has {len(seq)} residues but the entry declares {length}"
        )
    if crc and crc64(seq).removeprefix("CRC-") != crc.upper():
        raise InputError(f"{path}: malformed entry {rec_id!r}: sequence does not match its CRC64 checksum {crc}")


def _drop_empty(meta: Mapping[str, Any]) -> dict[str, Any]:
    """Meta without None or empty-string values."""
    return {k: v for k, v in meta.items() if v is not None and v != ""}


# --------------------------------------------------------------------------------------------------- FASTA


def read_fasta(path: PathLike) -> list[SequenceRecord]:
    """Read a FASTA file with ``Bio.SeqIO``; the id is the first word of each header.

    ``meta['description']`` holds the rest of the header line when there is one.
    """
    p = _existing_file(path)

    def parse() -> Iterator[SequenceRecord]:
        from Bio import SeqIO

        for rec in SeqIO.parse(p, "fasta"):
            description = rec.description[len(rec.id) :].strip() if rec.description.startswith(rec.id) else ""
            yield SequenceRecord(rec.id, _clean_sequence(rec.seq), _drop_empty({"description": description}))

    return _parsed(p, "FASTA", parse)


# --------------------------------------------------------------------------------------------------- UniProt


def _detect_uniprot_format(path: Path) -> UniProtFormat:
    """'uniprot-xml' when the file's first non-blank character is '<', else 'swiss'."""
    with path.open("rb") as fh:
        head = fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return "uniprot-xml" if head.startswith(b"<") else "swiss"


def _swiss_records(path: Path) -> Iterator[SequenceRecord]:
    from Bio import SwissProt

    with path.open(encoding="utf-8") as fh:
        for entry in SwissProt.parse(fh):
            if not entry.accessions:
                raise InputError(f"{path}: malformed entry {entry.entry_name!r}: no AC (accession) line")
            acc = entry.accessions[0]
            seq = _clean_sequence(entry.sequence)
            length, _mw, crc = (entry.seqinfo or (None, None, None))[:3]
            _check_declared(path, acc, seq, length, crc)
            meta = {"entry_name": entry.entry_name, "description": entry.description.strip()}
            yield SequenceRecord(acc, seq, _drop_empty(meta))


def _uniprot_xml_records(path: Path) -> Iterator[SequenceRecord]:
    from Bio import SeqIO

    for rec in SeqIO.parse(path, "uniprot-xml"):
        seq = _clean_sequence(rec.seq)
        ann = rec.annotations
        _check_declared(path, rec.id, seq, ann.get("sequence_length"), ann.get("sequence_checksum"))
        meta = {"entry_name": rec.name, "description": rec.description}
        yield SequenceRecord(rec.id, seq, _drop_empty(meta))


_UNIPROT_PARSERS: dict[str, tuple[str, Callable[[Path], Iterator[SequenceRecord]]]] = {
    "swiss": ("UniProt flat", _swiss_records),
    "uniprot-xml": ("UniProt XML", _uniprot_xml_records),
}


def read_uniprot(path: PathLike, *, format: UniProtFormat | None = None) -> list[SequenceRecord]:
    """Read a UniProt flat file (``"swiss"``) or UniProt XML (``"uniprot-xml"``) with Biopython.

    ``format`` is detected from the content when None (XML starts with ``<``). The id is the primary accession;
    ``meta`` holds ``entry_name`` and ``description``. Each sequence is checked against the length and CRC64
    checksum the entry declares, so truncated or corrupted entries are rejected.
    """
    p = _existing_file(path)
    fmt = format or _detect_uniprot_format(p)
    if fmt not in _UNIPROT_PARSERS:
        raise InputError(f"{p}: unknown UniProt format {fmt!r} (use one of: {', '.join(_UNIPROT_PARSERS)})")
    kind, records = _UNIPROT_PARSERS[fmt]
    return _parsed(p, kind, lambda: records(p))


# --------------------------------------------------------------------------------------------------- tables


def _table_sep(path: Path, sep: str | None) -> str | None:
    """The separator to use: ``sep`` if given, tab for .tsv/.tab, comma for .csv, None (sniff) otherwise."""
    if sep is not None:
        return sep
    suffix = _suffix(path).removesuffix(".gz")
    if suffix in _TAB_EXTENSIONS:
        return "\t"
    return "," if suffix == ".csv" else None


def _require_columns(path: Path, available: Sequence[str], wanted: Iterable[str]) -> None:
    missing = [c for c in wanted if c not in available]
    if missing:
        raise InputError(
            f"{path}: unknown column(s) {', '.join(map(repr, missing))}; available: {', '.join(map(repr, available))}"
        )


def _is_missing(value: object) -> bool:
    """True for None, NaN and blank strings (pandas already maps 'na', 'NA', '' and friends to NaN)."""
    if value is None:
        return True
    if isinstance(value, float) and value != value:  # NaN
        return True
    return isinstance(value, str) and not value.strip()


def read_table(
    path: PathLike,
    *,
    id_col: str,
    seq_cols: str | Mapping[str, str],
    meta_cols: Sequence[str] | Literal["all"] = (),
    sep: str | None = None,
    skip_missing: bool = False,
) -> list[SequenceRecord]:
    """Read a CSV/TSV table with pandas.

    ``seq_cols`` is one column name (one record per row, id = the row's ``id_col`` value) or a mapping
    ``{column: chain_label}`` (one record per row and non-empty chain, id = ``"<row id>|<chain_label>"``,
    ``meta['chain'] = chain_label``); empty, NaN or ``na`` chain cells are skipped but a row with no sequence at
    all is an error unless ``skip_missing`` (then it is left out). ``meta_cols`` lists columns copied into ``meta`` (``"all"``: every column that is neither
    the id nor a sequence column); empty cells become None. Ids are read as text. ``sep`` defaults to tab for
    .tsv/.tab, comma for .csv, else it is sniffed.
    Rows in which every cell is empty are ignored.
    """
    import pandas as pd

    p = _existing_file(path)
    chains: dict[str, str | None] = {seq_cols: None} if isinstance(seq_cols, str) else dict(seq_cols)
    if not chains:
        raise InputError(f"{p}: seq_cols names no sequence column")
    resolved_sep = _table_sep(p, sep)
    try:
        df = pd.read_csv(
            p,
            sep=resolved_sep,
            engine="python" if resolved_sep is None else "c",
            na_values=_EXTRA_MISSING,
            dtype={id_col: str, **{c: str for c in chains}},
            skipinitialspace=True,
        )
    except pd.errors.EmptyDataError as exc:
        raise InputError(f"{p}: empty table") from exc
    except (pd.errors.ParserError, *_PARSE_ERRORS) as exc:
        raise InputError(f"{p}: malformed table ({_reason(exc)})") from exc

    columns = [str(c) for c in df.columns]
    df.columns = columns
    if meta_cols == "all":
        meta_names = [c for c in columns if c != id_col and c not in chains]
    else:
        meta_names = [meta_cols] if isinstance(meta_cols, str) else list(meta_cols)
    _require_columns(p, columns, [id_col, *chains, *meta_names])
    df = df.dropna(how="all")

    records: list[SequenceRecord] = []
    for index, row in zip(df.index, df.to_dict("records")):
        raw_id = row[id_col]
        if _is_missing(raw_id):
            raise InputError(f"{p}: data row {index + 1} has no value in id column {id_col!r}")
        row_id = str(raw_id).strip()
        meta = {name: None if _is_missing(row[name]) else row[name] for name in meta_names}
        row_records = [
            SequenceRecord(
                row_id if label is None else f"{row_id}|{label}",
                _clean_sequence(row[col]),
                meta if label is None else {**meta, "chain": label},
            )
            for col, label in chains.items()
            if not _is_missing(row[col])
        ]
        if not row_records and not skip_missing:
            raise InputError(f"{p}: row {row_id!r} has no sequence in column(s) {', '.join(map(repr, chains))}")
        records.extend(row_records)
    if not records:
        raise InputError(f"{p}: no table rows found")
    _check_unique_ids(records, p)
    _check_protein(records, p)
    return records


# --------------------------------------------------------------------------------------------------- AIRR


#: Why :func:`read_airr_table` skips a row: key of :attr:`AirrReadResult.skipped` -> wording in messages.
AIRR_SKIP_REASONS: dict[str, str] = {
    "not_productive": "not productive",
    "productive_unknown": "productive not given",
    "no_sequence_alignment": "without sequence_alignment",
    "untranslatable": "untranslatable",
    "stop_codon": "with a stop codon",
}


class AirrReadResult(NamedTuple):
    """What :func:`read_airr_table` read from an AIRR Rearrangement file."""

    records: list[SequenceRecord]
    """One protein record per usable row, in file order."""
    skipped: dict[str, int]
    """Rows left out, by reason (the keys of :data:`AIRR_SKIP_REASONS`, every key present)."""
    rows: int
    """Data rows in the file."""

    def summary(self) -> str:
        """The skip counts in words (``"4 not productive, 5 without sequence_alignment"``; ``"none"``)."""
        return _skip_summary(self.skipped)


def _skip_summary(skipped: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {AIRR_SKIP_REASONS.get(k, k)}" for k, n in skipped.items() if n) or "none"


def _open_text(path: Path) -> Any:
    """A text handle on ``path`` for the csv module, through gzip for ``.gz`` files."""
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return path.open(encoding="utf-8", newline="")


def _looks_like_airr(path: Path) -> bool:
    """True when the file's header line names the AIRR fields ``sequence_id`` and ``sequence_alignment``."""
    try:
        with _open_text(path) as handle:
            header = handle.readline()
    except (OSError, EOFError, UnicodeDecodeError):
        return False
    fields = {f.strip() for f in header.rstrip("\r\n").split("\t")}
    return all(name in fields for name in _AIRR_DETECT)


def _text(value: object) -> str:
    """A cell as stripped text ('' for None)."""
    return "" if value is None else str(value).strip()


def _airr_rows(path: Path, columns: Sequence[str] = ()) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(data row number, row)`` of an AIRR Rearrangement TSV, read and validated by the ``airr`` library.

    The header must hold every field the AIRR Rearrangement schema requires (and ``columns``); values are checked
    against the schema's types (``productive`` a boolean...) and converted (booleans, integers). Any failure is a
    one-line InputError naming the file (and the data row).
    """
    try:
        from airr.io import RearrangementReader
        from airr.schema import ValidationError
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise WorkbenchError("reading AIRR rearrangement files needs the airr package (pip install airr)") from exc

    number = 0
    try:
        with _open_text(path) as handle:
            reader = RearrangementReader(handle, validate=True)
            try:
                rows = iter(reader)  # validates the header
            except ValidationError as exc:
                if not reader.fields:
                    raise InputError(f"{path}: empty AIRR file (no header line)") from exc
                raise InputError(f"{path}: not an AIRR rearrangement file ({_reason(exc)})") from exc
            missing = [c for c in columns if c not in reader.fields]
            if missing:
                raise InputError(f"{path}: no column(s) {', '.join(map(repr, missing))} in the AIRR file")
            while True:
                try:
                    row = next(rows)
                except StopIteration:
                    return
                number += 1
                yield number, row
    except InputError:
        raise
    except (OSError, EOFError, csv.Error, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: unreadable AIRR file ({_reason(exc)})") from exc
    except (ValidationError, ValueError) as exc:
        raise InputError(f"{path}: malformed AIRR file at data row {number + 1} ({_reason(exc)})") from exc


def _alignment_nucleotides(value: object) -> str:
    """An AIRR ``sequence_alignment`` cell without IMGT gaps and whitespace, upper-cased."""
    text = _clean_sequence(_text(value))
    return text.translate(str.maketrans("", "", _AIRR_GAPS))


def _translate(nucleotides: str) -> str | None:
    """Biopython's standard-code translation from the first nucleotide, a trailing incomplete codon dropped;
    None when no codon is left or a codon is not nucleotide letters."""
    from Bio.Data.CodonTable import TranslationError
    from Bio.Seq import Seq

    usable = len(nucleotides) - len(nucleotides) % 3
    if not usable:
        return None
    try:
        return str(Seq(nucleotides[:usable]).translate())
    except TranslationError:
        return None


def read_airr_table(path: PathLike, *, productive_only: bool = True, chain_col: str | None = None) -> AirrReadResult:
    """Read an AIRR Rearrangement TSV (``.tsv`` or ``.tsv.gz``) into protein records, with the skip counts.

    The file is read and validated by the AIRR Community's reference library (``airr.io.RearrangementReader``):
    the header must hold the schema's required fields and typed fields must parse. Each row becomes one record:
    id = ``sequence_id``; sequence = ``sequence_alignment`` without its IMGT gaps (``.`` and ``-``), translated by
    Biopython in frame from its first nucleotide (AIRR aligns it from the start of the V region; a trailing
    incomplete codon is dropped). ``meta`` carries ``v_call``, ``j_call``, ``c_call``, ``junction_aa`` and
    ``locus`` where the file has them and the cell is not empty, and ``chain`` = the value of ``chain_col`` when
    given (``"locus"`` for mixed heavy / light files). Rows are skipped, and counted by reason in
    :attr:`AirrReadResult.skipped`, when ``productive`` is false or empty (with ``productive_only``), when
    ``sequence_alignment`` is empty, when it cannot be translated, or when its translation has a stop codon.
    Finding no usable row is not an error here (see :func:`read_airr`); duplicate ids are.
    """
    p = _existing_file(path)
    skipped = dict.fromkeys(AIRR_SKIP_REASONS, 0)
    records: list[SequenceRecord] = []
    rows = 0
    for number, row in _airr_rows(p, [chain_col] if chain_col else []):
        rows += 1
        sequence_id = _text(row.get("sequence_id"))
        if not sequence_id:
            raise InputError(f"{p}: data row {number} has no sequence_id")
        productive = row.get("productive")
        if productive_only and productive is not True:
            skipped["not_productive" if productive is False else "productive_unknown"] += 1
            continue
        nucleotides = _alignment_nucleotides(row.get("sequence_alignment"))
        if not nucleotides:
            skipped["no_sequence_alignment"] += 1
            continue
        protein = _translate(nucleotides)
        if protein is None:
            skipped["untranslatable"] += 1
            continue
        if "*" in protein:
            skipped["stop_codon"] += 1
            continue
        meta = _drop_empty({name: _text(row.get(name)) for name in _AIRR_META})
        if chain_col:
            meta.update(_drop_empty({"chain": _text(row.get(chain_col))}))
        records.append(SequenceRecord(sequence_id, protein, meta))
    _check_unique_ids(records, p)
    return AirrReadResult(records, skipped, rows)


def read_airr(path: PathLike, *, productive_only: bool = True, chain_col: str | None = None) -> list[SequenceRecord]:
    """Read an AIRR Rearrangement TSV (``.tsv`` / ``.tsv.gz``) into protein records (see :func:`read_airr_table`).

    The AIRR Rearrangement schema: Vander Heiden et al. 2018, Front. Immunol. 9:2206. The rows skipped (not
    productive, no ``sequence_alignment``, untranslatable, stop codon) are logged at INFO level with their counts;
    :func:`read_airr_table` returns the counts. No usable row at all is an :class:`InputError` naming the file and
    the counts.
    """
    result = read_airr_table(path, productive_only=productive_only, chain_col=chain_col)
    log.info("%s: %d AIRR rearrangement(s) read from %d row(s); skipped: %s", path, len(result.records), result.rows,
             result.summary())
    if not result.records:
        raise InputError(f"{path}: no usable AIRR rearrangement in {result.rows} row(s) (skipped: {result.summary()})")
    return result.records


# --------------------------------------------------------------------------------------------------- dispatch


def read_sequences(path: PathLike, *, format: str | None = None, **table_options: Any) -> list[SequenceRecord]:
    """Read any supported file, choosing the reader by ``format`` (one of :data:`FORMATS`) or the extension.

    .fasta/.fa/.faa/.fas: FASTA; .dat/.txt/.swiss/.sp: UniProt flat file; .xml: UniProt XML; .csv/.tsv/.tab:
    table, which needs ``id_col`` and ``seq_cols`` (plus optional ``meta_cols`` and ``sep``, see
    :func:`read_table`). A .tsv/.tab file (or .tsv.gz/.tab.gz) given without table options whose header names
    ``sequence_id`` and ``sequence_alignment`` is an AIRR Rearrangement file (:func:`read_airr`); ``format="airr"``
    says so explicitly. Table options that are None count as not given.
    """
    p = _existing_file(path)
    unknown = sorted(set(table_options) - set(_TABLE_OPTIONS))
    if unknown:
        raise TypeError(f"read_sequences() got unexpected option(s): {', '.join(unknown)}")
    options = {k: v for k, v in table_options.items() if v is not None}

    if format is None:
        suffix = _suffix(p)
        if suffix not in _EXTENSIONS:
            raise InputError(
                f"{p}: unknown file extension {suffix or '(none)'!r}; use one of {', '.join(_EXTENSIONS)}"
                f" or give the format ({', '.join(FORMATS)})"
            )
        format = _EXTENSIONS[suffix]
        if format == "table" and not options and suffix in _AIRR_EXTENSIONS and _looks_like_airr(p):
            format = "airr"
    if format not in FORMATS:
        raise InputError(f"{p}: unknown format {format!r}; use one of: {', '.join(FORMATS)}")

    if format == "table":
        needed = [name for name in ("id_col", "seq_cols") if name not in options]
        if needed:
            raise InputError(
                f"{p}: reading a table needs the option(s) {' and '.join(needed)}"
                " (the id column and the sequence column, or a mapping of sequence columns to chain labels;"
                " an AIRR rearrangement file needs its sequence_id and sequence_alignment columns)"
            )
        return read_table(p, **options)
    if options:
        raise InputError(f"{p}: option(s) {', '.join(sorted(options))} only apply to tables, not {format} files")
    if format == "fasta":
        return read_fasta(p)
    if format == "airr":
        return read_airr(p)
    return read_uniprot(p, format="swiss" if format == "swiss" else "uniprot-xml")


# --------------------------------------------------------------------------------------------------- bundled data


def bundled(name: str) -> Path:
    """Path of a data file bundled in ``domains/sequence/data`` or a folder of it (``airr/``): by file name with or
    without extension, or by its path under ``data/`` (``"airr/good_rearrangement.tsv"``)."""
    files = sorted(
        f for f in _DATA_DIR.rglob("*")
        if f.is_file() and f.suffix != ".md" and not f.name.startswith(("LICENSE", "."))
        and "__pycache__" not in f.parts
    )
    available = [f.relative_to(_DATA_DIR).as_posix() for f in files]
    for path, relative in zip(files, available):
        if name in (relative, str(Path(relative).with_suffix("")), path.name, path.stem):
            return path
    raise InputError(f"unknown bundled data file {name!r}; available: {', '.join(available)}")
