"""Safe I/O of the writing verbs (issue 16, part 1): outputs checked before any work, one writer per output, no
temporary file left in a finished output, one file mode, ``--overwrite`` everywhere, SIGTERM reported."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

import workbench._extract as extract_mod
import workbench.cli as cli
from workbench._io import OutputLock, check_writable, lock_path, output_mode, remove_temps
from workbench.cli import build_parser, main
from workbench.errors import WorkbenchError

REPO = Path(__file__).resolve().parents[2]
LEFTOVER_PATTERNS = ("*.lock", "*.partial", "*.tmp-*", ".*.tmp", "*.probe-*")


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def leftovers(root: Path) -> list[Path]:
    """Locks, work folders, temporary files and probes anywhere under ``root``."""
    return sorted({p for pattern in LEFTOVER_PATTERNS for p in root.rglob(pattern)})


def assert_refused(code: int, err: str, out: Path, *words: str) -> None:
    """Exit 2, one ``workbench: error:`` line naming ``words``, no output and nothing else left behind."""
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("workbench: error:"), err
    for w in words:
        assert w in lines[0], lines[0]
    assert not out.exists() and not out.with_name(out.name + ".partial").exists()
    assert not lock_path(out).exists()
    if out.parent.is_dir():
        assert not leftovers(out.parent)


@pytest.fixture(scope="module")
def tiny(tiny_catalog: Path) -> dict[str, Path]:
    """The tiny catalog's store (40 chains, layer 1), SAE (64 latents) and catalog."""
    root = tiny_catalog.parent
    return {"store": root / "store", "sae": root / "sae", "catalog": tiny_catalog}


def extract_args(model: Path, fasta: Path, out: Path) -> list[str]:
    """``workbench extract`` of layer 1 into ``out``."""
    return ["extract", "--model", str(model), "--input", str(fasta), "--layers", "1", "--out", str(out),
            "--no-progress"]


def verb_args(verb: str, tiny: dict[str, Path], tiny_esm2: Path, oas_fasta: Path, out: Path) -> list[str]:
    """A complete command line of ``verb`` writing ``out``."""
    store, sae = str(tiny["store"]), str(tiny["sae"])
    return {
        "extract": extract_args(tiny_esm2, oas_fasta, out),
        "train": ["train", "--store", store, "--out", str(out), "--layer", "1", "--width", "64", "--k", "8",
                  "--n-tokens", "2560", "--batch-size", "256", "--loss-recovered-sequences", "0", "--no-progress"],
        "sweep": ["sweep", "--store", store, "--out", str(out), "--layer", "1", "--width", "64", "--k", "8",
                  "--n-tokens", "2560", "--batch-size", "256", "--loss-recovered-sequences", "0", "--no-progress"],
        "annotate": ["annotate", "--store", store, "--sae", sae, "--source", "motif", "--out", str(out),
                     "--n-causal", "0", "--permutations", "2", "--no-progress"],
        "export": ["export", str(tiny["catalog"]), "--out", str(out), "--format", "csv"],
        "universality": ["universality", "--sae-a", sae, "--store-a", store, "--sae-b", sae, "--store-b", store,
                         "--tokens", "0", "--out", str(out), "--no-progress"],
    }[verb]


WRITING_VERBS = ["extract", "train", "sweep", "annotate", "export", "universality"]


# -- 1. an output that cannot be written: refused before any work ------------------------------------------------
@pytest.mark.parametrize("verb", WRITING_VERBS)
def test_unwritable_out_is_refused_before_any_work(  # type: ignore[no-untyped-def]
        verb: str, tiny: dict[str, Path], tiny_esm2: Path, oas_fasta: Path, tmp_path: Path, capsys,
        monkeypatch) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder\n")
    out = blocker / "sub" / ("table.csv" if verb == "universality" else "out")
    started: list[str] = []
    real = cli._run
    monkeypatch.setattr(cli, "_run", lambda args: (started.append(args.command), real(args))[1])
    code, err = run(capsys, *verb_args(verb, tiny, tiny_esm2, oas_fasta, out))
    assert_refused(code, err, out, "cannot write", str(out), str(blocker), "not a folder")
    assert started == []  # nothing read or computed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"] and blocker.read_text() == "not a folder\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
