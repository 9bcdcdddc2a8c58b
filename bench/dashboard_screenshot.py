"""A screenshot of a job's label-issue table in the dashboard, filtered to one class pair,
from a running hetserve: what a person sees after clicking that cell of the noise
heatmap (the README's image of CIFAR-10N's cat/dog suspects comes from here).

    .venv/bin/python bench/dashboard_screenshot.py --url http://127.0.0.1:8000 --key KEY \\
        --job JOB_ID --given dog --suggested cat --out docs/img/dashboard-label-issues.png

``bench/cifar10n.py --screenshot PNG`` calls ``label_issue_table`` on its own service
after the first job. Headless Chromium (Debian's ``chromium`` + ``chromium-driver``, as
the browser tests use); a documentation step, never a test."""

from __future__ import annotations

import argparse
import io
import shutil
from pathlib import Path

WAIT_S = 120


def label_issue_table(
    url: str, key: str, job_id: str, given: str, suggested: str, out: Path, width: int = 1400
) -> Path:
    """Sign in, open the job, click the heatmap cell (row ``suggested``, column ``given``),
    wait for every thumbnail of the filtered table, save the table's card to ``out``."""
    import httpx
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not (chromium and driver_path):
        raise SystemExit(
            "needs chromium and chromedriver (apt-get install chromium chromium-driver)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},2400", "--no-first-run"):  # fmt: skip
        options.add_argument(arg)
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as api:
        dataset_id = api.get(f"/v1/jobs/{job_id}").raise_for_status().json()["dataset_id"]
        names = api.get(f"/v1/datasets/{dataset_id}").raise_for_status().json()["class_names"]
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        wait = WebDriverWait(driver, WAIT_S, poll_frequency=0.2).until
        driver.get(f"{url}/ui")
        # The key lives in the tab's session storage (the dashboard's sign-in).
        driver.execute_script("sessionStorage.setItem('hetserve.apiKey', arguments[0]);", key)
        driver.execute_script(
            "location.hash = arguments[0]; location.reload();", f"#/jobs/{job_id}"
        )  # a fresh load reads the key: no sign-in dialog over the page
        # row = the class the model holds (suggested), column = the label given
        row, col = _index(names, suggested), _index(names, given)
        cell = wait(lambda d: d.find_elements(
            By.CSS_SELECTOR, f"#noise svg.heatmap rect[data-row='{row}'][data-col='{col}']"
        ))[0]  # fmt: skip
        driver.execute_script(
            "arguments[0].dispatchEvent(new MouseEvent('click', {bubbles: true}));", cell
        )
        wait(lambda d: f"given {given}, suggested {suggested}" in d.find_element(
            By.ID, "label-issues").text)  # fmt: skip
        wait(lambda d: d.execute_script(
            "const imgs = [...document.querySelectorAll('#label-issues img.thumb')];"
            "return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);"
        ))  # fmt: skip
        driver.execute_script("document.getElementById('label-issues').scrollIntoView();")
        card = driver.find_element(By.ID, "label-issues").screenshot_as_png
    finally:
        driver.quit()
    save_cropped(card, out)
    return out


def _index(names: list[str], name: str) -> int:
    if name not in names:
        raise SystemExit(f"no class {name!r} in the heatmap's {names}")
    return names.index(name)


def save_cropped(png: bytes, out: Path) -> None:
    """The card cut to the width its content takes (the card spans the page)."""
    import numpy as np
    from PIL import Image

    shot = Image.open(io.BytesIO(png))
    pixels = np.asarray(shot.convert("L"))[4:-4, 4:-4]  # inside the card's border
    used = np.flatnonzero((pixels < 250).any(axis=0))
    right = min(shot.width, int(used.max()) + 4 + 24) if used.size else shot.width
    out.parent.mkdir(parents=True, exist_ok=True)
    shot.crop((0, 0, right, shot.height)).save(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--job", required=True, help="the job whose HET model flagged the rows")
    p.add_argument("--given", required=True, help="class name: the label given")
    p.add_argument("--suggested", required=True, help="class name: the model's suggestion")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    print(label_issue_table(args.url, args.key, args.job, args.given, args.suggested, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
