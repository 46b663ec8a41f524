"""``workbench app`` as a server launcher: a busy port is refused before anything is printed, and a stop signal (or the
launcher's own death) takes the Streamlit server and its process group down with it, freeing the port."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from apps.workbench_app.serving import alive, app_server_pids, free_port, stop_app, wait_answering
from workbench._app_launch import check_port_free
from workbench.cli import main
from workbench.errors import WorkbenchError


def _listening_socket() -> tuple[socket.socket, int]:
    """A socket listening on a free port of 127.0.0.1, and the port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return sock, int(sock.getsockname()[1])


def _wait_gone(pids: list[int], timeout: float = 20) -> list[int]:
    """Wait up to ``timeout`` seconds for ``pids`` to end; the ones still alive."""
    deadline = time.time() + timeout
    while any(alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


def test_app_refuses_a_busy_port_before_printing(tiny_catalog: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sock, port = _listening_socket()
    with sock:
        assert main(["app", str(tiny_catalog), "--port", str(port)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [f"workbench: error: port {port} is in use (pass --port N)"]
    assert app_server_pids(tiny_catalog, port) == []


def test_app_refuses_a_busy_port_before_building_the_demo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sock, port = _listening_socket()
    with sock:
        assert main(["app", "--demo-out", str(tmp_path / "demo"), "--port", str(port)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and not (tmp_path / "demo").exists()
    assert err.splitlines() == [f"workbench: error: port {port} is in use (pass --port N)"]


def test_check_port_free_sees_every_kind_of_listener() -> None:
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::1")):
        try:
            sock = socket.socket(family)
        except OSError:  # no IPv6 here
            continue
        with sock:
            sock.bind((host, 0))
            sock.listen(1)
            port = sock.getsockname()[1]
            with pytest.raises(WorkbenchError, match=f"port {port} is in use"):
                check_port_free(port)
        check_port_free(port)  # free again once closed


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGKILL],
                         ids=lambda s: signal.Signals(s).name)
def test_stopping_workbench_app_stops_its_server(tiny_catalog: Path, tmp_path: Path, sig: signal.Signals) -> None:
    """SIGTERM / SIGINT / SIGHUP are forwarded to the server's group; SIGKILL, which the launcher cannot catch, reaches
    the server as SIGTERM from Linux (parent-death signal). Either way nothing of the run is left and the port is
    free."""
    pytest.importorskip("streamlit")
    port = free_port()
    log = tmp_path / "app.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "workbench.cli", "app", str(tiny_catalog), "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_answering(f"http://127.0.0.1:{port}", proc)
        first = log.read_text().splitlines()[0]
        match = re.fullmatch(rf"serving {re.escape(str(tiny_catalog))} on http://localhost:{port} "
                             r"\(streamlit pid (\d+); Ctrl-C stops it\)", first)
        assert match, first
        server = int(match.group(1))
        assert alive(server) and app_server_pids(tiny_catalog, port) == [server]
        with pytest.raises(WorkbenchError, match="in use"):
            check_port_free(port)

        proc.send_signal(sig)
        status = proc.wait(timeout=30)
        if sig == signal.SIGKILL:
            assert status == -signal.SIGKILL
        else:  # the server's own status: 0 after a graceful stop, 128 + N when signal N ended it
            assert status in (0, 128 + sig, 128 + signal.SIGKILL), log.read_text()
        assert _wait_gone([server]) == [], f"the server {server} outlived `workbench app`"
        assert app_server_pids(tiny_catalog) == []
        check_port_free(port)
    finally:
        leftovers = stop_app(proc, tiny_catalog, port)  # whatever happened above: nothing of this run stays up
    assert leftovers == [], f"Streamlit processes {leftovers} outlived `workbench app`"


_STUBBORN = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGINT, signal.SIG_IGN)
grandchild = subprocess.Popen(["sleep", "300"])  # inherits the ignored SIGTERM
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(f"{os.getpid()} {grandchild.pid}")
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(300)
"""


@pytest.mark.parametrize("grace, signals", [(1.0, [signal.SIGTERM]), (120.0, [signal.SIGTERM, signal.SIGINT])],
                         ids=["grace-expires", "second-signal"])
def test_supervise_kills_a_child_that_ignores_the_stop_signal_with_its_group(
        tmp_path: Path, grace: float, signals: list[signal.Signals]) -> None:
    """A child that ignores SIGTERM (and has a child of its own) is killed with its whole group once ``grace`` seconds
    have passed after the signal, or at once at a second signal; the supervisor returns 128 + SIGKILL."""
    ready = tmp_path / "ready"
    code = ("import sys; from workbench._app_launch import supervise; "
            f"sys.exit(supervise([sys.executable, '-c', {_STUBBORN!r}, {str(ready)!r}], grace={grace}))")
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    pids: list[int] = []
    try:
        deadline = time.time() + 60
        while not ready.exists():
            assert proc.poll() is None and time.time() < deadline, "the stubborn child did not start"
            time.sleep(0.1)
        pids = [int(p) for p in ready.read_text().split()]
        start = time.time()
        for sig in signals:
            proc.send_signal(sig)
            time.sleep(0.3)
        assert proc.wait(timeout=60) == 128 + signal.SIGKILL
        assert time.time() - start < 30
        assert _wait_gone(pids, timeout=10) == [], "a process of the supervised group outlived the supervisor"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
