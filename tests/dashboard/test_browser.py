"""End to end in a real browser: `streamlit run` on a free loopback port, Debian's chromium driven headless
by Playwright (`make browser` installs it), every page opened, predictions submitted, rendered text
asserted, screenshots saved. TORCHCYCLE_UPDATE_SCREENSHOT=1 also refreshes docs/dashboard.png."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import BIN, REPO, TASKS, project_env

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
# page path -> text that only appears once the page has run to its end (the overview is the default page: "")
PAGES = {"": "Latest pipeline and retraining runs", "experiments": "Learning curves",
         "model": "misclassified of", "explain": "Explain", "predict": "Predict", "data": "Validation"}
LAST = {("explain", "adult"): "Explain one test row", ("explain", "mnist"): "Examples",
        ("predict", "mnist"): "Upload a PNG or JPEG", ("experiments", "mnist"): "Pick at least two runs",
        ("explain", "diamonds"): "Explain one test row", ("model", "diamonds"): "outside their 90% interval",
        ("experiments", "diamonds"): "Pick at least two runs", ("experiments", "reviews"): "Pick at least two runs",
        ("explain", "reviews"): "Highlighted test texts"}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium: run `make browser` (make test does)"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(trained, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("streamlit") / "server.log"
    env = project_env({"TORCHCYCLE_ROOT": str(trained.root), "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"})
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(BIN / "streamlit"), "run", "dashboards/app.py", "--server.headless", "true",
             "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false",
             "--server.fileWatcherType", "none", "--client.toolbarMode", "minimal"],
            cwd=trained.root, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=str(CHROMIUM), headless=True,
            args=FLAGS, viewport={"width": 1440, "height": 1400}, service_workers="block",
        )  # fmt: skip
        yield context
        context.close()


def visit(browser, url: str, path: str, task: str, expect: str | None, shots: Path):
    page = browser.new_page()
    page.set_default_timeout(90_000)
    page.goto(f"{url}/{path}?task={task}")
    page.get_by_role("heading", level=1).first.wait_for()
    page.get_by_text(LAST.get((path, task), expect)).first.wait_for()
    if path == "explain" and task != "reviews":  # the SHAP waterfall of a row, or the Grad-CAM overlays
        page.locator('[data-testid="stMain"] img >> visible=true').first.wait_for()
    settle(page)
    assert page.locator('[data-testid="stException"]').count() == 0, page.inner_text("body")[:2000]
    page.screenshot(path=str(shots / f"{path or 'overview'}_{task}.png"), full_page=True)
    return page


def selected_task(page) -> str:
    """What the sidebar's task selector shows (its text or, in newer releases, its input's value)."""
    box = page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]')
    inputs = box.locator("input")
    return box.inner_text() + " " + " ".join(inputs.nth(i).input_value() for i in range(inputs.count()))


def settle(page) -> None:
    """Wait until no spinner shows and every picture has loaded; charts draw a moment later."""
    page.wait_for_timeout(500)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stSpinner\"]')"
        " && Array.from(document.images).filter(i => i.offsetParent).every(i => i.complete && i.naturalWidth > 0)")
    page.wait_for_timeout(1000)


def test_every_page_in_a_real_browser(server: str, browser, tmp_path: Path) -> None:
    for task in TASKS:
        for path, expect in PAGES.items():
            page = visit(browser, server, path, task, expect, tmp_path)
            assert page.get_by_role("heading", level=1).first.inner_text().strip() in (
                "Overview", "Experiments", "Model", "Explain", "Predict", "Data")
            assert task in selected_task(page)
            page.close()


def test_tabular_prediction_in_a_real_browser(server: str, browser, tmp_path: Path) -> None:
    page = visit(browser, server, "predict", "adult", "One row", tmp_path)
    page.get_by_role("button", name="Predict").click()
    page.get_by_text("Prediction:").first.wait_for()
    page.locator('[data-testid="stMain"] img').first.wait_for()  # the local SHAP explanation
    settle(page)
    body = page.inner_text("body")
    assert "Prediction:" in body and ("<=50K" in body or ">50K" in body)
    assert page.locator('[data-testid="stException"]').count() == 0
    shot = tmp_path / "predict_adult_result.png"
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("TORCHCYCLE_UPDATE_SCREENSHOT") == "1":
        (REPO / "docs").mkdir(exist_ok=True)
        shutil.copy(shot, REPO / "docs" / "dashboard.png")
    page.close()


def test_regression_prediction_in_a_real_browser(server: str, browser, tmp_path: Path) -> None:
    page = visit(browser, server, "predict", "diamonds", "One row", tmp_path)
    page.get_by_role("button", name="Predict").click()
    page.get_by_text("Prediction:").first.wait_for()
    page.locator('[data-testid="stMain"] img').first.wait_for()  # the local SHAP explanation
    settle(page)
    body = page.inner_text("body")
    assert "price ≈" in body and "90% interval" in body and "predicted price" in body
    assert page.locator('[data-testid="stException"]').count() == 0
    page.screenshot(path=str(tmp_path / "predict_diamonds_result.png"), full_page=True)
    page.close()


def test_image_upload_in_a_real_browser(server: str, browser, trained, tmp_path: Path) -> None:
    image = min((trained.root / "data" / "raw" / "mnist").rglob("*.png"))
    page = visit(browser, server, "predict", "mnist", "Upload a PNG or JPEG", tmp_path)
    page.locator('input[type="file"]').set_input_files(str(image))
    page.get_by_text("Prediction:").first.wait_for()
    settle(page)
    assert "Grad-CAM for" in page.inner_text("body")
    page.screenshot(path=str(tmp_path / "predict_mnist_result.png"), full_page=True)
    bad = tmp_path / "not_an_image.png"
    bad.write_text("plain text, not pixels")
    page.locator('input[type="file"]').set_input_files(str(bad))
    page.get_by_text("is not a readable PNG or JPEG image").first.wait_for()
    assert page.locator('[data-testid="stException"]').count() == 0
    page.close()
