"""The live dashboard in a real browser: headless Chromium driven by Selenium (Debian's
chromium-driver) over a workspace populated through the real loop (drift windows, two
experiments, two rollouts, devices). Clicks through every page, checks what it shows,
signs in, acts, watches a page update without a reload, and takes screenshots.

Screenshots go to the test's temporary directory; with
``EDGELOOP_DASHBOARD_SCREENSHOTS=docs/img`` they refresh the ones in the docs.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from edgeloop_control.infra.db import ControlDB
from edgeloop_control.web.server import HttpServer
from tests.control.conftest import fleet_history  # noqa: F401 (the shared fixture)
from tests.control.fleet_history import LONG_DEVICE, History
from tests.control.web_client import copy_workspace, register_with_lineage, start

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMEDRIVER = "/usr/bin/chromedriver"
TOKEN = "browser-test-operator-token-42"
T = TypeVar("T")


@pytest.fixture(scope="module")
def served(
    fleet_history: History,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, History]]:
    ws = copy_workspace(fleet_history.ws, tmp_path_factory.mktemp("browser") / "ws")
    register_with_lineage(ws)
    history = History(ws, fleet_history.t0, fleet_history.shift_at, fleet_history.experiments,
                      fleet_history.rollouts, fleet_history.windows)  # fmt: skip
    server: HttpServer = start(ws, TOKEN, broker=ws.broker_url())
    try:
        yield f"http://{server.listen}", history
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    assert shutil.which("chromedriver") or os.path.exists(CHROMEDRIVER), (
        "chromium-driver is installed by the project's setup (packaging/install-system-deps.sh)"
    )
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,800",
                "--disable-dev-shm-usage", "--no-first-run", "--disable-background-networking",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _shots(tmp_path: Path) -> Path:
    target = os.environ.get("EDGELOOP_DASHBOARD_SCREENSHOTS")
    out = Path(target) if target else tmp_path
    out.mkdir(parents=True, exist_ok=True)
    return out


def _retry(fn: Callable[[], T]) -> T:
    """Live pages swap their <main> every few seconds: an element found just before a
    swap is stale by the time it is used, so find it again (as a person would)."""
    for _ in range(4):
        try:
            return fn()
        except StaleElementReferenceException:
            time.sleep(0.2)
    return fn()


def _text(driver: object) -> str:
    return _retry(lambda: driver.find_element(By.TAG_NAME, "main").text)  # type: ignore[attr-defined]


def _click(driver: object, text: str) -> None:
    _retry(lambda: driver.find_element(By.LINK_TEXT, text).click())  # type: ignore[attr-defined]


def test_click_through_every_page(
    browser: object, served: tuple[str, History], tmp_path: Path
) -> None:
    base, history = served
    d = browser
    shots = _shots(tmp_path)
    d.get(base + "/")  # type: ignore[attr-defined]
    assert "Fleet" in _text(d) and "pump-1" in _text(d) and LONG_DEVICE in _text(d)
    assert d.find_elements(By.CSS_SELECTOR, "table.fleet tbody tr")  # type: ignore[attr-defined]
    d.save_screenshot(str(shots / "dashboard-fleet.png"))  # type: ignore[attr-defined]

    _click(d, "pump-1")
    assert "Device pump-1" in _text(d) and "sensor@v1" in _text(d)
    assert d.find_elements(By.CSS_SELECTOR, "main svg")  # type: ignore[attr-defined]
    d.save_screenshot(str(shots / "dashboard-device.png"))  # type: ignore[attr-defined]

    _click(d, "sensor@v1")  # the served version, linked from the device
    assert "Lineage" in _text(d) and "registry tag" in _text(d)

    _click(d, "Models")
    _click(d, "sensor")
    _click(d, "sensor@v2")
    assert "winner of the A/B test" in _text(d)  # who deployed it, and why
    d.save_screenshot(str(shots / "dashboard-model.png"))  # type: ignore[attr-defined]

    _click(d, "Models")
    _click(d, "sensor")
    _click(d, "sensor@v3")
    assert "pumps@4" in _text(d) and "retrain: drift on vibration_mm_s" in _text(d)
    _click(d, "sensor@v2")  # its parent, linked from the lineage
    assert "winner of the A/B test" in _text(d)
    d.back()  # type: ignore[attr-defined]
    d.save_screenshot(str(shots / "dashboard-lineage.png"))  # type: ignore[attr-defined]

    _click(d, "Drift")
    assert "Drift" in _text(d) and "vibration" in _text(d)
    assert len(d.find_elements(By.CSS_SELECTOR, "main svg")) >= 3  # type: ignore[attr-defined]
    d.save_screenshot(str(shots / "dashboard-drift.png"))  # type: ignore[attr-defined]

    _click(d, "Experiments")
    for exp_id in history.experiments:
        assert exp_id in _text(d)
    _click(d, history.experiments[0])
    assert "stopped" in _text(d).lower() or "rollback" in _text(d).lower()
    assert d.find_elements(By.CSS_SELECTOR, "main svg")  # type: ignore[attr-defined]
    d.save_screenshot(str(shots / "dashboard-experiment.png"))  # type: ignore[attr-defined]

    _click(d, "Rollouts")
    for rid in history.rollouts:
        assert rid in _text(d)
    _click(d, history.rollouts[1])
    assert "the test aborts it" in _text(d)
    d.save_screenshot(str(shots / "dashboard-rollout.png"))  # type: ignore[attr-defined]

    _click(d, "Events")
    assert f"history built for {LONG_DEVICE}" in _text(d)
    d.save_screenshot(str(shots / "dashboard-events.png"))  # type: ignore[attr-defined]
    for name in ("fleet", "device", "model", "lineage", "drift", "experiment", "rollout", "events"):
        assert (shots / f"dashboard-{name}.png").stat().st_size > 10_000


def test_sign_in_act_and_see_it_live(
    browser: object, served: tuple[str, History], tmp_path: Path
) -> None:
    base, history = served
    d = browser
    d.get(base + "/events")  # type: ignore[attr-defined]
    assert not d.find_elements(By.CSS_SELECTOR, "form.action")  # type: ignore[attr-defined]
    # The page updates without a reload: an event written now appears on the open page.
    db = ControlDB(history.ws.control_db)
    try:
        db.add_event("note", "written while the page was open", subject="pump-2")
    finally:
        db.close()
    WebDriverWait(d, 15).until(lambda drv: "written while the page was open" in _text(drv))

    _click(d, "operator sign-in")
    d.find_element(By.NAME, "user").send_keys("dana")  # type: ignore[attr-defined]
    d.find_element(By.NAME, "token").send_keys(TOKEN)  # type: ignore[attr-defined]
    d.find_element(By.TAG_NAME, "form").submit()  # type: ignore[attr-defined]
    WebDriverWait(d, 10).until(lambda drv: "signed in as dana" in drv.page_source)
    d.get(f"{base}/experiments/{history.experiments[1]}")  # type: ignore[attr-defined]
    # Once the reason holds text the page stops swapping itself (the operator is typing).
    _retry(lambda: d.find_element(By.CSS_SELECTOR, "form.action input[name=reason]").send_keys(  # type: ignore[attr-defined]
        "seen enough"))  # fmt: skip
    d.save_screenshot(str(_shots(tmp_path) / "dashboard-action.png"))  # type: ignore[attr-defined]
    _retry(lambda: d.find_element(By.CSS_SELECTOR, "form.action button").click())  # type: ignore[attr-defined]
    WebDriverWait(d, 15).until(lambda drv: "stopped" in _text(drv))
    _click(d, "Events")
    WebDriverWait(d, 10).until(
        lambda drv: f"dana stopped experiment {history.experiments[1]}" in _text(drv)
    )
    time.sleep(0)  # nothing left running: the server and the browser are module fixtures
