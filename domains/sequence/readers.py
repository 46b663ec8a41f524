"""Read sequence files (FASTA, UniProt flat file / XML, CSV / TSV tables) into :class:`SequenceRecord` lists.

Parsing is done by Biopython (``Bio.SeqIO``, ``Bio.SwissProt``) and pandas. Readers reject missing, empty or
malformed files and duplicate ids with a one-line :class:`~workbench.errors.InputError` naming the file; they do
not check the alphabet or lengths, which :func:`~domains.sequence.records.validate_records` does later against
the model's alphabet.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from domains.sequence.records import SequenceRecord
from workbench.errors import InputError

__all__ = [
    "read_fasta",
    "read_uniprot",
    "read_table",
    "read_sequences",
    "bundled",
    "FORMATS",
]

PathLike = str | os.PathLike[str]
UniProtFormat = Literal["swiss", "uniprot-xml"]

#: Formats accepted by :func:`read_sequences`.
FORMATS: tuple[str, ...] = ("fasta", "swiss", "uniprot-xml", "table")

_EXTENSIONS: dict[str, str] = {
    **dict.fromkeys((".fasta", ".fa", ".faa", ".fas"), "fasta"),
    **dict.fromkeys((".dat", ".txt", ".swiss", ".sp"), "swiss"),
    ".xml": "uniprot-xml",
    **dict.fromkeys((".csv", ".tsv", ".tab"), "table"),
}
_TABLE_OPTIONS = ("id_col", "seq_cols", "meta_cols", "sep", "skip_missing")
_TAB_EXTENSIONS = (".tsv", ".tab")
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
    suffix = path.suffix.lower()
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
    return records


# --------------------------------------------------------------------------------------------------- dispatch


def read_sequences(path: PathLike, *, format: str | None = None, **table_options: Any) -> list[SequenceRecord]:
    """Read any supported file, choosing the reader by ``format`` (one of :data:`FORMATS`) or the extension.

    .fasta/.fa/.faa/.fas: FASTA; .dat/.txt/.swiss/.sp: UniProt flat file; .xml: UniProt XML; .csv/.tsv/.tab:
    table, which needs ``id_col`` and ``seq_cols`` (plus optional ``meta_cols`` and ``sep``, see
    :func:`read_table`). Table options that are None count as not given.
    """
    p = _existing_file(path)
    unknown = sorted(set(table_options) - set(_TABLE_OPTIONS))
    if unknown:
        raise TypeError(f"read_sequences() got unexpected option(s): {', '.join(unknown)}")
    options = {k: v for k, v in table_options.items() if v is not None}

    if format is None:
        suffix = p.suffix.lower()
        if suffix not in _EXTENSIONS:
            raise InputError(
                f"{p}: unknown file extension {suffix or '(none)'!r}; use one of {', '.join(_EXTENSIONS)}"
                f" or give the format ({', '.join(FORMATS)})"
            )
        format = _EXTENSIONS[suffix]
    if format not in FORMATS:
        raise InputError(f"{p}: unknown format {format!r}; use one of: {', '.join(FORMATS)}")

    if format == "table":
        needed = [name for name in ("id_col", "seq_cols") if name not in options]
        if needed:
            raise InputError(
                f"{p}: reading a table needs the option(s) {' and '.join(needed)}"
                " (the id column and the sequence column, or a mapping of sequence columns to chain labels)"
            )
        return read_table(p, **options)
    if options:
        raise InputError(f"{p}: option(s) {', '.join(sorted(options))} only apply to tables, not {format} files")
    if format == "fasta":
        return read_fasta(p)
    return read_uniprot(p, format="swiss" if format == "swiss" else "uniprot-xml")


# --------------------------------------------------------------------------------------------------- bundled data


def bundled(name: str) -> Path:
    """Path of a data file bundled in ``domains/sequence/data`` (by file name, with or without extension)."""
    available = sorted(f.name for f in _DATA_DIR.iterdir() if f.is_file() and f.suffix != ".md")
    for candidate in available:
        if name in (candidate, Path(candidate).stem):
            return _DATA_DIR / candidate
    raise InputError(f"unknown bundled data file {name!r}; available: {', '.join(available)}")
