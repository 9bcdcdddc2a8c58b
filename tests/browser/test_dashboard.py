"""The dashboard (/ui) and the API docs (/docs, /redoc) in a real headless Chromium
against a real service with a trained HET job: every page draws, logs no console error,
and loads nothing from another host. Screenshots go to test-artifacts/screenshots/."""

from __future__ import annotations

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from tests.support.browser_pages import (
    CLASS_NAMES,
    check_page,
    css,
    goto,
    wait,
    wait_css,
)
from tests.support.service_stack import API_KEY


def canvas_drawn(driver, canvas) -> bool:
    """The canvas has a size and some non-transparent pixels."""
    return driver.execute_script(
        "const c = arguments[0]; if (!c.width || !c.height) return false;"
        "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "for (let i = 3; i < d.length; i += 4) if (d[i] !== 0) return true; return false;",
        canvas,
    )


@pytest.fixture(scope="module")
def signed_in(browser, origin, trained):
    """The dashboard opened, a wrong key refused, the right one accepted."""
    browser.get(f"{origin}/ui")
    dialog = wait_css(browser, "dialog#keydialog[open]")
    field = dialog.find_element(By.ID, "keyinput")
    field.send_keys("not-the-key")
    dialog.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait(browser, lambda d: "refused" in d.find_element(By.ID, "keyerror").text, what="refusal")
    browser.get_log("browser")  # the 401 above is the point of the step
    field.clear()
    field.send_keys(API_KEY)
    dialog.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait(browser, lambda d: not css(d, "dialog#keydialog[open]"), what="the dialog to close")
    return browser


def test_the_key_lives_in_session_storage_only(signed_in):
    stored = signed_in.execute_script(
        "return [sessionStorage.getItem('hetserve.apiKey'), localStorage.length, document.cookie];"
    )
    assert stored == [API_KEY, 0, ""]


def test_jobs_page_lists_the_trained_job(signed_in, origin, trained):
    job = trained["job"]
    goto(signed_in, origin, "#/jobs")
    row = wait_css(signed_in, f"tr[data-job='{job['id']}']")
    assert "succeeded" in row.text
    assert css(signed_in, "form.inline select[name=dataset_id] option")
    check_page(signed_in, origin, "jobs")


def test_job_page_draws_curves_metrics_and_the_noise_sections(signed_in, origin, trained):
    job = trained["job"]
    goto(signed_in, origin, f"#/jobs/{job['id']}")
    canvas = wait_css(signed_in, "#curves canvas")
    wait(signed_in, lambda d: canvas_drawn(d, canvas), what="the training curves drawn")
    legend = signed_in.find_element(By.CSS_SELECTOR, "#curves").text
    for series in ("model val NLL", "baseline val NLL", "model val accuracy", "model train loss"):
        assert series in legend
    heads = [th.text for th in css(signed_in, "#metrics thead th")]
    assert heads == ["test", "HET · MC predictive", "HET · noise-free", "softmax baseline"]
    cells = [td.text for td in css(signed_in, "#metrics tbody td.num")]
    assert len(cells) == 12 and "–" not in cells, cells
    # The model's own reliability diagram, noise report and label issues, drawn from the
    # worker's results.
    wait(
        signed_in,
        lambda d: len(css(d, "#reliability svg.reliability")) == 3,
        what="reliability diagrams of both HET predictives and the baseline",
    )
    titles = signed_in.find_element(By.ID, "reliability").text
    assert "HET · noise-free" in titles and "softmax baseline" in titles, titles
    wait(
        signed_in,
        lambda d: len(css(d, "#noise svg.heatmap rect")) == len(CLASS_NAMES) ** 2,
        what="the flip-matrix heatmap",
    )
    wait(signed_in, lambda d: css(d, "#label-issues table.issues"), what="the label issues")
    assert css(signed_in, "#model-actions button.secondary")  # the ONNX download
    signed_in.execute_script("window.scrollTo(0, 0);")
    check_page(signed_in, origin, "job")


