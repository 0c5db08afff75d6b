"""The dashboard in a real browser: headless Chromium against a real daemon and real data.

The daemon runs as users run it (a subprocess), data arrives through
remote-write, and the page is driven by keyboard the way a user would: search
a metric, press Enter, switch the time zone. The checks read what the page
drew (uPlot's data, canvas pixels, table text, a screenshot), so a page that
loads but draws nothing fails.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs
them) and the ``selenium`` test extra; skipped with the reason otherwise.
Set ``TSAGENT_DASHBOARD_SCREENSHOT=docs/dashboard.png`` to refresh the
README's screenshot from this run.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import cramjam
import pytest

from agent.prompb import remote_pb2, types_pb2
from tests.browser import png
from tests.conftest import free_port
from tests.test_daemon import Daemon

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)),
        reason=f"needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)",
    ),
]
webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (the test extra)")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

STEP_MS = 15_000
HISTORY_MS = 2 * 3600 * 1000
ROOMS = {"kitchen": 21.0, "office": 24.0}
SPIKE_AGO_MS = 20 * 60 * 1000  # one planted outlier in the office, 20 minutes before the end


def temperature(room: str, t_ms: int) -> float:
    """A daily-ish wave per room, distinct enough to see two lines on the chart."""
    phase = t_ms / 1000 / 1800 * 2 * math.pi
    return round(ROOMS[room] + 3 * math.sin(phase + (0 if room == "kitchen" else 1.5)), 3)


def post_write(port: int, *series: types_pb2.TimeSeries) -> None:
    body = remote_pb2.WriteRequest(timeseries=list(series)).SerializeToString()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/write",
        data=bytes(cramjam.snappy.compress_raw(body)),
        headers={
            "Content-Type": "application/x-protobuf",
            "Content-Encoding": "snappy",
            "X-Prometheus-Remote-Write-Version": "0.1.0",
        },
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 204


def requests_sample(t_ms: int, value: float) -> types_pb2.TimeSeries:
    return types_pb2.TimeSeries(
        labels=[types_pb2.Label(name="__name__", value="demo_requests_total")],
        samples=[types_pb2.Sample(timestamp=t_ms, value=value)],
    )


def ingest(port: int, end_ms: int) -> dict[str, dict[float, float]]:
    """Two hours of samples for two series through remote-write 1.0; returns them by room."""
    start = end_ms - HISTORY_MS
    sent: dict[str, dict[float, float]] = {}
    series = []
    for room in ROOMS:
        points = [(t, temperature(room, t)) for t in range(start, end_ms + 1, STEP_MS)]
        if room == "office":
            spike = len(points) - 1 - SPIKE_AGO_MS // STEP_MS
            points[spike] = (points[spike][0], points[spike][1] + 15.0)
        sent[room] = {t / 1000: v for t, v in points}
        labels = [("__name__", "demo_temperature_celsius"), ("room", room), ("site", "lab")]
        series.append(
            types_pb2.TimeSeries(
                labels=[types_pb2.Label(name=k, value=v) for k, v in labels],
                samples=[types_pb2.Sample(timestamp=t, value=v) for t, v in points],
            )
        )
    post_write(port, *series, requests_sample(end_ms, 1.0))
    return sent


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[tuple[int, dict[str, dict[float, float]]]]:
    port = free_port()
    daemon = Daemon(
        tmp_path, ["run", "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "d")]
    )
    try:
        daemon.wait_notify("READY=1")
        sent = ingest(port, (int(time.time()) - 60) * 1000 // STEP_MS * STEP_MS)
        yield port, sent
        daemon.proc.send_signal(signal.SIGTERM)
        code = daemon.proc.wait(30)
        assert code == 0, daemon.output()
    finally:
        daemon.stop()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,1000",
        "--force-device-scale-factor=1",
        "--lang=en-US",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        opts.add_argument(flag)
    service = Service(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: Any, check: Callable[[Any], Any], what: str, timeout: float = 20) -> Any:
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2).until(check)
    except Exception as exc:
        status = driver.execute_script("return document.querySelector('#status')?.textContent")
        logs = [e["message"] for e in driver.get_log("browser")]
        raise AssertionError(f"timed out waiting for {what}; status={status!r}; {logs}") from exc


CHART_DATA = """
const c = window.tsagentDashboard && window.tsagentDashboard.chart();
if (!c) return null;
return {labels: c.series.slice(1).map(s => s.label), data: c.data};
"""

HEALTH_AXES = """
const c = window.tsagentDashboard && window.tsagentDashboard.healthChart();
if (!c || !c.axes[0]._values) return null;
return {x: c.axes[0]._values.map(String), yMin: c.scales.y.min, yMax: c.scales.y.max};
"""

CANVAS_PIXELS = """
const canvas = document.querySelector('#chart canvas');
const ctx = canvas.getContext('2d');
const img = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
const [r, g, b] = arguments[0];
let hits = 0;
for (let i = 0; i < img.length; i += 4) {
  if (Math.abs(img[i] - r) < 30 && Math.abs(img[i + 1] - g) < 30 && Math.abs(img[i + 2] - b) < 30
      && img[i + 3] > 0) hits++;
}
return hits;
"""


def chart_points(driver: Any) -> dict[str, list[tuple[float, float]]]:
    got = driver.execute_script(CHART_DATA)
    out: dict[str, list[tuple[float, float]]] = {}
    if got is None:
        return out
    for i, label in enumerate(got["labels"]):
        xs, ys = got["data"][0], got["data"][i + 1]
        out[label] = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
    return out


def first_row_time(driver: Any) -> str:
    return str(
        driver.execute_script(
            "return document.querySelector('#data-table tbody tr th')?.textContent || ''"
        )
    )


def test_pick_a_metric_see_real_points_switch_zone_and_screenshot(
    agent: tuple[int, dict[str, dict[float, float]]], browser: Any, tmp_path: Path
) -> None:
    port, sent = agent
    driver = browser
    driver.get(f"http://127.0.0.1:{port}/dashboard")

    # the metric list comes from /api/v1/label/__name__/values
    wait_for(
        driver,
        lambda d: d.find_elements(By.CSS_SELECTOR, '#metric option[value="demo_requests_total"]'),
        "the metric list",
    )
    # before anything is picked: a hint where the chart will be, not an empty frame
    hint = driver.find_element(By.ID, "chart-empty")
    assert hint.is_displayed() and "Pick a metric" in hint.text
    assert not driver.find_element(By.ID, "chart").is_displayed()
    Select(driver.find_element(By.ID, "tz")).select_by_value("UTC")
    search = driver.find_element(By.ID, "metric-search")
    search.send_keys("temperat")
    options = [o.text for o in driver.find_elements(By.CSS_SELECTOR, "#metric option")]
    assert options == ["demo_temperature_celsius"]  # the search filtered the list
    search.send_keys(Keys.ENTER)  # keyboard only: Enter picks the first match

    # raw resolution: the chart must hold exactly the samples remote-write stored
    Select(driver.find_element(By.ID, "resolution")).select_by_value("raw")
    points = wait_for(
        driver,
        lambda d: (
            "every stored sample" in d.find_element(By.ID, "chart-note").text
            and (p := chart_points(d))
            and p
        ),
        "the chart to draw raw samples",
    )
    assert sorted(points) == ['{room="kitchen", site="lab"}', '{room="office", site="lab"}']
    for label, pts in points.items():
        room = label.split('"')[1]
        assert 230 <= len(pts) <= 241, len(pts)  # one hour of 15 s samples
        for t, v in pts:
            assert sent[room][t] == pytest.approx(v), (room, t)
    drawn = driver.execute_script(CANVAS_PIXELS, [0x1F, 0x77, 0xB4])  # the first series' colour
    assert drawn > 200, f"only {drawn} pixels of the line colour on the canvas"
    assert driver.find_element(By.ID, "chart").get_attribute("data-points") == str(
        sum(len(p) for p in points.values())
    )

    # 5m resolution reads /query/rollup: each point is the mean of the samples in its window
    Select(driver.find_element(By.ID, "resolution")).select_by_value("5m")
    wait_for(
        driver,
        lambda d: "/query/rollup" in d.find_element(By.ID, "chart-note").text,
        "the rollup answer",
    )
    for label, pts in chart_points(driver).items():
        room = label.split('"')[1]
        assert len(pts) >= 12
        for t, v in pts:
            window = [x for ts, x in sent[room].items() if t <= ts < t + 300]
            assert v == pytest.approx(sum(window) / len(window)), (room, t)

    # the label filters come from /api/v1/series; choosing one narrows the chart
    Select(driver.find_element(By.ID, "filter-room")).select_by_value("office")
    office = '{room="office", site="lab"}'
    wait_for(driver, lambda d: list(chart_points(d)) == [office], "the filtered chart")
    assert driver.find_element(By.ID, "promql").get_attribute("value") == (
        'demo_temperature_celsius{room="office"}'
    )

    # time zone: the table and the x axis follow the zone
    utc_first = first_row_time(driver)
    assert utc_first.endswith(" UTC"), utc_first
    newest = max(t for t, _ in chart_points(driver)[office])
    axis_utc = driver.execute_script("return window.tsagentDashboard.chart().axes[0]._values")
    Select(driver.find_element(By.ID, "tz")).select_by_value("Asia/Tokyo")
    wait_for(driver, lambda d: first_row_time(d) != utc_first, "the table in the new zone")
    local = datetime.fromtimestamp(newest, UTC).astimezone(ZoneInfo("Asia/Tokyo"))
    assert first_row_time(driver) == local.strftime("%Y-%m-%d %H:%M:%S GMT+9")
    axis_tokyo = driver.execute_script("return window.tsagentDashboard.chart().axes[0]._values")
    assert axis_tokyo and axis_tokyo != axis_utc, (axis_utc, axis_tokyo)

    # auto step (query_range) also draws, and the PromQL box runs what is typed
    Select(driver.find_element(By.ID, "resolution")).select_by_value("auto")
    box = driver.find_element(By.ID, "promql")
    box.clear()
    box.send_keys("max by (site) (demo_temperature_celsius)")
    box.send_keys(Keys.CONTROL, Keys.ENTER)
    wait_for(
        driver,
        lambda d: (
            (p := chart_points(d)) and list(p) == ['{site="lab"}'] and len(p['{site="lab"}']) > 50
        ),
        "the PromQL result",
    )
    best = max(max(v.values()) for v in sent.values())  # the spike included
    assert max(v for _, v in chart_points(driver)['{site="lab"}']) <= best + 1e-9

    # anomaly overlay (plugin analytics): the planted spike is flagged, with its band
    Select(driver.find_element(By.ID, "tz")).select_by_value("UTC")
    Select(driver.find_element(By.ID, "filter-room")).select_by_value("")  # the picker's
    Select(driver.find_element(By.ID, "filter-room")).select_by_value("office")  # selector again
    Select(driver.find_element(By.ID, "resolution")).select_by_value("raw")
    spike_t, spike_v = max(sent["office"].items(), key=lambda kv: kv[1])
    if not driver.find_element(By.ID, "anomaly-wrap").is_displayed():
        pytest.fail("the analytics plugin is loaded but the anomaly control is hidden")
    driver.find_element(By.ID, "anomaly").send_keys(Keys.SPACE)
    flagged = wait_for(
        driver,
        lambda d: chart_points(d).get("anomaly"),
        "flagged anomalies on the chart",
    )
    assert (spike_t, spike_v) in flagged, flagged
    assert len(flagged) <= 3, f"a clean sine wave flagged too often: {flagged}"
    assert "anomalies (zscore)" in driver.find_element(By.ID, "chart-note").text
    driver.execute_script("document.activeElement.blur()")
    shot = driver.get_screenshot_as_png()
    pixels = png.decode(shot)
    assert pixels.shape[1] == driver.execute_script("return window.innerWidth")
    assert tuple(pixels[5, 5, :3]) == (0x24, 0x29, 0x2F)  # the header bar: decoding is right
    colours = png.distinct_colours(pixels)
    assert colours > 50, f"screenshot has only {colours} colours: blank?"
    (tmp_path / "dashboard.png").write_bytes(shot)
    if target := os.environ.get("TSAGENT_DASHBOARD_SCREENSHOT"):
        shutil.copyfile(tmp_path / "dashboard.png", target)


def test_alerts_and_health_pages_and_a_phone_screen(
    agent: tuple[int, dict[str, dict[float, float]]], browser: Any
) -> None:
    port, _sent = agent
    driver = browser
    driver.get(f"http://127.0.0.1:{port}/#/health")
    # two reads of /metrics five seconds apart give a rate; the first shows totals
    wait_for(
        driver,
        lambda d: "remote_write" in d.find_element(By.ID, "health-sources").text,
        "the ingest table",
    )
    cards = driver.find_element(By.ID, "health-cards").text
    assert "Active series" in cards and "963 ingested since start" in cards, cards
    assert "demo_temperature_celsius" in driver.find_element(By.ID, "health-top").text
    # the rate chart: whole-second ticks (never ":04.250") and a y axis from zero
    axes = wait_for(
        driver,
        lambda d: d.execute_script(HEALTH_AXES),
        "the ingest-rate chart (three reads of /metrics)",
        timeout=40,
    )
    assert axes["x"] and not any("." in label for label in axes["x"]), axes
    assert axes["yMin"] == 0 and axes["yMax"] >= 1, axes

    driver.find_element(By.CSS_SELECTOR, 'nav a[data-page="alerts"]').send_keys(Keys.ENTER)
    wait_for(
        driver,
        lambda d: "No rules are loaded." in d.find_element(By.ID, "rules-table").text,
        "the rules table",
    )
    assert driver.find_element(By.ID, "page-health").get_attribute("hidden") is not None

    # live: samples committed after the page loaded reach the chart through /api/v1/stream
    driver.get(f"http://127.0.0.1:{port}/dashboard#/explore?metric=demo_requests_total&res=raw")
    wait_for(driver, lambda d: len(chart_points(d).get("demo_requests_total", [])) == 1, "1 point")
    driver.find_element(By.ID, "live").send_keys(Keys.SPACE)
    wait_for(
        driver,
        lambda d: d.find_element(By.ID, "chart").get_attribute("data-live") == "subscribed",
        "the stream subscription",
    )
    post_write(port, requests_sample(int(time.time() * 1000), 2.0))
    live = wait_for(
        driver,
        lambda d: len(p := chart_points(d).get("demo_requests_total", [])) == 2 and p,
        "the live sample on the chart",
    )
    assert live[-1][1] == 2.0

    # a query with nothing in range says so where the chart would be
    driver.get(f"http://127.0.0.1:{port}/dashboard#/explore?expr=no_such_metric_anywhere&res=raw")
    driver.refresh()
    hint = wait_for(
        driver,
        lambda d: (
            (h := d.find_element(By.ID, "chart-empty")).is_displayed()
            and "No data in this range" in h.text
            and h
        ),
        "the no-data hint",
    )
    panel = driver.execute_script(
        "return arguments[0].parentElement.contains(document.querySelector('#chart'))", hint
    )
    assert panel, "the hint belongs to the chart's panel"
    assert not driver.find_element(By.ID, "chart").is_displayed()
    assert driver.find_element(By.ID, "status").text == ""

    # a phone: nothing wider than the screen
    driver.set_window_size(390, 844)
    driver.get(f"http://127.0.0.1:{port}/dashboard#/explore?metric=demo_temperature_celsius")
    driver.refresh()  # a hash change alone does not reload the Explore state
    wait_for(
        driver, lambda d: chart_points(d).get('{room="office", site="lab"}'), "the chart on a phone"
    )
    overflow = driver.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"page is {overflow}px wider than a phone screen"


def test_credentials_dialog_when_read_needs_a_token(tmp_path: Path, browser: Any) -> None:
    """The page is public; its data is not: a 401 opens the sign-in dialog, a token fixes it."""
    port = free_port()
    cfg = tmp_path / "tsagent.yaml"
    cfg.write_text("auth:\n  read:\n    bearer_tokens: [s3cret]\n")
    args = ["run", "-c", str(cfg), "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path)]
    daemon = Daemon(tmp_path, args)
    try:
        daemon.wait_notify("READY=1")
        post_write(port, requests_sample(int(time.time() * 1000), 5.0))
        driver = browser
        driver.get(f"http://127.0.0.1:{port}/dashboard")
        dialog = wait_for(
            driver,
            lambda d: (e := d.find_element(By.ID, "login")).get_attribute("open") is not None and e,
            "the sign-in dialog",
        )
        token = driver.find_element(By.ID, "login-token")
        assert driver.switch_to.active_element == token  # focus moved into the dialog
        token.send_keys("s3cret", Keys.ENTER)
        wait_for(
            driver,
            lambda d: d.find_elements(
                By.CSS_SELECTOR, '#metric option[value="demo_requests_total"]'
            ),
            "the metric list after signing in",
        )
        assert dialog.get_attribute("open") is None
    finally:
        daemon.stop()
