"""The label-issue table of an image model in a real Chromium (tests/browser/conftest.py):
each flagged row's thumbnail with its given and suggested class names, paging through
every flagged row, the noise heatmap's cells filtering by class pair, and a corrected
dataset made from the page; no console error, nothing from another host.

The table's screenshot is docs/img/dashboard-label-issues.png's source
(test-artifacts/screenshots/label-issues.png)."""

from __future__ import annotations

import re

import pytest
from selenium.webdriver.common.by import By

from tests.support.browser_pages import (
    EXPECTED_FAILURES,
    SCREENSHOTS,
    check_page,
    css,
    goto,
    wait,
    wait_css,
)
from tests.support.service_stack import API_KEY

PAGE_SIZE = 12  # app/static/ui/js/pages/issues.js
# The refused upload's 422 is logged by the browser as a failed request: an answer the
# page shows, not an error of the page.
UPLOAD_REFUSED = re.compile(rf"{EXPECTED_FAILURES.pattern}|/v1/datasets/\w+/corrections\b.*\b422\b")


@pytest.fixture(scope="module")
def page(browser, origin, trained_images):
    """The image job's page, signed in."""
    browser.get(f"{origin}/ui")
    wait(
        browser,
        lambda d: (
            css(d, "dialog#keydialog[open]")
            or d.execute_script("return document.getElementById('view').dataset.state === 'ready';")
        ),
        what="the key dialog or a drawn page",
    )
    if css(browser, "dialog#keydialog[open]"):
        browser.find_element(By.ID, "keyinput").send_keys(API_KEY)
        browser.find_element(By.CSS_SELECTOR, "#keyform button[type=submit]").click()
        wait(browser, lambda d: not css(d, "dialog#keydialog[open]"), what="the dialog to close")
    goto(browser, origin, f"#/jobs/{trained_images['job']['id']}")
    return browser


def rows(driver) -> list[dict]:
    return driver.execute_script(
        "return [...document.querySelectorAll('#label-issues tbody tr')].map(tr => ({"
        " index: Number(tr.dataset.index),"
        " given: tr.querySelector('td.given').textContent,"
        " suggested: tr.querySelector('td.suggested').textContent,"
        " img: tr.querySelector('img.thumb')?.naturalWidth || 0,"
        " src: tr.querySelector('img.thumb')?.src || ''}));"
    )


def save_table_screenshot(driver) -> None:
    """The label-issue card, cut to the width its content takes."""
    from bench.dashboard_screenshot import save_cropped

    png = driver.find_element(By.ID, "label-issues").screenshot_as_png
    save_cropped(png, SCREENSHOTS / "label-issues.png")


def thumbnails_drawn(driver) -> list[dict] | None:
    found = rows(driver)
    return found if found and all(r["img"] > 0 for r in found) else None


def test_the_table_shows_each_flagged_image_with_class_names(page, origin, trained_images):
    shown = wait(page, thumbnails_drawn, what="every row's thumbnail decoded")
    names = {"cat", "dog", "fox", "owl"}
    assert all(r["given"] in names and r["suggested"] in names for r in shown), shown
    assert all(r["given"] != r["suggested"] for r in shown)  # flagged rows only
    assert all(r["src"].startswith("blob:") for r in shown)  # fetched with the key
    summary = page.find_element(By.CSS_SELECTOR, "#label-issues p.muted").text
    assert "training rows flagged" in summary
    page.execute_script("document.getElementById('label-issues').scrollIntoView();")
    save_table_screenshot(page)
    check_page(page, origin, "label-issues-table")


