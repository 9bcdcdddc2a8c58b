"""Driving the dashboard in the browser tests: waiting for a page or an element (a
screenshot on timeout), and checking a drawn page (no console error, nothing loaded from
another host)."""

from __future__ import annotations

import re
from pathlib import Path

from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"
CLASS_NAMES = ["cat", "dog", "fox", "owl"]
WAIT_S = 60
# The softmax baseline has no noise report: its 409 is an answer the page explains.
EXPECTED_FAILURES = re.compile(r"/v1/models/\w+/noise\b.*\b409\b")


def wait(driver, condition, timeout: float = WAIT_S, what: str = ""):
    try:
        # A page that redraws (live curves) replaces its elements: poll again, not fail.
        return WebDriverWait(
            driver,
            timeout,
            poll_frequency=0.2,
            ignored_exceptions=(StaleElementReferenceException,),
        ).until(condition)
    except TimeoutException:
        shot = SCREENSHOTS / "timeout.png"
        driver.save_screenshot(str(shot))
        raise AssertionError(
            f"timed out waiting for {what or condition}; screenshot {shot}; "
            f"console {driver.get_log('browser')}"
        ) from None


def css(driver, selector: str):
    return driver.find_elements(By.CSS_SELECTOR, selector)


def wait_css(driver, selector: str, timeout: float = WAIT_S):
    return wait(driver, lambda d: css(d, selector), timeout, selector)[0]


def console_errors(driver, allowed: re.Pattern | None = EXPECTED_FAILURES) -> list[str]:
    errors = []
    for entry in driver.get_log("browser"):
        if entry["level"] not in ("SEVERE", "ERROR"):
            continue
        if allowed is not None and allowed.search(entry["message"]):
            continue
        errors.append(entry["message"])
    return errors


def foreign_requests(driver, origin: str) -> list[str]:
    """Every resource the document loaded that is not from the service (blob: and data:
    URLs are made in the page, not fetched from a host)."""
    names = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name).concat([location.href]);"
    )
    assert names, "the resource timing list is empty"
    own = (origin + "/", "data:", f"blob:{origin}/")
    return [n for n in names if not n.startswith(own)]


def check_page(driver, origin: str, name: str, allowed=EXPECTED_FAILURES) -> None:
    driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))
    assert console_errors(driver, allowed) == [], name
    assert foreign_requests(driver, origin) == [], name


def goto(driver, origin: str, route: str) -> None:
    """Open a dashboard route and wait until the page says it is drawn."""
    driver.execute_script("location.hash = arguments[0];", route)
    wait(
        driver,
        lambda d: d.execute_script(
            "const v = document.getElementById('view');"
            "return v.dataset.state === 'ready' && location.hash === arguments[0];",
            route,
        ),
        what=f"{route} ready",
    )
