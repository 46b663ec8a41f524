"""The app in a real browser: Debian's chromium, driven by Playwright for Python, against a headless Streamlit server.

Screenshots of every page go to ``test-artifacts/`` (or ``$WORKBENCH_TEST_ARTIFACTS``). No browser is downloaded:
Playwright launches the system's ``chromium``. The test is skipped when chromium is missing, except under CI
(``CI=true``), where it fails: ``make setup`` installs it.

The catalog is the antibody demo's: ``$WORKBENCH_DEMO_CATALOG`` or ``benchmarks/out/demo/catalog`` when one of them
opens, else the ``demo_catalog`` fixture builds one. Chromium resolves no host but this machine
(``--host-resolver-rules``), and every request the pages make is recorded: the tests fail on any request that
leaves the machine (fonts and icons from a CDN, say), so they check that the app works offline.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from apps.workbench_app.serving import chromium_path

pytestmark = [pytest.mark.slow, pytest.mark.real_model]

CHROMIUM = chromium_path()
ROOT = Path(__file__).resolve().parents[2]
OFFLINE_ARGS = ["--no-sandbox", "--disable-gpu",
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1"]
"""Chromium's flags: no host but this machine resolves, so nothing can be fetched from outside."""


@pytest.fixture(scope="module")
def browser_catalog(request: pytest.FixtureRequest) -> Path:
    """The demo catalog: ``$WORKBENCH_DEMO_CATALOG`` or ``benchmarks/out/demo/catalog`` when it opens, else built."""
    from workbench.catalog import Catalog
    from workbench.errors import WorkbenchError

    for value in (os.environ.get("WORKBENCH_DEMO_CATALOG"), ROOT / "benchmarks" / "out" / "demo" / "catalog"):
        if value:
            try:
                return Catalog.open(value).path.parent
            except WorkbenchError:
                continue
    return Path(request.getfixturevalue("demo_catalog"))


@pytest.fixture(scope="module")
def server(serve_catalog: Callable[[Path, str], str], browser_catalog: Path) -> str:
    """``workbench app CATALOG --port N`` on the catalog in the background; the base URL once it answers."""
    return str(serve_catalog(browser_catalog, "streamlit.log"))


class Requests:
    """Every request a Playwright page makes, failed ones and console errors (attach with :meth:`watch`)."""

    def __init__(self) -> None:
        self.urls: list[str] = []
        self.failed: list[str] = []
        self.console: list[str] = []

    def watch(self, page: Any) -> Any:
        page.on("request", lambda r: self.urls.append(r.url))
        page.on("requestfailed", lambda r: self.failed.append(f"{r.url} {r.failure}"))
        page.on("console", lambda m: self.console.append(m.text) if m.type == "error" else None)
        return page

    def external(self) -> list[str]:
        """Requests to anywhere but this machine (inline ``data:`` / ``blob:`` URLs are local)."""
        local = {"127.0.0.1", "localhost"}
        return [u for u in self.urls
                if urlsplit(u).scheme not in ("data", "blob") and urlsplit(u).hostname not in local]


def _wait_for_app(page, text: str) -> None:  # type: ignore[no-untyped-def]
    from apps.workbench_app.serving import wait_rendered

    wait_rendered(page, text)
    page.wait_for_timeout(500)


def test_pages_render_real_content_in_chromium(server: str, browser_catalog: Path, artifacts: Path) -> None:
    from playwright.sync_api import sync_playwright

    from workbench.catalog import Catalog

    cat = Catalog.open(browser_catalog)
    var = cat.features
    fid = str(var.sort_values("top_f1", ascending=False).index[0])
    concept = str(var.loc[fid, "top_concept"])
    shots = artifacts
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=OFFLINE_ARGS)
        seen = Requests()
        try:
            page = seen.watch(browser.new_page(viewport={"width": 1400, "height": 2200}))
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
    assert not seen.external(), seen.external()[:10]
    assert not [f for f in seen.failed if "ERR_NAME_NOT_RESOLVED" in f], seen.failed[:10]


def test_daily_work_in_chromium_offline(server: str, browser_catalog: Path, artifacts: Path) -> None:
    """Search opens its first hit; the feature page draws its logo; two features compared side by side; icons,
    fonts and the tab icon all come from this machine (no request leaves it)."""
    from playwright.sync_api import sync_playwright

    from workbench.catalog import Catalog

    cat = Catalog.open(browser_catalog)
    query = "CDR3"
    first = str(cat.search(query, limit=50)["feature"].iloc[0])
    other = str(cat.neighbors(first, 1)["feature"].iloc[0])
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=OFFLINE_ARGS)
        seen = Requests()
        try:
            page = seen.watch(browser.new_page(viewport={"width": 1400, "height": 2400}))
            page.goto(f"{server}/features", wait_until="domcontentloaded")
            _wait_for_app(page, "Search features")
            box = page.get_by_role("textbox", name="Search features")
            box.fill(query)
            box.press("Enter")
            page.get_by_role("heading", name=first).first.wait_for(timeout=60_000)  # the first hit opens
            _wait_for_app(page, f"Search results for '{query}'")
            assert f"feature={first}" in page.url
            # its sequence logo: a drawn image with its caption
            logo = page.locator("[data-testid='stImage'] img").first
            logo.wait_for(timeout=60_000)
            assert page.evaluate("(img) => img.complete && img.naturalWidth > 200", logo.element_handle())
            assert f"windows of {first}" in page.inner_text("body")
            page.screenshot(path=str(artifacts / "search_logo.png"), full_page=True)

            # a click on a result row (its marker, left of the first cell) opens that feature
            hits = [str(f) for f in cat.search(query, limit=50)["feature"]]
            assert len(hits) >= 2
            grid = page.locator('[data-testid="stDataFrame"]').first
            grid.wait_for(timeout=60_000)
            box_ = grid.bounding_box()
            page.mouse.click(box_["x"] + 12, box_["y"] + 35 + 35 * 1 + 17)  # header row, then row 2 (35 px rows)
            page.get_by_role("heading", name=hits[1]).first.wait_for(timeout=60_000)
            _wait_for_app(page, "Sequence logo")
            assert f"feature={hits[1]}" in page.url

            # two features side by side (the model runs on their top sequences)
            page.goto(f"{server}/compare?a={first}&b={other}", wait_until="domcontentloaded")
            _wait_for_app(page, "Concept associations side by side")
            body = page.inner_text("body")
            assert f"A: {first}" in body and f"B: {other}" in body and "Firing sets" in body
            assert f"A {first}" in body and f"B {other}" in body  # both features' rows on the same sequences
            page.screenshot(path=str(artifacts / "compare.png"), full_page=True)

            # offline: the Material icon font comes from the app, the tab icon is inline
            icon_font = [u for u in seen.urls if "MaterialSymbols" in u]
            assert icon_font and all(urlsplit(u).hostname in ("127.0.0.1", "localhost") for u in icon_font)
            favicon = page.evaluate("() => [...document.querySelectorAll(\"link[rel*='icon']\")].map(l => l.href)")
            assert favicon and all(h.startswith(("data:", server)) for h in favicon), favicon
        finally:
            browser.close()
    assert not seen.external(), seen.external()[:10]
    assert not [f for f in seen.failed if "ERR_NAME_NOT_RESOLVED" in f], seen.failed[:10]
    assert not [c for c in seen.console if "ERR_NAME_NOT_RESOLVED" in c], seen.console[:10]
