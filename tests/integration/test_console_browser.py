"""The web console in a real browser: Playwright drives Debian's Chromium against a real
``modelyard serve``. Each page loads without console errors; a deployer signs in, rolls back
and sees production move, starts a canary and watches it advance; a viewer sees no buttons.
Screenshots of every page go to the test artifacts folder (``MODELYARD_TEST_ARTIFACTS``, else
the test's tmp folder); with ``MODELYARD_UPDATE_SCREENSHOTS=1`` the overview and rollout ones
also to docs/images/ for the README."""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from modelyard.config import Settings
from modelyard.registry import Registry
from modelyard.testing import ServerProcess, register_constant, register_hgb

CHROMIUM = "/usr/bin/chromium"
DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"


def _playwright() -> Any:
    problem = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        problem = "playwright is not installed: pip install playwright"
    if problem is None and not os.access(CHROMIUM, os.X_OK):
        problem = f"{CHROMIUM} is missing: apt-get install chromium"
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(problem + " (CI is set, so this fails instead of skipping)")
        pytest.skip(problem)
    return sync_playwright


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory,
           ) -> Iterator[tuple[ServerProcess, dict[str, str]]]:
    home = tmp_path_factory.mktemp("console-browser") / "home"
    with Registry.open(Settings.from_env(home=home, actor="tester")) as reg:
        # churn's rollouts analyse after a few requests, so a canary advances in seconds
        quick = {"rollout": {"strategy": "canary", "steps": [20, 50], "every_s": 1,
                             "min_requests": 5}, "metrics": ["accuracy"]}
        for name in ("fraud", "churn"):
            register_constant(reg, name, 1, meta=quick if name == "churn" else None)
            register_constant(reg, name, 2, meta=quick if name == "churn" else None)
        register_hgb(reg, "ranker", max_iter=10, n_features=4)  # profiled: drift to draw
        keys = {role: reg.keys.create_key(f"{role}-ann", role).secret
                for role in ("viewer", "deployer", "predictor")}
    server = ServerProcess(home)
    try:
        yield server, keys
    finally:
        server.stop()


def _artifacts(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("MODELYARD_TEST_ARTIFACTS", tmp_path)) / "console"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _production(server: ServerProcess, key: str, name: str) -> int:
    r = httpx.get(f"{server.url}/api/v1/models/{name}",
                  headers={"Authorization": f"Bearer {key}"}, timeout=10)
    return int(r.json()["aliases"]["production"])


def _traffic(server: ServerProcess, key: str, name: str, stop: threading.Event) -> None:
    """Predictions, and a label for each (the monitoring page's metric per version): the
    answer itself, so the canary's analysis never sees the candidate regress."""
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"},
                      timeout=10) as client:
        while not stop.is_set():
            labels = []
            for _ in range(10):
                rid = uuid.uuid4().hex
                r = client.post(f"/v1/models/{name}/predict",
                                json={"instances": [[0.0, 0.0, 0.0]]},
                                headers={"X-Request-Id": rid})
                if r.status_code == 200:  # right whichever version answered: no regression
                    labels.append({"request_id": rid, "label": r.json()["predictions"][0]})
            client.post(f"/v1/models/{name}/feedback", json={"labels": labels})
            time.sleep(0.05)


def _drifted(server: ServerProcess, keys: dict[str, str], name: str) -> None:
    """Shifted inputs for ``name``, then a stored drift check (the monitoring page's picture)."""
    rng = np.random.default_rng(1)
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for _ in range(12):
            rows = (rng.normal(size=(20, 4)) + np.array([1.5, 0.0, 0.0, -1.0])).tolist()
            r = client.post(f"/v1/models/{name}/predict", json={"instances": rows},
                            headers={"Authorization": f"Bearer {keys['predictor']}"})
            assert r.status_code == 200, r.text
        for _ in range(40):  # the prediction log writes in the background
            r = client.post(f"/api/v1/models/{name}/drift",
                            headers={"Authorization": f"Bearer {keys['deployer']}",
                                     "Content-Type": "application/json"})
            if r.status_code == 200:
                return
            time.sleep(0.25)
        raise AssertionError(r.text)


