"""The dashboard page in a real browser (Debian's headless Chromium, driven by Playwright): every
chart drawn with as many marks as the API has data, the ECE label equal to the API's, the key
prompt when keys exist, and activation by an admin key. A screenshot is saved under
tests/output/."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy.orm import Session, sessionmaker

from api.app import create_app
from labelq.settings import Settings
from tests.conftest import InlineDispatcher, create_key, services_of
from tests.test_dashboard import DASH, NAME, _seed

pytestmark = pytest.mark.slow
OUTPUT = Path(__file__).resolve().parent / "output"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def factory(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    """A SQLite database of the test's own (the page is the same whatever the database)."""
    from db.migrate import upgrade
    from tests.conftest import engine_at

    url = f"sqlite:///{tmp_path / 'labelq.db'}"
    upgrade(url)
    engine = engine_at(url)
    yield sessionmaker(engine, expire_on_commit=False)
    engine.dispose()


@pytest.fixture
def served(
    request: pytest.FixtureRequest, factory: sessionmaker[Session], fake_scorer: Any
) -> Iterator[tuple[str, dict[str, Any]]]:
    """The API over HTTP on a seeded database (two jobs of SST-2 sentences with gold labels,
    an active temperature calibration and an inactive Platt one), served to the browser
    without a key (`--no-auth`) unless the test is marked `keys_required`."""
    with _seed(factory, fake_scorer) as (c, ids):
        platt = c.post(
            f"{DASH}/calibrations", json={"method": "platt", "job_id": ids["old"]}
        ).json()
        ids["platt"] = platt["id"]
        sets = c.post(
            f"{DASH}/calibrations",
            json={"method": "conformal", "job_id": ids["old"], "options": {"mondrian": True}},
        ).json()
        ids["conformal"] = sets["id"]
    no_auth = request.node.get_closest_marker("keys_required") is None
    config = Settings(model="tiny-model", chunk_size=4, no_auth=no_auth)
    dispatcher = InlineDispatcher(fake_scorer)
    services = services_of(factory, config, dispatcher)
    dispatcher.bind(services)
    app = create_app(services)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            httpx.get(f"{url}/healthz", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    yield url, ids
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: deploy/test.sh installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def _marks(page: Any, canvas: str) -> list[int]:
    """Drawn elements per dataset of the Chart.js chart on `canvas`."""
    return list(
        page.evaluate(
            """id => { const c = Chart.getChart(id);
                return c.data.datasets.map((_, i) => c.getDatasetMeta(i).data.length); }""",
            canvas,
        )
    )


def test_every_chart_is_drawn_from_the_api(
    served: tuple[str, dict[str, Any]], browser: Any
) -> None:
    url, ids = served
    api = httpx.Client(base_url=url)
    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{url}/dashboard?classifier={NAME}")
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    assert errors == []

    reliability = api.get(f"{DASH}/reliability", params={"bins": 15}).json()
    filled = [b for b in reliability["bins"] if b["count"]]
    assert _marks(page, "reliability") == [len(filled), 2]  # a bar per non-empty bin; diagonal
    assert f"ECE {reliability['ece']:.4f}" in page.inner_text("#reliability-ece")

    estimated = api.get(f"{DASH}/estimated-performance", params={"calibration": "stored"}).json()
    e = estimated["estimate"]
    assert f"{e['accuracy']:.3f} [{e['low']:.3f}, {e['high']:.3f}] · n {e['n']}" == page.inner_text(
        "#estimate-stat"
    )
    shown = page.inner_text("#estimate")
    assert f"on {estimated['measured']['labelled']} labelled" in shown
    assert ("no calibration" in shown) == (estimated["calibration"] is None)
    assert "no monitor" in shown  # drift alarms: none set on this classifier

    series = api.get(f"{DASH}/timeseries", params={"bucket": "day"}).json()["points"]
    assert _marks(page, "timeseries") == [len(series)] * 3 == [2, 2, 2]  # ECE, measured, estimated

    assert _marks(page, "histogram") == [20, 20, 20]

    confusion = api.get(f"{DASH}/confusion").json()
    cells = page.eval_on_selector_all("#confusion td.cell", "tds => tds.map(td => +td.textContent)")
    assert cells == [n for row in confusion["matrix"] for n in row]

    shares = api.get(f"{DASH}/label-distribution", params={"bucket": "day"}).json()
    assert _marks(page, "labels") == [len(shares["buckets"])] * (len(shares["labels"]) + 1)

    thresholds = ",".join(f"{i * 0.05:.2f}" for i in range(21))
    selective = api.get(f"{DASH}/selective", params={"thresholds": thresholds}).json()
    assert _marks(page, "selective") == [sum(1 for p in selective["points"] if p["count"])]

    rows = page.eval_on_selector_all("#calibrations tbody tr", "trs => trs.length")
    listed = api.get(f"{DASH}/calibrations").json()
    assert rows == len(listed) == 3
    conformal = next(c for c in listed if c["id"] == ids["conformal"])["metrics"]
    by_label = " · ".join(f"{k} {v:.2f}" for k, v in conformal["coverage_by_label"].items())
    assert f"{conformal['coverage']:.2f} ({by_label})" in page.inner_text("#calibrations")
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / "dashboard.png"), full_page=True)

    # Under another calibration the charts are redrawn from the recomputed figures.
    page.select_option("#calibration", "none")
    page.click("#filters button[type=submit]")
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    uncalibrated = api.get(f"{DASH}/reliability", params={"calibration": "none"}).json()
    assert f"ECE {uncalibrated['ece']:.4f}" in page.inner_text("#reliability-ece")
    assert "recomputed" in page.inner_text("#reliability-caption")
    page.close()


@pytest.mark.keys_required
def test_keys_are_asked_for_and_only_admins_activate(
    served: tuple[str, dict[str, Any]], browser: Any, factory: sessionmaker[Session]
) -> None:
    url, ids = served
    admin = create_key(factory, "operator")
    auth = {"Authorization": f"Bearer {admin}"}
    reader = httpx.post(
        f"{url}/v1/keys", json={"name": "viewer", "scopes": ["read"]}, headers=auth
    ).json()["key"]

    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    page.goto(f"{url}/dashboard")
    page.wait_for_selector("#key-form:not([hidden])", timeout=10_000)
    page.fill("#key", reader)
    page.click("#key-form button")
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    assert page.locator("button[data-calibration]").count() == 0  # a read key cannot activate

    page.evaluate("sessionStorage.clear()")
    page.reload()
    page.wait_for_selector("#key-form:not([hidden])", timeout=10_000)
    page.fill("#key", admin)
    page.click("#key-form button")
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    button = page.locator(f"button[data-calibration='{ids['platt']}']")
    assert button.count() == 1
    button.click()
    # The table is read again: the temperature calibration is the one to activate now.
    page.wait_for_selector(f"button[data-calibration='{ids['calibration']}']", timeout=10_000)
    assert button.count() == 0
    listed = httpx.get(f"{url}{DASH}/calibrations", headers=auth).json()
    assert [c["id"] for c in listed if c["active"]] == [ids["platt"]]
    page.close()
