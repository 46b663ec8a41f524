"""The app in a real browser: Debian's chromium, driven by Playwright for Python, against a headless Streamlit server.

Screenshots of every page go to ``test-artifacts/`` (or ``$WORKBENCH_TEST_ARTIFACTS``). No browser is downloaded:
Playwright launches the system's ``chromium``. The test is skipped when chromium is missing, except under CI
(``CI=true``), where it fails: ``make setup`` installs it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from apps.workbench_app.serving import chromium_path

pytestmark = [pytest.mark.slow, pytest.mark.real_model]

CHROMIUM = chromium_path()


@pytest.fixture(scope="module")
def server(serve_catalog: Callable[[Path, str], str], demo_catalog: Path) -> str:
    """``workbench app CATALOG --port N`` on the catalog in the background; the base URL once it answers."""
    return str(serve_catalog(demo_catalog, "streamlit.log"))


def _wait_for_app(page, text: str) -> None:  # type: ignore[no-untyped-def]
    from apps.workbench_app.serving import wait_rendered

    wait_rendered(page, text)
    page.wait_for_timeout(500)


def test_pages_render_real_content_in_chromium(server: str, demo_catalog: Path, artifacts: Path) -> None:
    from playwright.sync_api import sync_playwright

    from workbench.catalog import Catalog

    cat = Catalog.open(demo_catalog)
    var = cat.features
    fid = str(var.sort_values("top_f1", ascending=False).index[0])
    concept = str(var.loc[fid, "top_concept"])
    shots = artifacts
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 2200})
            page.goto(server, wait_until="domcontentloaded")
            _wait_for_app(page, "Concepts captured")
            body = page.inner_text("body")
            assert "antiberty" in body.lower()
            page.screenshot(path=str(shots / "overview.png"), full_page=True)

            # Through the navigation to the feature browser, then straight to the best feature by its URL.
            page.get_by_role("link", name="Feature browser").first.click()
            _wait_for_app(page, "Feature")
            page.screenshot(path=str(shots / "feature_browser.png"), full_page=True)
            page.goto(f"{server}/features?feature={fid}", wait_until="domcontentloaded")
            _wait_for_app(page, fid)
            body = page.inner_text("body")
            assert fid in body and concept in body
            page.screenshot(path=str(shots / "feature.png"), full_page=True)

            for path, text, name in (("concepts", "Concept", "concepts"), ("discovery", "Discovery", "discovery"),
                                     ("atlas", "atlas", "atlas"), ("live", "sequence", "live")):
                page.goto(f"{server}/{path}", wait_until="domcontentloaded")
                _wait_for_app(page, text)
                assert "Traceback" not in page.inner_text("body")
                page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
        finally:
            browser.close()
    for name in ("overview", "feature_browser", "feature", "concepts", "discovery", "atlas", "live"):
        assert (shots / f"{name}.png").stat().st_size > 10_000, name
