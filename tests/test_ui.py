"""The Prefect UI in a real browser: a queue's launch deployment is run from its forms.

Headless Debian `chromium`, driven by Selenium through the system `chromedriver`, against the
session's real Prefect server (its UI is the API URL without `/api`) and a real agent:

- Run > Custom run on `launch/<queue>`: the `spec` form (stored job, project, entry point,
  `overrides.run_config`) and a template field in Job Variables; the job then ran with them.
- An out-of-range template value: the UI shows the server's refusal and no run is created.
- The queue's template fields are a form on the work pool's edit page.
- The finished run's artifact page, and the forms, are saved as screenshots: in
  `$PREFECT_LAUNCH_SCREENSHOTS` when set, else in the test's tmp_path.

No browser is downloaded: without `/usr/bin/chromium` and `/usr/bin/chromedriver` (`./dev services`
installs them) the test fails.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import anyio
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

from conftest import JOBS, cli, flow_run_of, job_report, run_logs, unique, wait_for_final

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 90  # seconds: two shared cores, a cold UI bundle and a Vue app rendering a large form
SUBMIT_WAIT = 15  # seconds for a Submit to leave the run form before it counts as lost
SUBMIT = "//button[@type='submit'][normalize-space()='Submit']"
ERROR_TOAST = "//div[contains(@class,'p-toast__card')][.//*[contains(@class,'p-toast__icon--error')]]"


@pytest.fixture
def browser() -> Iterator:
    # A missing browser is a failure, not a skip: this test is the UI's only check.
    for binary, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        assert shutil.which(binary), f"{binary} is missing: `apt-get install {package}` (./dev services does)"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # No background networking, component updates, sync or QUIC: on a machine whose only network
    # is 127.0.0.1 they only burn CPU on refused connections.
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--no-proxy-server", "--window-size=1400,1000", "--lang=en-US", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--disable-quic"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("PREFECT_LAUNCH_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class UI:
    """The few moves the test makes in the Prefect UI, each behind an explicit wait."""

    def __init__(self, driver, base: str, screenshots: Path) -> None:
        from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver, self.base, self.folder = driver, base, screenshots
        # Vue re-renders the form as it is filled: elements found a moment ago go stale, so every
        # wait looks them up again.
        self.wait = WebDriverWait(driver, WAIT, poll_frequency=0.25,
                                  ignored_exceptions=(NoSuchElementException, StaleElementReferenceException))
        self.saved: list[Path] = []

    def open(self, path: str) -> None:
        self.driver.get(self.base + path)

    def until(self, condition: Callable, message: str):
        return self.wait.until(lambda driver: condition(), message)

    def xpath(self, xpath: str, within=None):
        from selenium.webdriver.common.by import By

        return (within or self.driver).find_element(By.XPATH, xpath)

    def visible(self, xpath: str, within=None):
        return self.until(lambda: (e := self.xpath(xpath, within)).is_displayed() and e, f"nothing visible at {xpath}")

    def click(self, xpath: str) -> None:
        def clicked() -> bool:
            element = self.xpath(xpath)
            if not (element.is_displayed() and element.is_enabled()):
                return False
            self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
            element.click()
            return True

        self.until(clicked, f"could not click {xpath}")

    def prop(self, label: str) -> str:
        """XPath of the schema form property labelled `label` (the innermost one)."""
        return (f"//span[contains(@class,'schema-form-property__label') and normalize-space()='{label}']"
                "/ancestor::div[contains(concat(' ', @class, ' '), ' schema-form-property ')][1]")

    def type_into(self, xpath: str, text: str) -> None:
        """Replace the text of an input or textarea (the JSON editors are textareas too)."""
        from selenium.webdriver.common.keys import Keys

        def typed() -> bool:
            element = self.xpath(xpath)
            self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
            element.send_keys(Keys.CONTROL, "a")
            element.send_keys(Keys.DELETE)
            element.send_keys(text)
            return True

        self.until(typed, f"could not type into {xpath}")
        self.until(lambda: self.xpath(xpath).get_attribute("value") == text, f"{xpath} does not hold {text!r}")

    def choose(self, label: str, option: str) -> None:
        """Pick one type of an optional property (the `str | None` button group)."""
        self.click(f"{self.prop(label)}//div[contains(@class,'p-button-group')]/button[normalize-space()='{option}']")
        self.until(lambda: self.xpath(f"{self.prop(label)}//div[contains(@class,'p-button-group')]"
                                      f"/button[normalize-space()='{option}']").get_attribute("aria-selected") == "true",
                   f"{label}: {option} not selected")

    def screenshot(self, name: str, height: int = 1000) -> Path:
        """The window, `height` tall (the UI scrolls inside its own layout, so the window is made tall instead)."""
        self.driver.set_window_size(1400, height)
        path = self.folder / f"{name}.png"
        assert self.driver.save_screenshot(str(path)), f"chromium saved no screenshot to {path}"
        self.driver.set_window_size(1400, 1000)
        self.saved.append(path)
        print(f"screenshot: {path}")
        return path


def png_size(path: Path) -> tuple[int, int]:
    """Width and height of a PNG, read from its IHDR chunk (fails on anything else)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def submit_until_it_leaves_the_form(ui: UI, deployment_id) -> None:
    """Click Submit until the UI leaves the run form, as a user does: again when the UI shows an error
    (its toast lies over Submit, so it is closed first) or when a click did nothing, but never once the
    server has a run of the deployment. Under load the server has refused a create (an error toast) and
    the oldest Prefect's UI has lost a click (CI)."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    def left(driver) -> bool:
        return "/run" not in driver.current_url.split("?")[0]

    def outcome(driver):
        return "left" if left(driver) else driver.find_elements("xpath", ERROR_TOAST)

    errors: dict[str, int] = {}  # each message the UI showed, and how often
    deadline = time.monotonic() + WAIT
    while True:
        ui.click(SUBMIT)
        try:
            seen = WebDriverWait(ui.driver, SUBMIT_WAIT, poll_frequency=0.25).until(outcome)
        except TimeoutException:
            seen = []
        if seen == "left":
            return
        if deployment_runs(deployment_id):  # the click was taken and the page is slow: never submit twice
            ui.until(lambda: left(ui.driver), "Submit did not leave the run form")
            return
        for toast in seen:
            message = toast.find_element("xpath", ".//*[contains(@class,'p-toast__message')]").text
            errors[message] = errors.get(message, 0) + 1
            # The button's own circle lies over its centre and takes a pointer click: click it in the page.
            close = toast.find_element("xpath", ".//button[contains(@class,'p-toast__close-btn')]")
            ui.driver.execute_script("arguments[0].click()", close)
        ui.until(lambda: not ui.driver.find_elements("xpath", ERROR_TOAST), "the UI's error toast did not close")
        assert time.monotonic() < deadline, f"Submit did not leave the run form; the UI said (times): {errors}"


def deployment_runs(deployment_id) -> list:
    async def read():
        async with get_client() as client:
            return await client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))

    return anyio.run(read)


def read_deployment(name: str):
    async def read():
        async with get_client() as client:
            return await client.read_deployment_by_name(name)

    return anyio.run(read)


def artifact_ids(key: str) -> list:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def read():
        async with get_client() as client:
            found = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
            return [a.id for a in found]

    return anyio.run(read)


def fill_custom_run(ui: UI, run_name: str, job: str, project: str, entry_point: list[str],
                    run_config: dict, job_variables: dict) -> None:
    """Fill the Custom run form: the flow run's name, the `spec` form, and Job Variables."""
    ui.visible(ui.prop("Job (Optional)"))
    ui.type_into("//div[contains(@class,'flow-run-name-input')]//input", run_name)
    ui.choose("Job (Optional)", "str")
    ui.type_into(f"{ui.prop('Job (Optional)')}//*[self::input or self::textarea]", job)
    ui.type_into(f"{ui.prop('Project (Optional)')}//*[self::input or self::textarea]", project)
    # Entry Point: a list of strings, one row per item.
    ui.choose("Entry Point (Optional)", "list")
    for index, word in enumerate(entry_point, start=1):
        ui.click(f"{ui.prop('Entry Point (Optional)')}//button[normalize-space()='Add item']")
        ui.type_into(f"({ui.prop('Entry Point (Optional)')}//*[self::input or self::textarea])[{index}]", word)
    ui.type_into(f"{ui.prop('Run Config (Optional)')}//textarea", json.dumps(run_config))
    # Template fields go in Additional Options > Job Variables (a JSON editor in this UI).
    if not ui.driver.find_elements("css selector", ".job-variable-overrides-input"):
        ui.click("//*[normalize-space()='Additional Options']")
    ui.type_into("//div[contains(@class,'job-variable-overrides-input')]//textarea", json.dumps(job_variables))


