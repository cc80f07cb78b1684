"""A headless Chromium (the distribution's package, driven through its chromedriver) for the site
tests, and a command to screenshot a page: ``python tests/browser.py PAGE.html OUT.png``.

Missing Chromium is an error, not a skip: `make setup` installs it (Debian packages `chromium` and
`chromium-driver`), and a browser check that silently stops running is worse than none.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

INSTALL = "apt-get install chromium chromium-driver (or run `make setup`)"


def _binaries() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        missing = "chromium" if browser is None else "chromedriver"
        raise AssertionError(f"{missing} is not installed: {INSTALL}")
    return browser, driver


@contextmanager
def chromium(width: int = 1400, height: int = 1000) -> Iterator[Any]:
    """A headless Chromium session that records the page's console messages."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = _binaries()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        f"--window-size={width},{height}", "--hide-scrollbars",
    ):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        yield driver
    finally:
        driver.quit()


def console_errors(driver: Any) -> list[str]:
    """The page's console messages of level SEVERE (errors) since the last call."""
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def screenshot(page: Path, out: Path, width: int = 1400, height: int = 1800) -> None:
    """Open ``page`` and save a PNG of its first ``height`` pixels to ``out``."""
    with chromium(width, height) as driver:
        driver.get(page.resolve().as_uri())
        errors = console_errors(driver)
        if errors:
            raise AssertionError(f"{page}: console errors: {errors}")
        driver.save_screenshot(str(out))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python tests/browser.py PAGE.html OUT.png")
    screenshot(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"wrote {sys.argv[2]}")
