"""Serving the app and driving it in a real browser (tests, benchmarks). Not named `testing`: Streamlit puts this
folder on sys.path, where that name would shadow the `testing` namespace package anndata imports."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["chromium_path", "free_port", "serve_app", "wait_rendered"]


def chromium_path() -> str | None:
    """Debian's chromium (never a downloaded browser), or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve_app(catalog: str | Path, *, port: int | None = None, log: IO[str] | None = None, timeout: float = 90) -> Iterator[str]:
    """Run ``workbench app CATALOG --port N`` in the background; yield its base URL once it answers, stop it after."""
    port = port or free_port()
    proc = subprocess.Popen([sys.executable, "-m", "workbench.cli", "app", str(catalog), "--port", str(port)],
                            stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the app on {catalog} did not start (exit status {proc.poll()})")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def wait_rendered(page: Any, text: str, *, timeout: float = 60_000) -> None:
    """Wait until ``text`` is on a Playwright ``page`` and Streamlit has finished running the script."""
    page.get_by_text(text, exact=False).first.wait_for(timeout=timeout)
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=timeout)
