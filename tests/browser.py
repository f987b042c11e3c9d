"""A real headless browser for the tests of the HTML report: Debian's Chromium and ChromeDriver, driven by
Selenium. Snakemake's report is a single-page application: its tables and pictures exist only once its
JavaScript has run, so reading the HTML file's text cannot tell whether a user would see them.

The packages are installed with apt-get when missing (Debian, as root), as the SLURM tests install theirs;
elsewhere, or with THROMBUS_BROWSER_TESTS=0, the tests that need a browser are skipped with the reason.
Chromium is started with its background networking off: the machine has no network, and the report needs
none (everything is inlined as data URIs).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1400,1000")


def _install() -> str | None:
    """Install Chromium and ChromeDriver; the reason it is impossible, or None once they are there."""
    if os.environ.get("THROMBUS_BROWSER_TESTS", "").strip() == "0":
        return "THROMBUS_BROWSER_TESTS=0"
    if Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists():
        return None
    if not (Path("/etc/debian_version").exists() and shutil.which("apt-get") and os.geteuid() == 0):
        return f"{CHROMIUM} / {CHROMEDRIVER} missing and no Debian apt-get as root to install them"
    command = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=300",
               "chromium", "chromium-driver"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:  # the package lists may not know them yet
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True, timeout=600)
        done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        pytest.fail("apt-get could not install chromium and chromium-driver:\n" + done.stdout[-2000:] + done.stderr[-2000:])
    return None


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A headless Chromium under Selenium's control (one per test session)."""
    reason = _install()
    if reason:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(120)
    try:
        yield driver
    finally:
        driver.quit()
