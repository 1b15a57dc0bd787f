"""The web page in a real browser against a real `mlps serve`: sign in and out, upload by drag and drop, train from
the form and watch the curve grow, compare, predict and score, escaping, owners, and the pages at phone width."""

import csv
import io
import os
import re
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import TERMINAL, dataset_path, wait_for
from tests.live import IRIS_RECORDS, SHORT_TRAINING
from tests.ui.conftest import sign_in

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "ui"


def slow_csv(rows: int = 8_000, seed: int = 0) -> str:
    """Three classes from eight numeric columns: big enough that an MLP's epochs take a noticeable time each."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 8))
    score = x[:, 0] + 0.5 * x[:, 1] - x[:, 2] + 0.3 * rng.normal(size=rows)
    label = np.where(score < -0.5, "low", np.where(score > 0.5, "high", "mid"))
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([*(f"x{i}" for i in range(8)), "level"])
    for features, y in zip(x.round(4).tolist(), label.tolist(), strict=True):
        writer.writerow([*features, y])
    return out.getvalue()


def drop_file(page, selector: str, name: str, content: str) -> None:
    """Drag a file onto the element, as a person dropping it from their desktop."""
    transfer = page.evaluate_handle(
        "([name, content]) => { const dt = new DataTransfer(); "
        "dt.items.add(new File([content], name, {type: 'text/csv'})); return dt; }", [name, content])
    page.dispatch_event(selector, "dragenter", {"dataTransfer": transfer})
    page.dispatch_event(selector, "drop", {"dataTransfer": transfer})


def submitted_job(site, dataset_id: str, **spec) -> dict:
    resp = site.api.post("/jobs", json={"dataset_id": dataset_id, "target": "species", **spec})
    assert resp.status_code == 202, resp.text
    return resp.json()


def finished(site, job_id: str, timeout: float = 120) -> dict:
    wait_for(lambda: site.api.get(f"/jobs/{job_id}").json()["status"] in TERMINAL, timeout=timeout,
             what=f"job {job_id} to end")
    return site.api.get(f"/jobs/{job_id}").json()


@pytest.fixture(scope="module")
def iris(site) -> dict:
    resp = site.api.post("/datasets", files={"file": ("iris.csv", dataset_path("iris.csv").read_bytes(), "text/csv")})
    assert resp.status_code == 201, resp.text
    return resp.json()


@pytest.fixture(scope="module")
def iris_jobs(site, iris) -> list[dict]:
    """Two finished iris jobs that differ in their learning rate and hidden layers."""
    first = submitted_job(site, iris["id"], model={"type": "mlp", "hidden_layers": [16]}, training=SHORT_TRAINING)
    second = submitted_job(site, iris["id"], model={"type": "mlp", "hidden_layers": [32, 32]},
                           training={**SHORT_TRAINING, "learning_rate": 0.05})
    jobs = [finished(site, first["id"]), finished(site, second["id"])]
    assert [j["status"] for j in jobs] == ["succeeded", "succeeded"], [j["error"] for j in jobs]
    return jobs


def test_sign_in_keeps_the_key_out_of_reach_of_scripts_and_sign_out_forgets_it(page, site):
    page.goto("/ui/jobs")
    page.wait_for_url("**/ui/sign-in?next=%2Fui%2Fjobs")
    page.fill("#key", "mlps_" + "a" * 43)
    page.click("#sign-in-form button[type=submit]")
    page.wait_for_selector("#key-error:has-text('not a valid API key')")
    page.fill("#key", site.admin_key)
    page.click("#sign-in-form button[type=submit]")
    page.wait_for_url("**/ui/jobs")
    page.wait_for_selector("#jobs-body")
    assert page.text_content(".who .owner") == "admin (admin)"
    cookie, = page.context.cookies()
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["expires"]) == (True, "Strict", -1)
    assert page.evaluate("document.cookie") == ""
    page.click("#sign-out")
    page.wait_for_url("**/ui/sign-in")
    assert page.context.cookies() == []
    page.goto("/ui/models")
    page.wait_for_url("**/ui/sign-in?next=%2Fui%2Fmodels")


def test_upload_train_from_the_form_and_watch_the_curve_grow(admin_page, site):
    page = admin_page
    page.goto("/ui/datasets")
    page.fill("#dataset-name", "slow levels")
    # the progress bar's last value, kept across the page change that follows the upload
    page.evaluate("addEventListener('beforeunload', () => sessionStorage.setItem('progress', "
                  "document.getElementById('upload-progress').value))")
    drop_file(page, "#drop-zone", "levels.csv", slow_csv())
    page.wait_for_url(re.compile(r"/ui/datasets/ds_\w+$"))
    assert page.evaluate("sessionStorage.getItem('progress')") == "100"
    assert page.text_content("h1") == "slow levels"
    assert page.locator("#profile tbody tr").count() == 9
    assert page.locator("#profile svg.hist").count() == 8  # a histogram per numeric column
    assert page.locator("#preview tbody tr").count() == 20

    page.click("#train-link")
    page.wait_for_selector("#train-form")
    assert page.input_value("#f-target") == "level"
    page.select_option("#f-model-type", "mlp")
    page.fill("#f-model-hidden_layers", "128, 128")
    page.fill("#f-training-epochs", "20")
    page.fill("#f-training-batch_size", "32")
    page.fill("#f-training-early_stopping_patience", "0")
    # Every point count the curves show, as the page changes it (recorded in the page, so that no poll can miss one).
    page.add_init_script(POINT_RECORDER)
    page.click("#submit-job")
    page.wait_for_url(re.compile(r"/ui/jobs/job_\w+$"))
    job_id = page.url.rsplit("/", 1)[1]
    job = site.api.get(f"/jobs/{job_id}").json()
    assert job["spec"]["model"]["hidden_layers"] == [128, 128] and job["spec"]["training"]["epochs"] == 20

    # While it trains, the chart's point count must take at least two different values.
    def ended() -> bool:
        return page.locator("#job-head .status-succeeded, #job-head .status-failed").count() > 0

    page.wait_for_selector("#curves .chart")
    wait_for(ended, timeout=180, interval=0.05, what="the job to end on its page")
    seen = set(page.evaluate("window.__points"))
    growing = sorted(n for n in seen if 0 < n < 20)
    assert len(growing) >= 2, f"points seen while training: {sorted(seen)}"
    assert page.locator("#job-head .status-succeeded").count() == 1
    page.wait_for_selector("#job-figures .confusion")
    assert page.get_attribute("#curves .chart", "data-points") == "20"
    assert page.locator("#curves .chart").count() == 2  # loss, and accuracy
    assert "the kept model is epoch" in page.text_content("#epoch-note")


POINT_RECORDER = """
window.__points = [];
new MutationObserver((changes) => {
  for (const change of changes) {
    const nodes = change.type === "attributes" ? [change.target] : [...change.addedNodes];
    for (const node of nodes) {
      if (!(node instanceof Element)) continue;
      const charts = node.matches("#curves .chart") ? [node] : [...node.querySelectorAll("#curves .chart")];
      for (const chart of charts) window.__points.push(Number(chart.getAttribute("data-points") || 0));
    }
  }
}).observe(document, {subtree: true, childList: true, attributes: true, attributeFilter: ["data-points"]});
"""


def test_the_jobs_list_updates_live_and_cancels(admin_page, site, iris):
    page = admin_page
    page.goto("/ui/jobs")
    page.wait_for_selector("#jobs-body")
    job = submitted_job(site, iris["id"], model={"type": "mlp", "hidden_layers": [512, 512]},
                        training={"epochs": 100_000, "batch_size": 1, "early_stopping_patience": 0})
    row = f"#jobs-body tr[data-job='{job['id']}']"
    page.wait_for_selector(row)  # appears without a reload
    page.wait_for_selector(f"{row}[data-status='running']")
    page.click(f"{row} button:has-text('Cancel')")
    page.wait_for_selector(f"{row}[data-status='cancelled']", timeout=60_000)
    page.select_option("select[name=status]", "cancelled")
    # (page.wait_for_function evaluates a string, which the page's CSP forbids: poll from here instead)
    wait_for(lambda: page.evaluate("[...document.querySelectorAll('#jobs-body tr')]"
                                   ".every(r => r.dataset.status === 'cancelled')"), what="the filtered list")
    assert "status=cancelled" in page.url


def test_the_jobs_list_filters_by_tag(admin_page, site, iris_jobs):
    tagged, other = iris_jobs
    resp = site.api.patch(f"/jobs/{tagged['id']}", json={"tags": ["baseline"]})
    assert resp.status_code == 200, resp.text
    page = admin_page
    page.goto("/ui/jobs")
    page.wait_for_selector(f"#jobs-body tr[data-job='{other['id']}']")
    assert page.text_content(f"#jobs-body tr[data-job='{tagged['id']}'] code.label") == "baseline"
    page.fill("input[name=tag]", "baseline")
    page.press("input[name=tag]", "Enter")
    page.wait_for_selector(f"#jobs-body tr[data-job='{other['id']}']", state="detached")
    assert page.locator("#jobs-body tr").count() == 1 and "tag=baseline" in page.url


def test_compare_two_jobs(admin_page, iris_jobs):
    page = admin_page
    page.goto("/ui/jobs")
    for job in iris_jobs:
        page.check(f"#jobs-body tr[data-job='{job['id']}'] input[type=checkbox]")
    page.click("#compare-selected")
    page.wait_for_url("**/ui/compare?jobs=*")
    page.wait_for_selector("#compare-curves .chart")
    assert page.locator("#compare-metrics thead a").all_text_contents() == [j["id"] for j in iris_jobs]
    legend = page.text_content("#compare-curves .chart")
    assert all(job["id"] in legend for job in iris_jobs)
    assert page.get_attribute("#compare-curves .chart", "data-points") == str(SHORT_TRAINING["epochs"])
    metrics = page.text_content("#compare-metrics")
    assert "val_accuracy" in metrics and "val_loss" in metrics
    differences = [page.text_content(f"#compare-spec tbody tr:nth-child({i + 1}) th")
                   for i in range(page.locator("#compare-spec tbody tr").count())]
    assert {"model.hidden_layers", "training.learning_rate"} <= set(differences)
    assert "training.epochs" not in differences


def test_predict_from_the_form_and_score_a_file(admin_page, iris_jobs, tmp_path):
    page = admin_page
    model_id = iris_jobs[0]["model_id"]
    page.goto(f"/ui/models/{model_id}")
    page.wait_for_selector("#predict-form")
    assert page.text_content("#labels") == "Iris-setosaIris-versicolorIris-virginica"
    record = IRIS_RECORDS[1]
    for i, name in enumerate(record):
        page.fill(f"#feature-{i}", str(record[name]))
    page.click("#predict-form button[type=submit]")
    page.wait_for_selector("#probabilities")
    bars = page.locator("#probabilities .prob")
    assert bars.count() == 3
    shares = [float(bars.nth(i).locator(".prob-value").text_content().rstrip(" %")) for i in range(3)]
    assert abs(sum(shares) - 100) < 0.5 and shares == sorted(shares, reverse=True)
    assert page.text_content("#predicted") == bars.nth(0).locator(".prob-label").text_content()

    page.set_input_files("#score-file", str(dataset_path("iris.csv")))
    with page.expect_download() as download:
        page.click("#score-form button[type=submit]")
    saved = tmp_path / "scored.csv"
    download.value.save_as(saved)
    rows = list(csv.DictReader(saved.open()))
    assert len(rows) == 150 and {"prediction", "p_Iris-setosa"} <= set(rows[0])
    assert "Scored 150 rows" in page.text_content("#score-status")
    assert page.get_attribute("#download", "href") == f"/models/{model_id}/download"


def test_the_form_shows_the_apis_errors_next_to_their_fields(admin_page, iris):
    page = admin_page
    page.goto(f"/ui/train?dataset={iris['id']}")
    page.wait_for_selector("#train-form")
    page.fill("#f-training-epochs", "0")
    page.fill("#f-model-hidden_layers", "8, wide")
    page.click("#submit-job")
    page.wait_for_selector("#f-training-epochs-error:not(:empty)")
    assert "greater than or equal to 1" in page.text_content("#f-training-epochs-error")
    assert page.text_content("#f-model-hidden_layers-error")
    assert page.url.endswith(f"/ui/train?dataset={iris['id']}")  # nothing was submitted

    page.fill("#f-training-epochs", "")
    page.fill("#f-model-hidden_layers", "")
    page.fill("#f-advanced", "{not json")
    page.click("#submit-job")
    page.wait_for_selector("#f-advanced-error:has-text('not JSON')")
    page.fill("#f-advanced", '{"training": {"epoch": 3}}')
    page.click("#submit-job")
    page.wait_for_selector("#f-advanced-error:not(:empty)")
    assert "training.epoch" in page.text_content("#form-problem")


def test_user_strings_render_as_text(admin_page, site):
    name = "<script>alert(1)</script>"
    column = "<img src=x onerror=alert(1)><b>bold"
    content = f"a,{column}\n1,{column}\n2,y\n3,{column}\n".encode()
    resp = site.api.post("/datasets", files={"file": ("evil.csv", content, "text/csv")}, data={"name": name})
    assert resp.status_code == 201, resp.text
    dataset = resp.json()
    assert dataset["name"] == name
    page = admin_page
    for path in (f"/ui/datasets/{dataset['id']}", "/ui/datasets", f"/ui/train?dataset={dataset['id']}",
                 f"/ui/jobs?dataset_id={dataset['id']}"):
        page.goto(path)
        page.wait_for_selector("main h1")
        page.wait_for_load_state("networkidle")
        assert page.locator("main script, main img, main b").count() == 0, path
        assert page.evaluate("document.scripts.length") == 2, path  # uPlot and app.js, nothing else
    page.goto(f"/ui/datasets/{dataset['id']}")
    page.wait_for_selector("#profile")
    assert page.text_content("main h1") == name
    assert page.text_content("#profile tbody tr:nth-child(2) th") == column
    assert column in page.text_content("#preview") and column in page.text_content("#profile")
    assert page.title() == f"{name} · MLP Service"
    assert page.failures == []  # no alert() ran (the page fixture fails on any dialog too)


def test_another_owners_job_is_a_404_page(page, site, iris_jobs):
    sign_in(page, site.new_key("someone-else"))
    response = page.goto(f"/ui/jobs/{iris_jobs[0]['id']}")
    assert response.status == 404
    page.wait_for_selector("#not-found")
    assert page.text_content("h1") == "Not found"
    page.goto("/ui/jobs")
    page.wait_for_selector("#jobs-count")
    assert page.text_content("#jobs-count") == "0 jobs"


def test_workers_and_queue(admin_page):
    page = admin_page
    page.goto("/ui/workers")
    page.wait_for_selector("#workers .card")
    assert page.text_content("#queue-depth").isdigit()
    assert "cpu" in page.text_content("#workers")


def test_api_docs_work_offline(page):
    page.goto("/docs")
    page.wait_for_selector(".swagger-ui .info .title")
    assert "MLP Service" in page.text_content(".swagger-ui .info .title")
    page.locator(".opblock-summary-path", has_text="/datasets/{dataset_id}/preview").first.wait_for()


MAIN_PAGES = {"sign-in": "/ui/sign-in", "jobs": "/ui/jobs", "job": "/ui/jobs/{job}",
              "compare": "/ui/compare?jobs={job},{job2}", "dataset": "/ui/datasets/{dataset}",
              "train": "/ui/train?dataset={dataset}", "model": "/ui/models/{model}", "workers": "/ui/workers"}


@pytest.mark.parametrize("width", [DESKTOP, PHONE], ids=["1280px", "390px"])
def test_main_pages_fit_the_screen(browser, site, iris, iris_jobs, width):
    """No page scrolls sideways at desktop or phone width (wide tables scroll inside their own box). With
    MLPS_UI_SCREENSHOTS=1 the screenshots in docs/ui are written too."""
    ctx = browser.new_context(viewport=width, base_url=site.url)
    try:
        page = ctx.new_page()
        sign_in(page, site.admin_key)
        ids = {"job": iris_jobs[0]["id"], "job2": iris_jobs[1]["id"], "dataset": iris["id"],
               "model": iris_jobs[0]["model_id"]}
        for name, path in MAIN_PAGES.items():
            page.goto(path.format(**ids))
            page.wait_for_selector("main h1")
            page.wait_for_load_state("networkidle")
            wait_for(lambda: "Loading" not in page.text_content("main"), what=f"{name} to load")
            if name == "model":  # the page as people use it: with an answer
                page.click("#predict-form button[type=submit]")
                page.wait_for_selector("#probabilities")
            overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
            assert overflow <= 0, f"{name} scrolls sideways by {overflow} px at {width['width']} px"
            if os.environ.get("MLPS_UI_SCREENSHOTS"):
                SCREENSHOTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=SCREENSHOTS / f"{name}-{width['width']}.png", full_page=True,
                                animations="disabled")
    finally:
        ctx.close()
