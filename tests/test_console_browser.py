"""The support console in headless Chromium against real gunicorn workers, on
SQLite and on PostgreSQL: finding a customer, its graph with bridges drawn,
the evidence between two values, a detach previewed then confirmed, an
erasure confirmed by typing the id, errors shown in words, values masked,
no script or style outside the page's policy, and a phone's width.

Screenshots go to test-artifacts/console/; the time from a search to a drawn
graph is printed (run with -s to see it)."""

from collections.abc import Iterator
from typing import Any

import pytest
import requests
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as ready
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.ui import WebDriverWait

from browser import chromium
from conftest import ROOT, gunicorn, migrate
from live import free_port

KEY = "console-key"
ARTIFACTS = ROOT / "test-artifacts" / "console"
# What the tests seed: two people that one order (ann's email with bob's
# phone) merged into one customer of 5 rows and 7 values. Bridges: ann's
# email and each phone.
OVER_MERGED = [
    ("ann@shop.com", "5550101"),
    ("ann.b@shop.com", "5550101"),
    ("bob@shop.com", "5550202"),
    ("bob.w@shop.com", "5550202"),
    ("ann@shop.com", "5550202"),
    ("ann.c@shop.com", "5550101"),
]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def service(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A live service with an API key on a fresh database of each engine."""
    directory = tmp_path_factory.mktemp("console")
    if request.param == "sqlite":
        url = f"sqlite:///{directory / 'contacts.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    migrate(url)
    env = {
        "API_KEYS": KEY,
        "PROMETHEUS_MULTIPROC_DIR": str(directory / "metrics"),
    }
    with gunicorn(url, free_port(), 2, env) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    """One Chromium for the module, its console messages kept."""
    driver = chromium(
        tmp_path_factory.mktemp("chromium"),
        "--window-size=1280,1000",
        console_messages=True,
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


def identify(service: str, email: str | None, phone: str | None) -> dict[str, Any]:
    response = requests.post(
        f"{service}/identify",
        json={"email": email, "phoneNumber": phone},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    contact: dict[str, Any] = response.json()["contact"]
    return contact


def api(service: str, path: str) -> requests.Response:
    return requests.get(
        f"{service}{path}", headers={"Authorization": f"Bearer {KEY}"}, timeout=10
    )


def seed(service: str, tag: str) -> int:
    """The over-merged customer, its values marked with `tag` (two digits);
    its id."""
    contact = {}
    for email, phone in OVER_MERGED:
        contact = identify(service, f"t{tag}.{email}", f"{phone}{tag}")
    customer_id: int = contact["primaryContactId"]
    return customer_id


def open_console(browser: WebDriver, service: str) -> WebDriverWait[WebDriver]:
    browser.get(f"{service}/console/")
    wait = WebDriverWait(browser, 30)
    key = browser.find_element(By.ID, "key")
    if key.is_displayed():
        key.send_keys(KEY)
        browser.find_element(By.CSS_SELECTOR, "#key-form button").click()
    return wait


def search(
    browser: WebDriver, wait: WebDriverWait[WebDriver], kind: str, value: str
) -> None:
    Select(browser.find_element(By.ID, "search-kind")).select_by_value(kind)
    field = browser.find_element(By.ID, "search-value")
    field.clear()
    field.send_keys(value)
    browser.find_element(By.CSS_SELECTOR, "#search-form button").click()


def drawn(browser: WebDriver, wait: WebDriverWait[WebDriver]) -> WebElement:
    return wait.until(
        ready.presence_of_element_located(
            (By.CSS_SELECTOR, "#graph[data-state='drawn']")
        )
    )


def row_of(browser: WebDriver, value_text: str) -> WebElement:
    """The values table's row whose value, once shown, is `value_text` (each
    Show rebuilds the table, so rows are found again by their node)."""
    nodes = [
        row.get_attribute("data-node")
        for row in browser.find_elements(By.CSS_SELECTOR, "#values tbody tr")
    ]
    for node in nodes:
        selector = f"#values tr[data-node='{node}']"
        browser.find_element(By.CSS_SELECTOR, f"{selector} .reveal").click()
        row = browser.find_element(By.CSS_SELECTOR, selector)
        if row.find_element(By.CSS_SELECTOR, ".value").text == value_text:
            return row
        row.find_element(By.CSS_SELECTOR, ".reveal").click()
    raise AssertionError(f"no row shows {value_text}")


def policy_violations(browser: WebDriver) -> list[str]:
    """The page's errors: scripts that threw, and what the policy refused
    (answers with an error status, which the page shows, are not errors)."""
    return [
        entry["message"]
        for entry in browser.get_log("browser")  # type: ignore[no-untyped-call]
        if entry["level"] == "SEVERE"
        and "Failed to load resource: the server responded" not in entry["message"]
    ]


def test_search_draws_the_graph_with_its_bridges_and_explains_two_values(
    browser: WebDriver, service: str, request: pytest.FixtureRequest
) -> None:
    engine = request.node.callspec.params["service"]
    customer_id = seed(service, "11")
    wait = open_console(browser, service)

    search(browser, wait, "email", "t11.bob.w@shop.com")
    graph = drawn(browser, wait)

    assert graph.get_attribute("data-nodes") == "12"
    assert graph.get_attribute("data-bridges") == "3"
    title = browser.find_element(By.ID, "customer-title").text
    assert title == f"Customer {customer_id}"
    table = browser.find_element(By.ID, "values").text
    assert "shop.com" not in table and "•••" in table
    bridges = browser.find_elements(By.CSS_SELECTOR, "#values tbody tr.bridge")
    assert len(bridges) == 3
    small = int(graph.get_attribute("data-draw-ms") or "0")

    ann = row_of(browser, "t11.ann.b@shop.com")
    ann.find_element(By.CSS_SELECTOR, ".choose").click()
    bob = row_of(browser, "t11.bob@shop.com")
    bob.find_element(By.CSS_SELECTOR, ".choose").click()
    explained = browser.find_element(By.ID, "explain").text
    assert "carried both email t11.ann.b@shop.com and phone" in explained
    assert "Merge event" in explained
    assert explained.endswith("and email t11.bob@shop.com.")
    path = browser.execute_script(
        "return document.querySelectorAll('#values tbody .choose:checked').length"
    )
    assert path == 2
    history = browser.find_elements(By.CSS_SELECTOR, "#history li")
    assert len(history) == 6
    browser.save_screenshot(str(ARTIFACTS / f"customer-{engine}.png"))
    assert policy_violations(browser) == []

    big_email = seed_hundred_values(service, "11")
    search(browser, wait, "email", big_email)
    graph = drawn(browser, wait)
    assert graph.get_attribute("data-nodes") == str(99 + 100)
    big = int(graph.get_attribute("data-draw-ms") or "0")
    browser.save_screenshot(str(ARTIFACTS / f"hundred-values-{engine}.png"))
    print(f"\n[{engine}] search to drawn graph: 5 rows {small} ms, 100 values {big} ms")
    assert small < 2000 and big < 2000

    browser.set_window_size(390, 844)
    try:
        search(browser, wait, "id", str(customer_id))
        drawn(browser, wait)
        width = browser.execute_script("return document.documentElement.scrollWidth")
        assert width <= 390
        browser.save_screenshot(str(ARTIFACTS / f"phone-{engine}.png"))
    finally:
        browser.set_window_size(1280, 1000)


def seed_hundred_values(service: str, tag: str) -> str:
    """A customer of 100 values (50 emails, 50 phones) in 99 rows, each value
    shared by two rows at most: every inner value is a bridge."""
    identify(service, f"t{tag}.big0@shop.com", f"7{tag}0000")
    for n in range(1, 50):
        identify(service, f"t{tag}.big{n}@shop.com", f"7{tag}{n - 1:04d}")
        identify(service, f"t{tag}.big{n}@shop.com", f"7{tag}{n:04d}")
    return f"t{tag}.big0@shop.com"


def test_detach_is_previewed_then_done_and_erase_needs_the_typed_id(
    browser: WebDriver, service: str, request: pytest.FixtureRequest
) -> None:
    engine = request.node.callspec.params["service"]
    customer_id = seed(service, "22")
    wait = open_console(browser, service)
    search(browser, wait, "phoneNumber", "555010122")
    drawn(browser, wait)

    row_of(browser, "t22.ann@shop.com").find_element(By.CSS_SELECTOR, ".detach").click()
    preview = wait.until(
        ready.text_to_be_present_in_element(
            (By.ID, "detach-preview"), "nothing changed yet"
        )
    )
    assert preview
    assert "2 customer(s)" in browser.find_element(By.ID, "detach-preview").text
    browser.save_screenshot(str(ARTIFACTS / f"detach-preview-{engine}.png"))
    unchanged = api(service, f"/customers/{customer_id}/graph").json()
    assert len([n for n in unchanged["nodes"] if n["kind"] == "contact"]) == 5

    browser.find_element(By.ID, "detach-confirm").click()
    wait.until(ready.text_to_be_present_in_element((By.ID, "search-note"), "Detached"))
    graph = drawn(browser, wait)
    # Ann's part: her three rows, her two other emails and her phone,
    # which alone joins them now.
    assert graph.get_attribute("data-nodes") == "6"
    assert graph.get_attribute("data-bridges") == "1"
    ann = api(service, f"/customers/{customer_id}").json()["contact"]
    assert ann["emails"] == ["t22.ann.b@shop.com", "t22.ann.c@shop.com"]
    assert ann["phoneNumbers"] == ["555010122"]
    results = browser.find_elements(By.CSS_SELECTOR, "#results li")
    assert len(results) == 2

    browser.find_element(By.ID, "erase-open").click()
    wait.until(
        ready.text_to_be_present_in_element(
            (By.ID, "erase-preview"), "nothing changed yet"
        )
    )
    confirm = browser.find_element(By.ID, "erase-confirm")
    typed = browser.find_element(By.ID, "erase-typed")
    typed.send_keys(str(customer_id + 1))
    assert not confirm.is_enabled()
    assert api(service, f"/customers/{customer_id}").status_code == 200
    typed.clear()
    typed.send_keys(str(customer_id))
    assert confirm.is_enabled()
    browser.save_screenshot(str(ARTIFACTS / f"erase-confirm-{engine}.png"))
    confirm.click()
    wait.until(ready.text_to_be_present_in_element((By.ID, "search-note"), "Erased"))
    assert api(service, f"/customers/{customer_id}").status_code == 404
    assert not browser.find_element(By.ID, "customer").is_displayed()
    assert policy_violations(browser) == []


def test_errors_are_shown_as_the_problem_detail(
    browser: WebDriver, service: str
) -> None:
    wait = open_console(browser, service)

    search(browser, wait, "id", "987654")
    error = wait.until(ready.visibility_of_element_located((By.ID, "error")))
    assert error.text == "No live contact has the id 987654."

    Select(browser.find_element(By.ID, "block-kind")).select_by_value("email")
    browser.find_element(By.ID, "block-value").send_keys("test@test.com")
    browser.find_element(By.CSS_SELECTOR, "#block-form button").click()
    wait.until(
        ready.text_to_be_present_in_element(
            (By.ID, "block-preview"), "nothing changed yet"
        )
    )
    browser.find_element(By.ID, "block-confirm").click()
    refused = wait.until(ready.visibility_of_element_located((By.ID, "block-error")))
    assert refused.text.startswith("email is already blocked by the built-in rule")

    browser.find_element(
        By.CSS_SELECTOR, "#block-dialog button[value='cancel']"
    ).click()
    browser.find_element(By.ID, "forget-key").click()
    search(browser, wait, "email", "nobody@shop.com")
    wait.until(
        ready.text_to_be_present_in_element(
            (By.ID, "error"), "Send a valid API key as 'Authorization: Bearer <key>'."
        )
    )
    assert policy_violations(browser) == []


def test_the_console_page_is_served_with_its_policy(service: str) -> None:
    page = requests.get(f"{service}/console/", timeout=10)
    assert page.status_code == 200
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "style-src 'self'" in policy
    assert "unsafe-inline" not in policy
    assert "<script>" not in page.text and "style=" not in page.text
    for asset in ("main.js", "vendor/cytoscape-3.35.0.esm.min.js", "console.css"):
        assert requests.get(f"{service}/console/{asset}", timeout=10).ok
