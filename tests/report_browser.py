"""Opening each result of a Snakemake HTML report in a browser, as a reader clicks through it."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

#: Which content a result shows: an image that decoded, or a page whose tables have rows (and notes).
_IMAGE_LOADED = "return arguments[0].complete && arguments[0].naturalWidth > 0;"


def _categories(driver: Any) -> list[str]:
    """The result categories of the sidebar (the entries after RESULTS)."""
    items = [li.text.strip() for li in driver.find_elements(By.CSS_SELECTOR, "li") if li.text.strip()]
    return [name for name in items[items.index("RESULTS") + 1:] if name] if "RESULTS" in items else []


def _shown(driver: Any) -> dict[str, Any]:
    """What the main panel shows after an eye was clicked."""
    WebDriverWait(driver, 20).until(lambda d: _content(d) is not None)
    element = _content(driver)
    if element.tag_name == "img":
        WebDriverWait(driver, 20).until(lambda d: d.execute_script(_IMAGE_LOADED, element))
        return {"kind": "image", "ok": bool(driver.execute_script(_IMAGE_LOADED, element))}
    driver.switch_to.frame(element)
    try:
        rows = len(driver.find_elements(By.CSS_SELECTOR, "table tbody tr"))
        notes = "Notes" in driver.find_element(By.TAG_NAME, "body").text
        images = driver.find_elements(By.TAG_NAME, "img")
        loaded = all(driver.execute_script(_IMAGE_LOADED, image) for image in images)
    finally:
        driver.switch_to.default_content()
    kind = "table" if rows else "page"
    return {"kind": kind, "rows": rows, "notes": notes, "ok": loaded and (rows > 0 or bool(images))}


def _content(driver: Any) -> Any | None:
    """The result's iframe or picture (the report's own logo is an image too, and is left out)."""
    for element in driver.find_elements(By.CSS_SELECTOR, "iframe, img"):
        source = element.get_attribute("src") or ""
        if "filename=logo" not in source and source.startswith("data:"):
            return element
    return None


def _source(driver: Any) -> str:
    """The data URI now shown, to tell when a click has replaced it."""
    element = _content(driver)
    return (element.get_attribute("src") or "") if element is not None else ""


def _filename(driver: Any) -> str:
    """The file name Snakemake writes into the data URI of the result shown."""
    match = re.search(r";filename=([^;]+);", _source(driver))
    return match.group(1) if match else ""


def _open_category(driver: Any, report: Path, category: str) -> None:
    driver.get(report.resolve().as_uri())
    WebDriverWait(driver, 60).until(expected_conditions.element_to_be_clickable((By.LINK_TEXT, category))).click()
    time.sleep(0.3)


def _subcategories(driver: Any) -> list[str]:
    """The subcategory links a category lists instead of results (Training: one per experiment)."""
    if driver.find_elements(By.CSS_SELECTOR, "a[iconname=eye]"):
        return []
    return [a.text.strip() for a in driver.find_elements(By.CSS_SELECTOR, "a.block") if a.text.strip()]


def _open_results(driver: Any, where: dict[str, Any]) -> list[dict[str, Any]]:
    """Every result of the list shown, under each of its label toggles. The sidebar stays while a result
    is shown, so each eye is clicked in turn."""
    shown = []
    toggles = [label.get_attribute("for") for label in driver.find_elements(By.CSS_SELECTOR, "label[for^='toggle-']")]
    for toggle in toggles or [None]:
        if toggle is not None:
            driver.find_element(By.CSS_SELECTOR, f"label[for='{toggle}']").click()
        for eye in driver.find_elements(By.CSS_SELECTOR, "a[iconname=eye]"):
            name = eye.find_element(By.XPATH, "./ancestor::tr").text.strip()
            before = _source(driver)
            eye.click()
            try:  # a toggle may already have shown this row's result, so the eye need not change it
                WebDriverWait(driver, 5).until(lambda d: _source(d) not in ("", before))
            except TimeoutException:
                pass
            shown.append({**where, "toggle": toggle, "row": name, "file": _filename(driver), **_shown(driver)})
    return shown


def open_every_result(driver: Any, report: Path) -> list[dict[str, Any]]:
    """One entry per result shown: its category (and subcategory), label toggle, row, file, kind and
    whether it displayed."""
    driver.get(report.resolve().as_uri())
    WebDriverWait(driver, 60).until(expected_conditions.presence_of_element_located((By.LINK_TEXT, "Workflow")))
    shown = []
    for category in _categories(driver):
        _open_category(driver, report, category)
        for subcategory in _subcategories(driver) or [None]:
            if subcategory is not None:
                _open_category(driver, report, category)
                driver.find_element(By.LINK_TEXT, subcategory).click()
                time.sleep(0.3)
            shown += _open_results(driver, {"category": category, "subcategory": subcategory})
    return shown
