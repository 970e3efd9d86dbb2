"""Headless Chromium (apt: chromium chromium-driver; driven by selenium) opens the Prefect UI page
of the pipeline deployment and the MLflow UI page of the registered model and checks they show
them. Screenshots are kept under tests/artifacts/ (printed)."""

from __future__ import annotations

import shutil
import tempfile

import pytest

from tests.flows.conftest import ARTIFACTS, SMOKE_MODEL, prefect_client, server_state

pytestmark = pytest.mark.e2e

CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    if not shutil.which("chromium") or not shutil.which("chromedriver"):
        pytest.skip("needs chromium and chromedriver (apt-get install -y chromium chromium-driver; .ci/run does)")
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="sslpipe-chromium-")
    options = webdriver.ChromeOptions()
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1000",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.binary_location = shutil.which("chromium")
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(120)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _wait_for_text(driver, texts: list[str], timeout: float = 90) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def shown(d):
        body = d.find_element(By.TAG_NAME, "body").text
        return body if all(t in body for t in texts) else False

    return WebDriverWait(driver, timeout, poll_frequency=0.5).until(shown)


def _screenshot(driver, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")


def test_prefect_ui_shows_the_pipeline_deployment(served, browser):
    project, api, _ = served
    with prefect_client(api) as c:
        dep = c.read_deployment_by_name("sslpipe-pipeline/pipeline")
    url = f"{server_state(project, 'prefect')['url']}/deployments/deployment/{dep.id}"
    browser.get(url)
    try:
        body = _wait_for_text(browser, ["pipeline", "sslpipe-pipeline"])
    finally:
        _screenshot(browser, "prefect-deployment-pipeline.png")
    assert "Run" in body  # the button that opens "Quick run" / "Custom run"


def test_mlflow_ui_shows_the_registered_model(ops_project, browser):
    project, _ = ops_project
    url = f"{server_state(project, 'mlflow')['url']}/#/models/{SMOKE_MODEL}"
    browser.get(url)
    try:
        body = _wait_for_text(browser, [SMOKE_MODEL, "Version 1"])
    finally:
        _screenshot(browser, "mlflow-registered-model.png")
    assert "champion" in body.lower()


def test_mlflow_ui_shows_the_model_card(ops_project, browser):
    """The registered version's page shows its card: the verdict, every arm's figures, the protocol."""
    import json

    project, _ = ops_project
    registration = json.loads((project / "reports" / "registration.json").read_text())
    url = f"{server_state(project, 'mlflow')['url']}/#/models/{SMOKE_MODEL}/versions/{registration['version']}"
    browser.get(url)
    try:
        body = _wait_for_text(browser, ["validation-best arm", "pretraining", "Protocol"])
    finally:
        _screenshot(browser, "mlflow-model-card.png")
    for arm in ("ssl_finetune", "supervised"):  # in every run's card (retrain tests run two arms only)
        assert arm in body