# Answers shaped as the HTTP contract describes them, served to the page by a fetch
# wrapper: the drawing of the noise report, the label issues and the reliability diagram
# is checked whether or not this server has those routes and fields yet.
FAKE_NOISE = {
    "num_examples": 300,
    "class_pairs": [
        {"classes": [0, 1], "class_names": ["cat", "dog"], "flip_rate": 0.12, "correlation": -0.8},
        {"classes": [2, 3], "class_names": ["fox", "owl"], "flip_rate": 0.09, "correlation": -0.7},
    ],
    "flip_matrix": [
        [0.0, 0.12, 0.01, 0.0],
        [0.11, 0.0, 0.0, 0.01],
        [0.0, 0.01, 0.0, 0.09],
        [0.01, 0.0, 0.08, 0.0],
    ],
    "noise_std_by_class": [1.2, 1.1, 0.9, 0.95],
}
FAKE_ISSUES = {
    "num_examples": 300,
    "num_flagged": 2,
    "issues": [
        {"index": 17, "given_label": 1, "suggested_label": 0, "score": 0.93},
        {"index": 4, "given_label": 3, "suggested_label": 2, "score": 0.88},
    ],
}
FAKE_RELIABILITY = {
    "bin_edges": [0.0, 0.25, 0.5, 0.75, 1.0],
    "accuracy": [None, 0.4, 0.7, 0.95],
    "confidence": [None, 0.42, 0.63, 0.9],
    "count": [0, 10, 30, 60],
}
FAKE_FETCH = """
const [noise, issues, reliability] = arguments;
window.__realFetch = window.__realFetch || window.fetch;
const real = window.__realFetch;
const json = (body) => new Response(JSON.stringify(body),
  {status: 200, headers: {"Content-Type": "application/json"}});
window.fetch = async (input, init) => {
  const url = String(input);
  const model = (url.match(/\\/v1\\/models\\/(\\w+)\\//) || [])[1];
  if (/\\/noise$/.test(url)) return json({model_id: model, ...noise});
  if (/\\/label-issues\\?/.test(url)) return json({model_id: model, dataset_id: "d", ...issues});
  const res = await real(input, init);
  if (/\\/v1\\/jobs\\/\\w+$/.test(url) && res.ok) {
    const job = await res.json();
    job.metrics.model.reliability = reliability;
    return json(job);
  }
  return res;
};
"""


def test_job_page_draws_the_noise_report_label_issues_and_reliability(signed_in, origin, trained):
    job = trained["job"]
    goto(signed_in, origin, "#/models")
    signed_in.execute_script(FAKE_FETCH, FAKE_NOISE, FAKE_ISSUES, FAKE_RELIABILITY)
    try:
        goto(signed_in, origin, f"#/jobs/{job['id']}")
        wait_css(signed_in, "#label-issues table.issues")
        cells = css(signed_in, "#noise svg.heatmap rect")
        assert len(cells) == len(CLASS_NAMES) ** 2
        pairs = signed_in.find_element(By.CSS_SELECTOR, "#noise table.pairs").text
        assert "cat ↔ dog" in pairs and "fox ↔ owl" in pairs
        issues = signed_in.find_element(By.CSS_SELECTOR, "#label-issues table.issues").text
        assert "17 dog cat 0.9300" in issues
        # three non-empty bins drawn (the empty one is skipped)
        # The fake record (three bins) replaces the model's; the baseline keeps its own.
        first = css(signed_in, "#reliability svg.reliability")[0]
        assert len(first.find_elements(By.CSS_SELECTOR, "rect")) == 1 + 3
        signed_in.execute_script("document.getElementById('noise').scrollIntoView();")
        check_page(signed_in, origin, "job-noise")
    finally:
        signed_in.execute_script("if (window.__realFetch) window.fetch = window.__realFetch;")


def test_onnx_download_and_alias_from_the_job_page(signed_in, origin, trained):
    job = trained["job"]
    goto(signed_in, origin, f"#/jobs/{job['id']}")
    actions = wait_css(signed_in, "#model-actions form")
    download = signed_in.find_element(By.XPATH, "//button[text()='Download ONNX']")
    download.click()
    wait(signed_in, lambda d: "downloaded" in d.find_element(By.ID, "model-actions").text)
    actions.find_element(By.NAME, "alias").send_keys("staging")
    actions.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait(signed_in, lambda d: "staging →" in d.find_element(By.ID, "model-actions").text)
    check_page(signed_in, origin, "job-actions")


def test_models_page_lists_model_baseline_and_moves_an_alias(signed_in, origin, trained):
    job = trained["job"]
    goto(signed_in, origin, "#/models")
    wait_css(signed_in, f"tr[data-model='{job['model_id']}']")
    assert css(signed_in, f"tr[data-model='{job['baseline_model_id']}']")
    form = signed_in.find_element(By.ID, "alias-form")
    form.find_element(By.NAME, "name").send_keys("production")
    Select(form.find_element(By.NAME, "model_id")).select_by_value(job["baseline_model_id"])
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait(
        signed_in,
        lambda d: any("production" in r.text for r in css(d, "table.aliases tbody tr")),
        what="the alias row",
    )
    row = next(r for r in css(signed_in, "table.aliases tbody tr") if "production" in r.text)
    assert job["baseline_model_id"][:8] in row.text
    check_page(signed_in, origin, "models")


