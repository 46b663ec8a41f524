"""Fixtures of the real-browser tests: where screenshots go, and `workbench app` served on a free port."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """``test-artifacts/`` (or ``$WORKBENCH_TEST_ARTIFACTS``): screenshots and server logs of the browser tests."""
    out = Path(os.environ.get("WORKBENCH_TEST_ARTIFACTS", ROOT / "test-artifacts"))
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def serve_catalog(artifacts: Path) -> Iterator[Callable[[Path, str], str]]:
    """``serve(catalog, log_name)``: ``workbench app CATALOG --port N`` in the background until the module ends; returns
    the base URL once the server answers. Skips without Debian's chromium, except under CI (``CI=true``), where it
    fails: ``make setup`` installs it."""
    from apps.workbench_app.serving import chromium_path, serve_app

    if chromium_path() is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (make setup installs Debian's chromium)")
        pytest.skip("Debian's chromium is not installed")
    with ExitStack() as stack:

        def serve(catalog: Path, log_name: str) -> str:
            log = stack.enter_context(open(artifacts / log_name, "w"))
            return stack.enter_context(serve_app(catalog, log=log))

        yield serve
