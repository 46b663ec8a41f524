"""The command line: a working extraction, and bad inputs that fail with one line, exit 2 and nothing on disk."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from domains.sequence.testing import write_esm2_checkpoint
from workbench.cli import main

REPO = Path(__file__).resolve().parents[2]
SHARED = Path("/work/shared/data")


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().err


def extract_args(model: Path | str, inp: Path, out: Path, *extra: str) -> list[str]:
    return ["extract", "--model", str(model), "--input", str(inp), "--layers", "1", "--out", str(out), "--no-progress", *extra]


def assert_clean_failure(code: int, err: str, out: Path, *words: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("workbench: error:"), err
    for w in words:
        assert w in lines[0], lines[0]
    assert not out.exists() and not out.with_name(out.name + ".partial").exists()


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (">a\nMKTAYJAK\n", ["'a'", "'J'", "position 6"]),
        (">a\nMKTAY\n>a\nGGSS\n", ["duplicate id", "'a'"]),
        ("", ["no"]),
        ("MKTAYAK\n", ["no"]),
        (">a\n\n>b\nMKT\n", ["'a'"]),
    ],
    ids=["invalid-residue", "duplicate-id", "empty-file", "no-header", "empty-sequence"],
)
def test_bad_fasta(capsys, tiny_esm2: Path, tmp_path: Path, content: str, words: list[str]) -> None:  # type: ignore[no-untyped-def]
    fasta = tmp_path / "in.fasta"
    fasta.write_text(content)
    out = tmp_path / "store"
    code, err = run(capsys, *extract_args(tiny_esm2, fasta, out))
    assert_clean_failure(code, err, out, *words)


def test_over_length_fails_unless_truncated(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fasta = tmp_path / "long.fasta"
    fasta.write_text(">long\n" + "EVQLVESGGGLVQPGGSLRLSCAAS" * 7 + "\n>ok\nEVQLVESGGGLVQPGG\n")
    out = tmp_path / "store"
    code, err = run(capsys, *extract_args("sapiens-vh", fasta, out))
    assert_clean_failure(code, err, out, "'long'", "175 residues", "142", "--truncate")
    code, _ = run(capsys, *extract_args("sapiens-vh", fasta, out, "--truncate"))
    assert code == 0
    import workbench

    store = workbench.open_store(out)
    assert store.n_tokens == 142 + 16
    assert store.sequences.set_index("sequence_id").loc["long", "truncated_from"] == 175


def test_unknown_model_and_layer(capsys, tiny_esm2: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fasta = tmp_path / "in.fasta"
    fasta.write_text(">a\nMKTAYAK\n")
    out = tmp_path / "store"
    code, err = run(capsys, *extract_args("esm3_giant", fasta, out))
    assert_clean_failure(code, err, out, "unknown model 'esm3_giant'", "antiberty", "sapiens-vh")
    code, err = run(capsys, "extract", "--model", str(tiny_esm2), "--input", str(fasta), "--layers", "9", "--out", str(out))
    assert_clean_failure(code, err, out, "no layer 9", "0..2")


def test_malformed_uniprot_and_table_columns(capsys, tiny_esm2: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    entry = (REPO / "domains/sequence/data/therasabdab.csv").read_text()  # any real text that is not a UniProt entry
    bad = tmp_path / "broken.dat"
    real = SHARED / "protein/swissprot_format_cases/P60137.txt"
    bad.write_text(real.read_text()[: len(real.read_text()) // 2] if real.exists() else entry[:500])
    out = tmp_path / "store"
    code, err = run(capsys, *extract_args(tiny_esm2, bad, out))
    assert_clean_failure(code, err, out, "broken.dat")
    table = REPO / "domains/sequence/data/oas_human_igg_memory_b_vh.csv"
    code, err = run(capsys, *extract_args(tiny_esm2, table, out, "--id-col", "seq_id", "--seq-col", "heavy_seq"))
    assert_clean_failure(code, err, out, "heavy_seq", "sequence_alignment_aa")


def test_nan_weights_give_a_clear_error_and_no_partial_store(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ckpt = write_esm2_checkpoint(tmp_path / "esm2_t1_nan.pt", num_layers=1)
    data = torch.load(ckpt, weights_only=False)
    data["model"]["encoder.sentence_encoder.embed_tokens.weight"][:] = float("nan")
    torch.save(data, ckpt)
    fasta = tmp_path / "in.fasta"
    fasta.write_text(">a\nMKTAYAK\n")
    out = tmp_path / "store"
    code, err = run(capsys, *extract_args(ckpt, fasta, out))
    assert_clean_failure(code, err, out, "non-finite")


def test_thera_sabdab_one_record_per_chain_end_to_end(capsys, tiny_esm2: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import pandas as pd

    table = tmp_path / "thera.csv"
    pd.read_csv(REPO / "domains/sequence/data/therasabdab.csv").head(12).to_csv(table, index=False)
    out = tmp_path / "store"
    code, err = run(capsys, *extract_args(tiny_esm2, table, out, "--id-col", "Therapeutic", "--seq-col", "HC:heavy",
                                        "--seq-col", "LC:light", "--meta-cols", "CH1 Isotype", "--truncate"))
    assert code == 0, err
    import workbench

    obs = workbench.open_store(out).obs()
    assert set(obs["chain"]) == {"heavy", "light"}
    assert obs.groupby("sequence_id")["chain"].nunique().max() == 1
    assert obs.loc[obs["sequence_id"] == "Abagovomab|heavy", "CH1 Isotype"].unique().tolist() == ["G1"]


def test_entry_point_subprocess_exit_code(tmp_path: Path) -> None:
    fasta = tmp_path / "in.fasta"
    fasta.write_text(">x\nMKT*AK\n")
    proc = subprocess.run([sys.executable, "-m", "workbench.cli", *extract_args("sapiens-vh", fasta, tmp_path / "o")],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "'x'" in proc.stderr


def test_models_lists_cards(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("antiberty", "sapiens-vh", "sapiens-vl", "esm2_t6_8M_UR50D", "esm2_t33_650M_UR50D"):
        assert name in out


def test_app_refuses_a_folder_that_is_not_a_catalog(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from workbench.cli import main

    (tmp_path / "notacatalog").mkdir()
    assert main(["app", str(tmp_path / "notacatalog"), "--port", "8599"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("workbench: error:") and len(err.splitlines()) == 1