def test_predict_playground_shows_probabilities_with_error_bars(signed_in, origin, trained):
    job = trained["job"]
    goto(signed_in, origin, f"#/predict/{job['model_id']}")
    text = wait_css(signed_in, "textarea[name=rows]")
    text.clear()
    text.send_keys("2 0 0 0 0 0 0 0\n0 0 2 0 0 0 0 0")
    signed_in.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    wait(signed_in, lambda d: len(css(d, "#results section.prediction")) == 2, what="2 rows")
    first = css(signed_in, "#results section.prediction")[0]
    assert len(first.find_elements(By.CSS_SELECTOR, "svg.probs line.errbar")) == len(CLASS_NAMES)
    assert first.find_elements(By.CSS_SELECTOR, "svg.entropy rect")
    assert first.find_elements(By.CSS_SELECTOR, "table.pairs tbody tr")
    assert any(name in first.text for name in CLASS_NAMES)
    check_page(signed_in, origin, "predict")

    # The noise-free predictive: an answer without sampling, or (on a server without it)
    # a message saying so.
    signed_in.find_element(By.CSS_SELECTOR, "input[value=noise_free]").click()
    signed_in.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    wait(
        signed_in,
        lambda d: "noise-free predictive" in d.find_element(By.ID, "results").text,
        what="a noise-free answer",
    )
    check_page(signed_in, origin, "predict-noise-free", allowed=None)


def test_submit_follow_and_cancel_jobs_from_the_jobs_page(signed_in, origin, trained):
    """A job submitted from the form shows live progress (the event stream read through
    fetch) until it succeeds; a long one is cancelled with its button."""
    goto(signed_in, origin, "#/jobs")
    form = wait_css(signed_in, "form.inline")
    Select(form.find_element(By.NAME, "dataset_id")).select_by_value(trained["dataset_id"])
    epochs = form.find_element(By.NAME, "epochs")
    before = {r.get_attribute("data-job") for r in css(signed_in, "tr[data-job]")}

    def submit(n: int) -> str:
        epochs.clear()
        epochs.send_keys(str(n))
        form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        new = wait(
            signed_in,
            lambda d: {r.get_attribute("data-job") for r in css(d, "tr[data-job]")} - before,
            what="the new row",
        )
        before.update(new)
        return new.pop()

    short = submit(3)
    row = f"tr[data-job='{short}']"
    seen = set()

    def finished(d):
        text = d.find_element(By.CSS_SELECTOR, row).text
        seen.add(text.split("\n")[0])
        return "succeeded" in text

    wait(signed_in, finished, timeout=180, what="the short job to succeed on screen")
    assert any("running" in s or "epoch" in s for s in seen) or len(seen) > 1, seen

    long = submit(400)
    wait(
        signed_in,
        lambda d: "running" in d.find_element(By.CSS_SELECTOR, f"tr[data-job='{long}']").text,
        180,
    )
    # Its page draws the curves while it trains, from the epochs finished so far.
    goto(signed_in, origin, f"#/jobs/{long}")
    wait_css(signed_in, "#curves canvas", timeout=120)
    wait(
        signed_in,
        lambda d: canvas_drawn(d, d.find_element(By.CSS_SELECTOR, "#curves canvas")),
        what="live training curves",
    )
    assert "running" in signed_in.find_element(By.CSS_SELECTOR, ".job-progress").text
    check_page(signed_in, origin, "job-live")
    goto(signed_in, origin, "#/jobs")
    signed_in.find_element(By.CSS_SELECTOR, f"tr[data-job='{long}'] button").click()
    wait(
        signed_in,
        lambda d: "cancelled" in d.find_element(By.CSS_SELECTOR, f"tr[data-job='{long}']").text,
        timeout=120,
        what="the long job cancelled on screen",
    )
    check_page(signed_in, origin, "jobs-after")


@pytest.mark.parametrize("page", ["docs", "redoc"])
def test_api_docs_render_offline(browser, origin, service, page):
    browser.get(f"{origin}/{page}")
    if page == "docs":
        wait(
            browser,
            lambda d: "hetserve" in " ".join(e.text for e in css(d, ".swagger-ui .info")),
            what="Swagger UI's info block",
        )
        wait_css(browser, ".swagger-ui .opblock")
    else:
        wait(
            browser,
            lambda d: (
                "hetserve" in " ".join(e.text for e in css(d, "h1"))
                and css(d, "[role=navigation], .menu-content")
            ),
            what="ReDoc's content",
        )
    check_page(browser, origin, page, allowed=None)
