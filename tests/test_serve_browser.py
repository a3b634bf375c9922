"""`videomla serve` in a real headless browser: Debian's chromium driven by Selenium.

Skips (with the reason) where Selenium, chromium or chromedriver is not installed; CI installs
no browser. Screenshot: $VIDEOMLA_SCREENSHOT or the test's tmp dir (serve-page.png).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
webdriver = pytest.importorskip("selenium.webdriver", reason="Selenium is not installed (pip install selenium)")

from test_serve import Server  # noqa: E402
from videomla.pipeline import Pipeline  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=900,700",
)  # fmt: skip
PIXELS = """const c = document.getElementById('video');
const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
let s = 0; for (let i = 0; i < d.length; i += 4) s += d[i] + d[i + 1] + d[i + 2]; return [c.width, s];"""


@pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="no system browser: apt-get install -y chromium chromium-driver (not installed in CI)",
)
def test_page_plays_frames_and_switches_prompt(tmp_path):
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    server = Server(Pipeline.from_checkpoint(None, device="cpu", threads=1), max_streams=2)
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in FLAGS:
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    try:
        driver.get(server.base + "/")

        def data(name: str) -> int:
            return int(driver.execute_script(f"return document.body.dataset.{name} || '0'"))

        def wait(cond, what: str, timeout: float = 20):
            deadline = time.time() + timeout
            while not cond():
                assert time.time() < deadline, (
                    f"timed out waiting for {what}: {driver.find_element(By.ID, 'info').text}"
                )
                time.sleep(0.1)

        driver.find_element(By.ID, "start").click()
        wait(lambda: data("frames") >= 5, "frames")
        first = data("frames")
        wait(lambda: data("frames") >= first + 3, "frames to keep updating")
        box = driver.find_element(By.ID, "prompt")
        box.clear()
        box.send_keys("a small blue circle")
        driver.find_element(By.ID, "recache").click()
        driver.find_element(By.ID, "switch").click()
        wait(lambda: data("version") == 1, "frames of the new prompt")
        wait(lambda: "FPS" in driver.find_element(By.ID, "status").text and " 1/" in driver.find_element(
            By.ID, "status").text, "the status line")  # fmt: skip
        pixels = driver.execute_script(PIXELS)
        assert pixels[0] == 64 and pixels[1] > 0, pixels  # a decoded 64x64 frame is drawn, not black
        shot = Path(os.environ.get("VIDEOMLA_SCREENSHOT", tmp_path / "serve-page.png"))
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 1000
        driver.find_element(By.ID, "stop").click()
        server.wait_idle()
    finally:
        driver.quit()
        server.stop()