def test_the_console_in_a_browser(served: tuple[ServerProcess, dict[str, str]],
                                  tmp_path: Path) -> None:
    sync_playwright = _playwright()
    server, keys = served
    shots = _artifacts(tmp_path)
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("response", lambda r: errors.append(f"{r.status} {r.url}")
                if r.status >= 400 else None)
        page.goto(f"{server.url}/ui/")
        assert "/ui/login" in page.url
        page.fill("input[name=key]", keys["deployer"])
        page.click("button[type=submit].primary")
        page.wait_for_url(f"{server.url}/ui/")
        assert page.locator("table tbody tr").count() == 3

        # rollback: production moves from 2 to 1
        page.goto(f"{server.url}/ui/models/fraud")
        page.click("text=Roll back production")
        page.wait_for_selector(".flash")
        assert _production(server, keys["deployer"], "fraud") == 1
        page.screenshot(path=str(shots / "model.png"), full_page=True)

        # a canary on churn v1 -> v2... churn serves 2: roll back first, then canary to 2
        page.goto(f"{server.url}/ui/models/churn")
        page.click("text=Roll back production")
        page.wait_for_selector(".flash")
        start = page.locator("form[action$='/act/start']")
        start.locator("input[name=version]").fill("2")
        start.locator("select[name=strategy]").select_option("canary")
        start.locator("input[name=steps]").fill("20 50")
        start.locator("input[name=every_s]").fill("1")
        start.locator("button").click()
        page.wait_for_url("**/ui/models/churn/rollout**")
        stop = threading.Event()
        feeder = threading.Thread(target=_traffic, args=(server, keys["predictor"], "churn", stop))
        feeder.start()
        try:
            # htmx refreshes the live part: the steps advance without a reload
            # (polled from Python: the console's CSP forbids evaluating strings as script)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not (
                    page.locator("ol.steps li.done").count() or
                    page.locator("text=promoted").count()):
                page.wait_for_timeout(250)
            assert page.locator("ol.steps li.done").count() or page.locator(
                "text=promoted").count(), page.inner_text("#rollout")
            page.screenshot(path=str(shots / "rollout.png"), full_page=True)
        finally:
            stop.set()
            feeder.join()

        _drifted(server, keys, "ranker")
        for path, name in (("/ui/runs", "runs"), ("/ui/audit", "audit"),
                           ("/ui/models/churn/monitoring", "monitoring"),
                           ("/ui/models/ranker/monitoring", "drift"),
                           ("/ui/models/fraud/compare?a=1&b=2", "compare")):
            page.goto(server.url + path)
            page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
        page.goto(f"{server.url}/ui/?sort=requests&dir=desc")  # traffic, a rollout, drift
        page.screenshot(path=str(shots / "overview.png"), full_page=True)

        # a viewer sees no buttons; in Tokyo (UTC+9), "what served at a time" is typed in the
        # viewer's zone and sent as UTC
        viewer = browser.new_page(viewport={"width": 420, "height": 800},  # a narrow window
                                  timezone_id="Asia/Tokyo")
        viewer.goto(f"{server.url}/ui/login")
        viewer.fill("input[name=key]", keys["viewer"])
        viewer.click("button[type=submit].primary")
        viewer.goto(f"{server.url}/ui/models/fraud")
        assert viewer.locator("form[action*='/act/']").count() == 0
        asked = viewer.locator("form[data-local-time-form]")
        assert asked.locator("[data-zone-label]").inner_text() == "Time (your zone)"
        asked.locator("input[data-local-time]").fill("2030-01-01T09:00:00")
        asked.locator("button[type=submit]").click()
        viewer.wait_for_url("**at=2030-01-01T00%3A00%3A00.000Z*")
        assert viewer.locator("input[data-local-time]").input_value().startswith("2030-01-01T09:00")
        viewer.screenshot(path=str(shots / "model-viewer-narrow.png"), full_page=True)
        browser.close()
    assert errors == []
    if os.environ.get("MODELYARD_UPDATE_SCREENSHOTS"):  # never rewrite tracked files unasked
        DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
        for name in ("overview", "rollout"):
            shutil.copyfile(shots / f"{name}.png", DOCS_IMAGES / f"console-{name}.png")
