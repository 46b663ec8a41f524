"""Serving the app and driving it in a real browser (tests, benchmarks). Not named `testing`: Streamlit puts this
folder on sys.path, where that name would shadow the `testing` namespace package anndata imports."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["alive", "app_server_pids", "chromium_path", "free_port", "serve_app", "stop_app", "wait_answering",
           "wait_rendered"]


def chromium_path() -> str | None:
    """Debian's chromium (never a downloaded browser), or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (an exited process nobody has reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (or it just went away): os.kill found it
    return stat.rpartition(")")[2].split()[0] != "Z"


def app_server_pids(catalog: str | Path | None = None, port: int | None = None) -> list[int]:
    """Live ``streamlit run`` processes whose command line names ``catalog`` (``--catalog``, resolved) and / or
    ``--server.port port``, found in ``/proc`` (Linux; an empty list elsewhere)."""
    want_catalog = str(Path(catalog).resolve()) if catalog is not None else None
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        pairs = set(zip(args, args[1:]))
        if ("streamlit", "run") not in pairs or int(entry.name) == os.getpid():
            continue
        if want_catalog is not None and ("--catalog", want_catalog) not in pairs:
            continue
        if port is not None and ("--server.port", str(port)) not in pairs:
            continue
        if alive(int(entry.name)):
            found.append(int(entry.name))
    return sorted(found)


def wait_answering(url: str, proc: subprocess.Popen[Any], timeout: float = 90) -> None:
    """Wait until the Streamlit server at ``url`` answers its health check; RuntimeError when ``proc`` (the
    ``workbench app`` serving it) exits first or ``timeout`` seconds pass."""
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"the app at {url} did not start (exit status {proc.poll()})")
        time.sleep(0.3)


def _kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_app(proc: subprocess.Popen[Any], catalog: str | Path, port: int, *, timeout: float = 20) -> list[int]:
    """Stop a ``workbench app`` started in its own session (``start_new_session=True``): SIGTERM, then SIGKILL to its
    group after ``timeout`` seconds; then kill any Streamlit server of ``catalog`` on ``port`` still alive (with its
    group). Returns the pids of such leftovers (the launcher's bug, should there be any)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            proc.wait()
    _kill_group(proc.pid)
    leftovers = app_server_pids(catalog, port)
    for pid in leftovers:
        try:
            if os.getpgid(pid) != os.getpgid(0):  # never this process's own group
                _kill_group(os.getpgid(pid))
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return leftovers


@contextlib.contextmanager
def serve_app(catalog: str | Path, *, port: int | None = None, log: IO[str] | None = None,
              timeout: float = 90) -> Iterator[str]:
    """Run ``workbench app CATALOG --port N`` in the background; yield its base URL once it answers. It is stopped
    afterwards, whatever happened (the server, its process group and any Streamlit process left on that catalog and
    port), and gets SIGTERM from Linux should this process die first."""
    from workbench._app_launch import parent_death_preexec

    port = port or free_port()
    proc = subprocess.Popen([sys.executable, "-m", "workbench.cli", "app", str(catalog), "--port", str(port)],
                            stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, preexec_fn=parent_death_preexec())
    url = f"http://127.0.0.1:{port}"
    try:
        wait_answering(url, proc, timeout)
        yield url
    finally:
        leftovers = stop_app(proc, catalog, port)
        if leftovers:
            warnings.warn(f"killed Streamlit processes {leftovers} that outlived `workbench app` on {catalog}",
                          stacklevel=2)


def wait_rendered(page: Any, text: str, *, timeout: float = 60_000) -> None:
    """Wait until ``text`` is on a Playwright ``page`` and Streamlit has finished running the script."""
    page.get_by_text(text, exact=False).first.wait_for(timeout=timeout)
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=timeout)