@pytest.mark.parametrize("verb", ["extract", "annotate"])
def test_read_only_folder_is_refused_before_any_work(verb: str, tiny: dict[str, Path], tiny_esm2: Path, oas_fasta: Path,
                                                     tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        out = ro / "out"
        code, err = run(capsys, *verb_args(verb, tiny, tiny_esm2, oas_fasta, out))
        assert_refused(code, err, out, "cannot write", str(out), "permission denied")
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_check_writable_creates_missing_folders_and_names_the_reason(tmp_path: Path) -> None:
    created = check_writable(tmp_path / "a" / "b" / "out")
    assert created == [tmp_path / "a", tmp_path / "a" / "b"] and not leftovers(tmp_path)
    (tmp_path / "f").write_text("")
    with pytest.raises(WorkbenchError, match="is not a folder"):
        check_writable(tmp_path / "f" / "x" / "out")
    assert not (tmp_path / "f" / "x").exists()


def test_a_system_error_left_unhandled_is_one_line(capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    def disk_full(args):  # type: ignore[no-untyped-def]
        raise OSError(28, "No space left on device", "/data/store/shards/shard-00001/layer_1.npy")

    monkeypatch.setattr(cli, "_run", disk_full)
    code, err = run(capsys, "info", "somewhere")
    assert code == 2 and err.strip().splitlines() == [err.strip()]
    assert err.startswith("workbench: error:") and "No space left on device" in err and "Traceback" not in err


# -- 2. one writer per output ------------------------------------------------------------------------------------
def test_second_writer_of_the_same_out_is_refused(tiny_esm2: Path, oas_fasta: Path, tmp_path: Path,
                                                  capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "store"
    args = extract_args(tiny_esm2, oas_fasta, out)
    with OutputLock(out):  # another writer (an open file description of its own, as another process has)
        assert lock_path(out).read_text().strip() == str(os.getpid())
        code, err = run(capsys, *args)
        assert code == 2 and err.strip().splitlines() == [
            f"workbench: error: {out} is being written by another process (pid {os.getpid()})"]
        assert not out.exists() and not out.with_name("store.partial").exists() and lock_path(out).exists()
    assert not lock_path(out).exists()  # the holder removes it
    lock_path(out).write_text("999999\n")  # left by a killed holder: its flock is free, so it is taken over
    code, err = run(capsys, *args)
    assert code == 0, err
    assert out.is_dir() and not leftovers(tmp_path)


def test_lock_is_refused_in_another_process(tmp_path: Path) -> None:
    out = tmp_path / "catalog"
    holder = OutputLock(out)
    holder.acquire()
    try:
        code = ("import sys; from workbench._io import OutputLock\n"
                "try:\n    OutputLock(sys.argv[1]).acquire()\nexcept Exception as exc:\n    print(exc)\n")
        proc = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, cwd=REPO,
                              timeout=120)
        assert proc.stdout.strip() == f"{out} is being written by another process (pid {os.getpid()})", proc.stderr
    finally:
        holder.release()
    assert not lock_path(out).exists()


# -- 3. a resumed extraction leaves no temporary files -----------------------------------------------------------
def test_resumed_extract_leaves_no_temporary_files(tiny_esm2: Path, oas_fasta: Path, tmp_path: Path, capsys,
                                                   monkeypatch) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "store"
    args = [*extract_args(tiny_esm2, oas_fasta, out), "--shard-tokens", "1500"]
    real = extract_mod._write_shard
    done: list[str] = []

    def dies_after_one(*a, **k):  # type: ignore[no-untyped-def]
        if done:
            raise KeyboardInterrupt  # as if killed during the second shard
        real(*a, **k)
        done.append(a[2].name)

    monkeypatch.setattr(extract_mod, "_write_shard", dies_after_one)
    code, err = run(capsys, *args)
    assert code == 130 and err.strip() == "workbench: extract interrupted; run the same command again to resume"
    work = tmp_path / "store.partial"
    assert not lock_path(out).exists() and (work / "shards" / done[0]).is_dir()
    # what a hard kill leaves: a half-written shard folder of a dead process and a half-written table
    stale = work / "shards" / ".shard-00001.tmp-999999"
    stale.mkdir()
    (stale / "layer_1.npy").write_bytes(b"\0" * 100_000)
    (work / ".sequences.parquet.tmp").write_bytes(b"\0" * 100)
    monkeypatch.setattr(extract_mod, "_write_shard", real)
    code, err = run(capsys, *args)
    assert code == 0, err
    assert not leftovers(tmp_path) and not [p for p in out.rglob("*") if ".tmp" in p.name]


def test_remove_temps_removes_only_temporary_names(tmp_path: Path) -> None:
    for name in (".shard-00001.tmp-12", ".cfg.json.tmp-3", ".sequences.parquet.tmp"):
        (tmp_path / name).mkdir() if name.startswith(".shard") else (tmp_path / name).write_text("")
    (tmp_path / "shard-00000").mkdir()
    (tmp_path / "notes.tmp-1.txt").write_text("")  # not hidden: not ours
    assert len(remove_temps(tmp_path)) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.tmp-1.txt", "shard-00000"]


# -- 4. train refused for too few tokens leaves nothing ----------------------------------------------------------
def test_train_refused_for_too_few_tokens_leaves_nothing(  # type: ignore[no-untyped-def]
        tiny: dict[str, Path], tiny_esm2: Path, oas_fasta: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "sae"
    args = verb_args("train", tiny, tiny_esm2, oas_fasta, out)
    args[args.index("--n-tokens") + 1] = str(2_000_000)
    args[args.index("--batch-size") + 1] = str(1_000_000)
    code, err = run(capsys, *args)
    assert_refused(code, err, out, "fewer training tokens", "1000000")
    assert list(tmp_path.iterdir()) == []


# -- 5. --overwrite on every verb that replaces an output --------------------------------------------------------
def test_every_writing_verb_has_overwrite() -> None:
    parser = build_parser()
    verbs = next(a for a in parser._actions if a.dest == "command").choices
    with_out = {name for name, p in verbs.items() if any("--out" in a.option_strings for a in p._actions)}
    # sweep and demo add runs and stages into their folder and reuse what is finished there: nothing is replaced
    assert with_out - {"sweep", "demo"} == {"extract", "train", "annotate", "export", "universality"}
    for name in with_out - {"sweep", "demo"}:
        assert any("--overwrite" in a.option_strings for a in verbs[name]._actions), name


def test_export_into_an_existing_folder_needs_overwrite(tiny: dict[str, Path], tiny_esm2: Path, oas_fasta: Path,
                                                        tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "export"
    out.mkdir()
    (out / "old.txt").write_text("old")
    args = verb_args("export", tiny, tiny_esm2, oas_fasta, out)
    code, err = run(capsys, *args)
    assert code == 2 and err.strip().splitlines() == [err.strip()] and "--overwrite" in err and str(out) in err
    assert [p.name for p in out.iterdir()] == ["old.txt"] and not leftovers(tmp_path)
    code, err = run(capsys, *args, "--overwrite")
    assert code == 0, err
    assert (out / "features.csv").is_file() and not (out / "old.txt").exists() and not leftovers(tmp_path)
    table = tmp_path / "table.csv"  # universality's table is not silently replaced either
    table.write_text("old\n")
    code, err = run(capsys, *verb_args("universality", tiny, tiny_esm2, oas_fasta, table))
    assert code == 2 and "already exists" in err and "--overwrite" in err and table.read_text() == "old\n"


# -- 6. one file mode for all outputs ----------------------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_saved_sae_files_follow_the_umask(tmp_path: Path, umask: int) -> None:
    from workbench.sae import SAEConfig, SparseAutoencoder, save_sae

    previous = os.umask(umask)
    try:
        assert output_mode() == 0o666 & ~umask
        folder = save_sae(SparseAutoencoder(SAEConfig(d_in=8, width=16, k=2)), tmp_path / "sae")
    finally:
        os.umask(previous)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}
    assert modes == {"sae.safetensors": 0o666 & ~umask, "cfg.json": 0o666 & ~umask}


# -- 7. SIGTERM is reported like Ctrl-C --------------------------------------------------------------------------
def test_sigterm_is_reported_and_the_lock_released(tiny: dict[str, Path], tiny_esm2: Path, oas_fasta: Path,
                                                   tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "sae"
    args = verb_args("train", tiny, tiny_esm2, oas_fasta, out)
    args[args.index("--n-tokens") + 1] = str(64 * 10_000_000)  # far more steps than the test waits for
    args[args.index("--batch-size") + 1] = "64"
    proc = subprocess.Popen([sys.executable, "-m", "workbench.cli", *args, "--checkpoint-every", "0"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not out.with_name("sae.partial").is_dir():  # training has started (the handler is installed)
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        assert lock_path(out).read_text().strip() == str(proc.pid)
        code, err = run(capsys, *args)  # a second writer meanwhile
        assert code == 2 and f"is being written by another process (pid {proc.pid})" in err
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143, stderr
    lines = stderr.strip().splitlines()
    assert lines == ["workbench: train interrupted by SIGTERM; run the same command again to resume"], stderr
    assert not out.exists() and not lock_path(out).exists()
    assert out.with_name("sae.partial").is_dir()  # kept for the resume, as after Ctrl-C