def test_paging_walks_through_every_flagged_row(page, origin, trained_images):
    wait(page, thumbnails_drawn, what="the first page")
    pager = page.find_element(By.CSS_SELECTOR, "#label-issues .pager").text
    total = int(pager.rsplit(" of ", 1)[1])
    assert total > PAGE_SIZE, f"{pager}: too few flagged rows to page"
    seen: list[int] = []
    for number in range(-(-total // PAGE_SIZE)):
        first = number * PAGE_SIZE + 1
        wait(
            page,
            lambda d, first=first: d.find_element(
                By.CSS_SELECTOR, "#label-issues .pager"
            ).text.startswith(f"rows {first}–"),
            what=f"page {number + 1}",
        )
        shown = wait(page, thumbnails_drawn, what=f"page {number + 1}'s thumbnails")
        seen += [r["index"] for r in shown]
        next_button = page.find_element(
            By.XPATH, "//section[@id='label-issues']//button[text()='Next']"
        )
        if next_button.get_attribute("disabled") is not None:
            break
        next_button.click()
    assert len(seen) == len(set(seen)) == total
    check_page(page, origin, "label-issues-paged")


def test_a_heatmap_cell_lists_the_rows_flipped_between_its_two_classes(page, origin):
    # row = the class the model holds (suggested), column = the label given
    cell = wait_css(page, "#noise svg.heatmap rect[data-row='0'][data-col='1']")  # cat -> dog
    page.execute_script(
        "arguments[0].dispatchEvent(new MouseEvent('click', {bubbles: true}));", cell
    )
    wait(
        page,
        lambda d: "given dog, suggested cat" in d.find_element(By.ID, "label-issues").text,
        what="the class-pair filter",
    )
    shown = wait(page, thumbnails_drawn, what="the cat-as-dog rows' thumbnails")
    assert all(r["given"] == "dog" and r["suggested"] == "cat" for r in shown), shown
    pill = page.find_element(By.CSS_SELECTOR, "#label-issues .filter .pill").text
    assert int(pill.split(": ")[1].split()[0]) >= len(shown)
    check_page(page, origin, "label-issues-pair")
    page.find_element(By.CSS_SELECTOR, "#label-issues .filter button.link").click()
    wait(page, lambda d: not css(d, "#label-issues .filter .pill"), what="the filter cleared")


def test_a_corrections_csv_uploaded_from_the_page(page, origin, service, tmp_path):
    """A person's ``index,label`` file through the page's upload form: a bad line is
    refused naming it and writes no dataset; a good file makes one with its lineage."""
    wait(page, thumbnails_drawn, what="the first page")
    flagged = rows(page)[:2]
    page.execute_script("document.querySelector('#label-issues details.fix').open = true;")
    form = wait_css(page, "#fix-from-csv")

    def datasets() -> int:
        with service.client() as client:
            return len(client.get("/v1/datasets").json())

    def upload(form, csv_file) -> None:
        chooser = form.find_element(By.NAME, "file")
        chooser.clear()
        chooser.send_keys(str(csv_file))
        form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()

    before = datasets()
    bad = tmp_path / "bad.csv"
    bad.write_text(f"index,label\n{flagged[0]['index']},{flagged[0]['suggested']}\n99999,cat\n")
    upload(form, bad)
    refusal = wait(
        page,
        lambda d: css(d, "#label-issues .fix-result p.error"),
        what="the refusal of line 3",
    )[0].text
    assert "line 3" in refusal and "99999" in refusal, refusal
    assert datasets() == before

    good = tmp_path / "good.csv"
    good.write_text("index,label\n" + "".join(f"{r['index']},{r['suggested']}\n" for r in flagged))
    upload(form, good)
    wait(
        page,
        lambda d: "by a corrections CSV" in d.find_element(By.ID, "label-issues").text,
        what="the new dataset with its lineage",
    )
    result = page.find_element(By.CSS_SELECTOR, "#label-issues .fix-result").text
    assert f"{len(flagged)} relabelled, 0 dropped" in result, result
    assert datasets() == before + 1
    check_page(page, origin, "label-issues-csv", allowed=UPLOAD_REFUSED)


def test_a_corrected_dataset_from_the_page(page, origin, trained_images):
    page.execute_script("document.querySelector('#label-issues details.fix').open = true;")
    form = wait_css(page, "#fix-from-model")
    form.find_element(By.NAME, "top").send_keys("5")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait(
        page,
        lambda d: "relabel top 5 flagged of model" in d.find_element(By.ID, "label-issues").text,
        what="the new dataset with its lineage",
    )
    result = page.find_element(By.CSS_SELECTOR, "#label-issues .fix-result").text
    assert "5 relabelled, 0 dropped" in result and f"{trained_images['dataset_id'][:8]}" in result
    check_page(page, origin, "label-issues-fixed")
    # Retrain without leaving the dashboard: the new job's page shows where its data came from.
    page.find_element(By.CSS_SELECTOR, "#label-issues .fix-result button").click()
    wait(
        page,
        lambda d: d.execute_script(
            "return location.hash.startsWith('#/jobs/') && !location.hash.endsWith(arguments[0])"
            " && document.getElementById('view').dataset.state === 'ready';",
            trained_images["job"]["id"],
        ),
        what="the new job's page",
    )
    lineage = wait_css(page, "p.lineage").text
    assert "relabel top 5 flagged of model" in lineage, lineage
    job_id = page.execute_script("return location.hash.split('/').pop();")
    assert job_id != trained_images["job"]["id"]
    check_page(page, origin, "label-issues-retrain")
    page.execute_script(  # free the worker: the job itself is not under test here
        "return fetch(`v1/jobs/${arguments[0]}/cancel`, {method: 'POST', headers:"
        " {Authorization: `Bearer ${sessionStorage.getItem('hetserve.apiKey')}`}}).then(r => r.status);",
        job_id,
    )
