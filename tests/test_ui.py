"""The Prefect UI in headless Chromium: find the deployments, start add-replica from its form with a zone.

Real parts: the session's Prefect server (its bundled UI), a process worker, the emulator
with real etcd. The browser is Debian's ``chromium`` driven by ``chromedriver`` through
Selenium (no browser download). Screenshots go to ``test-output/`` (not in git).
Skipped, with the reason, only where Chromium or chromedriver is not installed.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip(
        "Chromium and chromedriver are not installed: apt-get install -y chromium chromium-driver (.ci/run does it)",
        allow_module_level=True,
    )

from selenium.common.exceptions import (  # noqa: E402
    ElementClickInterceptedException,
    TimeoutException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from haplane.testing import REGION, ZONES  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "test-output"


@pytest.fixture
def browser():
    profile = tempfile.mkdtemp(prefix="haplane-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1400,1100",
    ):
        opts.add_argument(flag)
    try:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    except WebDriverException as exc:
        shutil.rmtree(profile, ignore_errors=True)
        pytest.fail(f"Chromium is installed but would not start: {exc.msg}")
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()  # stops chromedriver and the browser it started
        shutil.rmtree(profile, ignore_errors=True)


def shot(driver, name: str) -> Path:
    OUT.mkdir(exist_ok=True)
    path = OUT / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def click(driver, xpath: str, timeout: float = 30):
    """Click the element as a person would: once it is clickable, and, while something lies over it (the
    UI's toast after an error), again until that has gone."""
    deadline = time.monotonic() + timeout
    while True:
        element = WebDriverWait(driver, timeout).until(ec.element_to_be_clickable((By.XPATH, xpath)))
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
        try:
            element.click()
            return element
        except ElementClickInterceptedException:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def wait_for_run(api: str, flow: str, cluster: str, timeout: float = 90) -> dict:
    body = {"flows": {"name": {"any_": [flow]}}, "sort": "EXPECTED_START_TIME_DESC"}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for run in httpx.post(f"{api}/flow_runs/filter", json=body, timeout=10).json():
            if run["parameters"].get("cluster") == cluster:
                return run
        time.sleep(0.5)
    raise AssertionError(f"no {flow} run for {cluster} was created from the form")


def test_start_add_replica_from_its_form_and_see_it_complete(prefect_api, prefect_worker, ops_cloud, browser):
    from flows.create_cluster import create_cluster

    cluster = f"ui-{uuid.uuid4().hex[:4]}"
    create_cluster(cluster=cluster, region=REGION, zones=ZONES, replicas=1)  # in-process: the cluster to grow
    ui = prefect_api.url.removesuffix("/api")
    (OUT / "ui-add-replica-failure.png").unlink(missing_ok=True)
    driver = browser
    try:
        # the deployments page lists haplane's deployments; open add-replica
        driver.get(f"{ui}/deployments")
        click(driver, "//a[normalize-space()='add-replica']")
        WebDriverWait(driver, 30).until(ec.url_contains("/deployments/deployment/"))
        # Run -> Custom run: the form built from the flow's typed parameters
        click(driver, "//button[normalize-space()='Run']")
        click(driver, "//*[normalize-space()='Custom run']")
        WebDriverWait(driver, 30).until(ec.url_contains("/run"))
        field = click(driver, "//*[normalize-space()='cluster']/following::textarea[1]")
        field.send_keys(cluster)
        click(driver, "//*[normalize-space()='zone (Optional)']/following::button[normalize-space()='str'][1]")
        zone = click(driver, "//*[normalize-space()='zone (Optional)']/following::textarea[1]")
        zone.send_keys("europe-west1-c")
        shot(driver, "ui-add-replica-form")
        click(driver, "//button[normalize-space()='Submit']")
        # back on the deployment's page, the new run is listed: open it. The test server's SQLite can
        # answer "database is locked" to the UI's request while the suite's other tests write (the UI then
        # shows "Something went wrong" and stays on the form): a person submits again, and so does this
        try:
            run = wait_for_run(prefect_api.url, "add-replica", cluster, timeout=45)
        except AssertionError:
            if "Something went wrong" not in driver.page_source:
                raise
            shot(driver, "ui-add-replica-retried")
            click(driver, "//button[normalize-space()='Submit']")
            run = wait_for_run(prefect_api.url, "add-replica", cluster)
        run_id = run["id"]
        # the deployment's page lists the new run: open it. Its list can lag the API under load, and it
        # hides a run still Scheduled (its default filter): then open the run's own page by its address
        try:
            click(driver, f"//a[normalize-space()='{run['name']}']", timeout=20)
        except TimeoutException:
            driver.get(f"{ui}/runs/flow-run/{run_id}")
        WebDriverWait(driver, 30).until(ec.url_contains("/flow-run/"))

        deadline = time.monotonic() + 180
        state = None
        while time.monotonic() < deadline:
            state = httpx.get(f"{prefect_api.url}/flow_runs/{run_id}", timeout=10).json()
            if state["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                break
            time.sleep(2)
        assert state and state["state_type"] == "COMPLETED", state
        assert state["parameters"] == {"cluster": cluster, "zone": "europe-west1-c"} or (
            state["parameters"]["cluster"],
            state["parameters"]["zone"],
        ) == (cluster, "europe-west1-c")
        # the run page shows it completed (it refreshes itself; reload to be sure) and its artifacts
        driver.refresh()
        WebDriverWait(driver, 60).until(lambda d: "Completed" in d.find_element(By.TAG_NAME, "body").text)
        shot(driver, "ui-add-replica-completed")
        click(driver, "//*[normalize-space()='Artifacts']")
        WebDriverWait(driver, 30).until(lambda d: f"{cluster}-replicas" in d.find_element(By.TAG_NAME, "body").text)
        shot(driver, "ui-add-replica-artifacts")
    except Exception:
        shot(driver, "ui-add-replica-failure")
        raise
    zones = sorted(i.zone for i in ops_cloud.gce.list_instances(ZONES, labels={"haplane-cluster": cluster}))
    assert zones == ["europe-west1-b", "europe-west1-c"]
