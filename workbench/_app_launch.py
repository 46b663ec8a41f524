"""``workbench app``'s launcher: refuse a busy port up front, run Streamlit as a child in its own process group, pass
stop signals on to that group, and leave no process behind.

A stopped ``workbench app`` (SIGTERM, SIGINT / Ctrl-C, SIGHUP) forwards the signal to the Streamlit server's process
group, waits for the server, kills the group if it is still there a few seconds later, and returns the server's
status. Should ``workbench app`` itself die without a chance to clean up (SIGKILL), Linux still sends the server
SIGTERM (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from workbench.errors import WorkbenchError

__all__ = ["STOP_SIGNALS", "check_port_free", "parent_death_preexec", "run_app", "streamlit_command", "supervise"]

STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
"""The signals ``workbench app`` passes on to the Streamlit server's process group."""

_IPV6_UNAVAILABLE = {errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT, errno.ENOPROTOOPT, errno.EINVAL}


def _try_listen(family: socket.AddressFamily, host: str, port: int) -> None:
    """Bind and listen on ``(host, port)`` the way Streamlit's server does (SO_REUSEADDR; dual stack on IPv6), then
    close the socket; raises the OSError a busy or forbidden port gives."""
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        if os.name != "nt":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
        sock.listen(1)


def check_port_free(port: int, address: str | None = None) -> None:
    """Raise WorkbenchError unless Streamlit could listen on ``port``: by default it binds the IPv6 dual-stack wildcard
    ``::`` (falling back to ``0.0.0.0`` without IPv6), or ``address`` when one is given."""
    if not 0 < port < 65536:
        raise WorkbenchError(f"port {port} is not a TCP port (pass --port N with 0 < N < 65536)")
    try:
        if address is not None:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            _try_listen(family, address, port)
        elif socket.has_ipv6:
            try:
                _try_listen(socket.AF_INET6, "::", port)
            except OSError as exc:
                if exc.errno not in _IPV6_UNAVAILABLE:
                    raise
                _try_listen(socket.AF_INET, "0.0.0.0", port)
        else:
            _try_listen(socket.AF_INET, "0.0.0.0", port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise WorkbenchError(f"port {port} is in use (pass --port N)") from None
        if exc.errno == errno.EACCES:
            raise WorkbenchError(f"port {port} needs privileges this user lacks (pass --port N)") from None
        raise WorkbenchError(f"cannot listen on port {port}: {exc.strerror or exc} (pass --port N)") from None


def streamlit_command(script: str | Path, catalog: str | Path, port: int) -> list[str]:
    """The ``python -m streamlit run`` command line that serves ``script`` on ``catalog`` at ``port``."""
    return [sys.executable, "-m", "streamlit", "run", str(script), "--server.port", str(port),
            "--server.headless", "true", "--browser.gatherUsageStats", "false", "--client.toolbarMode", "viewer",
            "--", "--catalog", str(Path(catalog).resolve())]


def parent_death_preexec() -> Callable[[], None] | None:
    """A ``preexec_fn`` that asks Linux to send the child SIGTERM when its parent dies (strictly: when the thread that
    started it ends, so start children from a thread that outlives them), or None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # libc, linked into the interpreter
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(1)

    return preexec


def _signal_group(pgid: int, sig: int) -> None:
    """``killpg`` that ignores a group that is already gone."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def supervise(command: list[str], *, grace: float = 5.0, on_start: Callable[[int], None] | None = None) -> int:
    """Run ``command`` as a child in a new session (its own process group) until it exits; return its exit status
    (128 + N when signal N ended it).

    While it runs, SIGTERM / SIGINT / SIGHUP sent to this process are forwarded to the child's group (handlers are
    installed only on the main thread and restored afterwards). A child still running ``grace`` seconds after the first
    stop signal, or at a second one, is killed with its group; whatever remains of the group once the child is gone is
    killed too, and the child gets SIGTERM from Linux should this process die first. ``on_start(pid)`` is called once
    the child runs and the handlers are in place."""
    child = subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True,
                             preexec_fn=parent_death_preexec())
    pgid = child.pid  # a new session's leader: its pid is the group id
    timers: list[threading.Timer] = []

    def forward(signum: int, frame: Any) -> None:  # noqa: ARG001 - a signal handler's signature
        if timers:  # a second stop signal: no more waiting
            _signal_group(pgid, signal.SIGKILL)
            return
        _signal_group(pgid, signum)
        timer = threading.Timer(grace, _signal_group, (pgid, signal.SIGKILL))
        timer.daemon = True
        timers.append(timer)
        timer.start()

    previous: dict[int, Any] = {}
    try:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                previous[sig] = signal.signal(sig, forward)
        if on_start is not None:
            on_start(child.pid)
        status = child.wait()
    except BaseException:
        _signal_group(pgid, signal.SIGKILL)
        child.wait()
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for timer in timers:
            timer.cancel()
        _signal_group(pgid, signal.SIGKILL)  # anything the child left in its group
    return 128 - status if status < 0 else status


def run_app(script: str | Path, catalog: str | Path, *, port: int, grace: float = 5.0,
            out: IO[str] | None = None) -> int:
    """Serve ``catalog`` with Streamlit's ``script`` on ``port`` until the server stops or this process is told to.

    Refuses a busy port (WorkbenchError) before printing anything, then runs the server under :func:`supervise` and
    prints one ``serving ...`` line naming the server's pid. Returns the server's exit status."""
    out = out if out is not None else sys.stdout
    check_port_free(port)

    def announce(pid: int) -> None:
        print(f"serving {catalog} on http://localhost:{port} (streamlit pid {pid}; Ctrl-C stops it)", file=out,
              flush=True)

    return supervise(streamlit_command(script, catalog, port), grace=grace, on_start=announce)