def test_custom_run_from_the_ui_with_override_and_template_value(make_queue, start_agent, browser, screenshots, tmp_path):
    from prefect.settings import PREFECT_API_URL
    from prefect_launch.spec import run_id_for

    config = tmp_path / "queue.yaml"
    config.write_text("env:\n  TEMPLATE_EPOCHS: '{{ epochs }}'\n")
    templates = tmp_path / "templates.yaml"
    templates.write_text("epochs: {type: integer, default: 2, minimum: 1, maximum: 10, description: Training epochs per job}\n")
    queue = make_queue("--resource", "local-process", "--config", str(config), "--templates", str(templates), prefix="ui")
    project = unique("uiproj")
    cli("job", "create", "code", str(JOBS), "-p", project, "-n", "reporter", "-E", "python report.py")
    start_agent("-q", queue)
    deployment = read_deployment(f"launch/{queue}")
    ui = UI(browser, PREFECT_API_URL.value().removesuffix("/api"), screenshots)

    # The deployment's page (the Deployments list pages through every test's deployments) > Run > Custom run.
    ui.open(f"/deployments/deployment/{deployment.id}")
    ui.click("//button[normalize-space()='Run']")
    ui.click("//a[normalize-space()='Custom run'] | //*[contains(@class,'p-overflow-menu-item')][normalize-space()='Custom run']")
    ui.until(lambda: browser.current_url.split("?")[0].endswith(f"/deployments/deployment/{deployment.id}/run"),
             "Custom run did not open the run form")

    good_name = "ui" + uuid.uuid4().hex[:10]
    form = dict(job=f"{project}/reporter", project=project, entry_point=["python", "report.py", "from-the-ui"],
                run_config={"lr": 0.5, "note": "set-in-ui"})
    fill_custom_run(ui, good_name, **form, job_variables={"epochs": 7})
    # The spec's source is a choice of three forms (pydantic's oneOf was a blank button and a raw JSON box).
    source_choices = [b.text for b in browser.find_elements(
        "xpath", f"{ui.prop('Source (Optional)')}//div[contains(@class,'p-button-group')]/button")]
    assert source_choices == ["Code folder", "Git repository", "Image", "None"]
    form_shot = ui.screenshot("custom-run-form", height=4200)
    # Leave the job variables' editor first, as a user's click elsewhere does: the editor hands its text to
    # the form as it loses focus, and on a loaded machine a Submit in the same moment was lost (oldest Prefect).
    browser.execute_script("document.activeElement && document.activeElement.blur()")
    submit_until_it_leaves_the_form(ui, deployment.id)

    # The form's run name gives way to the W&B run id its agent names the run after (one name per run).
    ui.until(lambda: len(deployment_runs(deployment.id)) == 1, "the submitted run is not on the server")
    (submitted,) = deployment_runs(deployment.id)
    run_id = run_id_for(submitted.id)  # a run enqueued without a W&B run id gets one from its flow run
    flow_run = wait_for_final(run_id, timeout=240)
    assert flow_run.id == submitted.id and flow_run.name == run_id and flow_run_of(good_name) is None
    assert flow_run.job_variables == {"epochs": 7}
    logs = run_logs(flow_run.id)
    assert flow_run.state.is_completed(), f"{flow_run.state}:\n" + "\n".join(logs[-30:])
    assert job_report(logs, "CONFIG") == {"lr": 0.5, "epochs": 1, "note": "set-in-ui"}  # run_config over the job's defaults
    env = job_report(logs, "ENV")
    assert env["TEMPLATE_EPOCHS"] == "7"  # the template value reached the queue config
    assert env["WANDB_RUN_ID"] == run_id and env["WANDB_PROJECT"] == project
    assert job_report(logs, "ARGS") == ["from-the-ui"]  # the form's entry point, not the stored job's

    # Out of range: the server refuses and the UI says why; no run is created.
    runs_before = len(deployment_runs(deployment.id))
    assert runs_before == 1
    ui.open(f"/deployments/deployment/{deployment.id}/run")
    bad_name = "ui" + uuid.uuid4().hex[:10]
    fill_custom_run(ui, bad_name, **form, job_variables={"epochs": 11})
    ui.click(SUBMIT)
    toast = ui.visible("//div[contains(@class,'p-toast-container')]//*[contains(normalize-space(), 'maximum of 10')]")
    assert "'epochs'" in toast.text and "11 is greater than the maximum of 10" in toast.text, toast.text
    refused_shot = ui.screenshot("custom-run-refused")
    assert browser.current_url.split("?")[0].endswith("/run")  # still on the form
    assert len(deployment_runs(deployment.id)) == runs_before and flow_run_of(bad_name) is None

    # The queue's template fields as a form: the work pool's edit page (Base Job Template > Defaults).
    ui.open(f"/work-pools/work-pool/{queue}/edit")
    field = ui.visible("//span[normalize-space()='epochs (Optional)']/ancestor::div[contains(concat(' ', @class, ' '), ' p-label ')][1]")
    assert "Training epochs per job" in field.text  # the field's description
    number = ui.xpath(".//input[@type='number']", field)
    assert (number.get_attribute("value"), number.get_attribute("min"), number.get_attribute("max")) == ("2", "1", "10")
    pool_shot = ui.screenshot("queue-template-fields")

    # The finished run's artifact, from its key's page.
    key = f"launch-{run_id}"
    (artifact,) = artifact_ids(key)
    ui.open(f"/artifacts/key/{key}")
    ui.click(f"//a[contains(@href, '/artifacts/artifact/{artifact}')]")
    ui.visible(f"//h1[contains(normalize-space(), 'Launch run') and contains(., '{run_id}')]")
    ui.visible("//*[self::h2 or self::h3][normalize-space()='Stages']")
    page = browser.find_element("tag name", "body").text
    for text in (queue, "queue wait", "submit", "Resolved submission"):
        assert text in page, f"{text!r} not on the artifact page"
    artifact_shot = ui.screenshot("run-artifact", height=2200)

    for path in (form_shot, refused_shot, pool_shot, artifact_shot):
        width, height = png_size(path)
        assert width >= 1000 and height >= 600 and path.stat().st_size > 20_000, f"{path}: {width}x{height}, {path.stat().st_size} bytes"
    print("screenshots: " + ", ".join(str(p) for p in ui.saved))
