"""Machine facts shared by the benchmark scripts."""

from __future__ import annotations

import platform
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
