"""The app in a real headless browser: Debian's chromium + chromium-driver, driven by Selenium.

Serves the shipped faces when checkpoints/celeba64 is there, else a tiny untrained pair
(``EDVAE_APP_ARGS="--tokenizer DIR --prior DIR"`` picks another). Saves a screenshot of the Generate
tab to ``$APP_SCREENSHOT`` (``make screenshot``: docs/app_screenshot.png), else to the test's temporary
folder. Skipped, with the reason, when chromium is not installed, unless ``EDVAE_REQUIRE_BROWSER=1``
(CI: ``.ci/run`` installs it) makes that a failure.
"""

from __future__ import annotations

import os
import shlex
import shutil
import time
from pathlib import Path

import pytest

from tests.pipeline_helpers import ROOT, AppServer, make_pair, shipped_pair_present

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
MISSING = ("chromium and chromium-driver are not installed (Debian/Ubuntu: sudo apt-get install chromium "
           "chromium-driver; .ci/run does this)")

if not (CHROMIUM and CHROMEDRIVER):
    if os.environ.get("EDVAE_REQUIRE_BROWSER") == "1":
        raise RuntimeError(f"EDVAE_REQUIRE_BROWSER=1 but {MISSING}")
    pytest.skip(MISSING, allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

WAIT_S = 300  # a loaded 2-core CPU: sampling 8 faces can take a while


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    if os.environ.get("EDVAE_APP_ARGS"):
        args = shlex.split(os.environ["EDVAE_APP_ARGS"])
    elif shipped_pair_present():
        args = []                                      # configs/app.yaml: the shipped faces
    else:
        tok, prior = make_pair(root / "pair", image_size=32)
        args = ["--tokenizer", str(tok), "--prior", str(prior)]
    app = AppServer(args, root / "server.log")
    yield app
    app.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,1000", "--hide-scrollbars",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(120)
    yield driver
    driver.quit()


def images_in(driver, css: str) -> list:
    """Loaded <img> elements under ``css`` (a decoded, non-empty picture)."""
    return [img for img in driver.find_elements(By.CSS_SELECTOR, f"{css} img")
            if driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img)]


def test_generate_and_reconstruct_in_a_browser(server, browser, tmp_path):
    wait = WebDriverWait(browser, WAIT_S)
    browser.get(server.url)
    wait.until(lambda d: "EdVAE generator" in d.title)  # set once the page's scripts have run

    # Generate: a click fills the gallery
    wait.until(EC.element_to_be_clickable((By.ID, "generate-button"))).click()
    wait.until(lambda d: len(images_in(d, "#samples")) >= 1)
    time.sleep(1.0)  # let the last thumbnails paint before the picture is taken
    screenshot = Path(os.environ.get("APP_SCREENSHOT") or tmp_path / "app_screenshot.png")
    if not screenshot.is_absolute():
        screenshot = ROOT / screenshot
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000
    print(f"screenshot: {screenshot}")

    # Reconstruct: upload a picture, click, see the reconstruction and the uncertainty heatmap
    browser.find_element(By.XPATH, "//button[@role='tab' and contains(., 'Reconstruct')]").click()
    face = ROOT / "app" / "examples" / "face_2_005734.png"
    upload = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#reconstruct-input input[type=file]"))
    upload.send_keys(str(face))
    wait.until(lambda d: len(images_in(d, "#reconstruct-input")) >= 1)
    wait.until(EC.element_to_be_clickable((By.ID, "reconstruct-button"))).click()
    wait.until(lambda d: images_in(d, "#reconstruction") and images_in(d, "#uncertainty"))
    assert images_in(browser, "#model-input") and images_in(browser, "#token-map")
    wait.until(lambda d: "Mean evidential uncertainty" in d.find_element(By.ID, "uncertainty-text").text)
    browser.save_screenshot(str(screenshot.with_name(screenshot.stem + "_reconstruct.png")))
    assert "Traceback" not in browser.page_source
