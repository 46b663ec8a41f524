"""Execute notebooks from their jupytext ``.py`` source and write the paired ``.ipynb`` with its outputs.

    python notebooks/render.py                      # every notebook of this folder
    python notebooks/render.py antibody_catalog     # one (name or path)

Each notebook runs in a fresh ``python3`` kernel (ipykernel) from this folder, as ``jupyter lab`` would run it, with
the ``WORKBENCH_NB_*`` environment variables of this process (see README.md); a cell that raises stops it and
nothing is written. The committed ``.ipynb`` files are rendered this way on the demo outputs.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
NOTEBOOKS = ("antibody_catalog", "bring_your_own", "imaging_catalog")


def render(name: str, *, timeout: int = 1800) -> Path:
    """Execute ``<name>.py`` and write ``<name>.ipynb`` beside it; returns the written path."""
    import jupytext
    from nbclient import NotebookClient

    source = HERE / f"{Path(name).stem}.py"
    nb = jupytext.read(source)
    NotebookClient(nb, kernel_name="python3", timeout=timeout, record_timing=False,
                   resources={"metadata": {"path": str(HERE)}}).execute()
    target = source.with_suffix(".ipynb")
    jupytext.write(nb, target)
    return target


def main(argv: list[str]) -> None:
    for name in argv or NOTEBOOKS:
        t0 = time.perf_counter()
        path = render(name)
        print(f"{path.name}: {path.stat().st_size / 1e3:.0f} kB in {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
