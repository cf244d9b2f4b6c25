"""The docs page in headless Chromium: it renders the identify operation, takes
an API key, and "Try it out" gets a contact from the running service."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ready
from selenium.webdriver.support.ui import WebDriverWait

from browser import chromium
from live import live_service


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    driver = chromium(tmp_path / "chromium")
    try:
        yield driver
    finally:
        driver.quit()


def test_docs_page_tries_identify_out_with_an_api_key(
    browser: WebDriver, tmp_path: Path
) -> None:
    with live_service(tmp_path, env={"API_KEYS": "docs-key"}) as url:
        browser.get(f"{url}/docs/")
        wait = WebDriverWait(browser, 30)

        click(wait, ".auth-wrapper .authorize")
        field = wait.until(
            ready.visibility_of_element_located(
                (By.CSS_SELECTOR, ".auth-container input")
            )
        )
        field.send_keys("docs-key")
        click(wait, ".auth-btn-wrapper .authorize")
        click(wait, ".auth-btn-wrapper .btn-done")

        click(wait, "#operations-default-identify .opblock-summary")
        click(wait, "#operations-default-identify .try-out__btn")
        click(wait, "#operations-default-identify .execute")

        status = wait.until(
            ready.visibility_of_element_located(
                (
                    By.CSS_SELECTOR,
                    ".live-responses-table .response .response-col_status",
                )
            )
        )
        body = browser.find_element(
            By.CSS_SELECTOR, ".live-responses-table .response-col_description pre"
        )
        assert status.text == "200"
        assert '"primaryContactId": 1' in body.text


def click(wait: WebDriverWait[WebDriver], selector: str) -> None:
    wait.until(ready.element_to_be_clickable((By.CSS_SELECTOR, selector))).click()
