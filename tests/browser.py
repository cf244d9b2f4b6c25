"""Headless Chromium for the browser tests (the docs page, the console): a
missing browser skips them, or fails them under CI=true."""

import os
import shutil
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
# Chromium's own network traffic would be refused on a closed network.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium(profile: Path, *flags: str, console_messages: bool = False) -> WebDriver:
    """A headless Chromium with its profile in `profile`, and `flags` beside
    FLAGS; with `console_messages`, the page's console is kept for the test."""
    if CHROMIUM is None or CHROMEDRIVER is None:
        reason = (
            "no chromium and chromedriver (Debian: apt-get install chromium-driver)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(reason + "; CI=true: the browser test must run")
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={profile}", *flags]:
        options.add_argument(flag)
    if console_messages:
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
