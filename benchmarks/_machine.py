"""Machine facts shared by the benchmark scripts."""

from __future__ import annotations

import platform
from collections.abc import Callable
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (``platform.processor()`` where that is unavailable)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def record(text: str, *, write: bool = True) -> None:
    """Print a benchmark's markdown section and, unless ``write`` is false, append it to benchmarks/RESULTS.md."""
    print(text)
    if write:
        with open(Path(__file__).resolve().parent / "RESULTS.md", "a") as fh:
            fh.write("\n" + text)


def demo_benchmark(description: str, default_out: Path, demo_args: list[str], report: Callable[[Path, float | None], str]) -> None:
    """The command line of a demo benchmark: ``--out``, ``--reuse`` and ``--no-write``; unless ``--reuse``, deletes
    ``--out`` and times ``workbench demo <demo_args> --out OUT`` in a fresh process; then records ``report(out, wall)``."""
    import argparse
    import shutil
    import subprocess
    import sys
    import time

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, default=default_out)
    parser.add_argument("--reuse", action="store_true", help="keep what is in --out (no end-to-end time)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    wall = None
    if not args.reuse:
        shutil.rmtree(args.out, ignore_errors=True)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "workbench.cli", "demo", *demo_args, "--out", str(args.out), "--no-progress"],
                       check=True)
        wall = time.perf_counter() - t0
    record(report(args.out, wall), write=not args.no_write)
