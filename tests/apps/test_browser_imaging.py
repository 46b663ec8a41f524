"""The Images page in a real browser: Debian's chromium, driven by Playwright for Python, against a headless Streamlit
server on the tiny imaging catalog.

A screenshot goes to ``test-artifacts/`` (or ``$WORKBENCH_TEST_ARTIFACTS``). No browser is downloaded: Playwright
launches the system's ``chromium``. The test is skipped when chromium is missing, except under CI (``CI=true``),
where it fails: ``make setup`` installs it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from apps.workbench_app._images import GAP_PX
from apps.workbench_app.serving import chromium_path

pytestmark = [pytest.mark.slow]

CHROMIUM = chromium_path()


@pytest.fixture(scope="module")
def server(serve_catalog: Callable[[Path, str], str], imaging_catalog: Path) -> str:
    """``workbench app CATALOG --port N`` on the catalog in the background; the base URL once it answers."""
    return str(serve_catalog(imaging_catalog, "streamlit_imaging.log"))


def test_images_page_draws_overlays_in_chromium(server: str, imaging_catalog: Path, artifacts: Path) -> None:
    from playwright.sync_api import sync_playwright

    from apps.workbench_app.serving import wait_rendered
    from workbench.catalog import Catalog

    cat = Catalog.open(imaging_catalog)
    pooled = cat.table("pooled_association").set_index("feature")
    live = cat.features.index[cat.features["density"] > 0].astype(str)
    r, a = pooled["partial_r"].reindex(live), pooled["auroc"].reindex(live)
    fid = str(r.abs().where(np.sign(r) == np.sign(a - 0.5), 0.0).idxmax())  # the page's default feature
    top = next(e.sequence_id for e in cat.examples(fid) if e.kind == "top")
    shot = artifacts / "images.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 2000})
            page.goto(server, wait_until="domcontentloaded")
            wait_rendered(page, "Concepts captured")
            page.get_by_role("link", name="Images").first.click()  # in the navigation for image catalogs
            wait_rendered(page, "Top-activating images")
            page.wait_for_timeout(500)
            body = page.inner_text("body")
            assert fid in body and top in body and "Traceback" not in body
            tiles = page.locator('[data-testid="stImage"] img')
            assert tiles.count() >= 10
            tiles.first.wait_for(state="visible")
            page.wait_for_function("() => { const i = document.querySelector('[data-testid=\"stImage\"] img');"
                                   " return i && i.complete && i.naturalWidth > 0; }", timeout=30_000)
            natural = page.evaluate("() => document.querySelector('[data-testid=\"stImage\"] img').naturalWidth")
            # the upscaled 28x28 image beside its overlay (gaps between and after), served as a real picture
            assert natural == 2 * 28 * 6 + 3 * GAP_PX
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
