"""What people look at, seen in a real browser: a real two-trial sweep (conftest's learned store) is opened
in the MLflow UI (served by `mlflow server` on loopback, as `make ui` serves it) and its HTML report
(served by a local http.server), both in Debian's headless Chromium driven by Playwright. The UI
must list the trials nested under the sweep's run, draw a trial's per-epoch metrics and show its
confusion-matrix PNG; the report must load without a console error and draw every figure with the
traces its sections promise. Screenshots land in tests/output/ (git-ignored).

Without Chromium (or Playwright) the tests skip, saying why; CI sets WORKBENCH_REQUIRE_BROWSER=1 so
that there a missing browser fails instead of silently checking nothing.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO, copy_learned

from workbench import vocabulary
from workbench.analysis import compare, report
from workbench.track import store as tracking
from workbench.track import ui

OUTPUT = REPO / "tests" / "output"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
EPOCHS = 6  # conftest's LEARN
# The MLflow UI remembers a global "GenAI / Model training" switch (GenAI by default) and, in 3.x,
# lays an experiment out by it; this query parameter is what its "Model training" button sets.
MODEL_TRAINING = "workflowType=machine_learning"
WAIT_MS = 60_000  # first loads of the UI's bundle on a busy 2-core machine


def required() -> bool:
    return os.environ.get("WORKBENCH_REQUIRE_BROWSER", "").strip() not in ("", "0", "false", "no")


def unavailable(reason: str):
    if required():
        pytest.fail(f"WORKBENCH_REQUIRE_BROWSER is set but {reason}", pytrace=False)
    pytest.skip(f"{reason} (set WORKBENCH_REQUIRE_BROWSER=1 to make this a failure)")


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium, headless, for the whole module (Playwright talks to it; it never
    downloads a browser of its own)."""
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if not executable:
        unavailable("no chromium on PATH: `apt-get install chromium` (Debian's package)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("Playwright is not installed: `pip install -e '.[test]'`")
    OUTPUT.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser):
    """A fresh browser profile per test (no UI state carried over), 1280 px wide."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
    context.set_default_timeout(WAIT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, learned):
    """A real two-trial sweep (a copy of the session's learned store: six epochs, so every curve
    has six points; two learning rates, so the trials differ), its comparison table and its
    report."""
    store = copy_learned(learned, tmp_path_factory.mktemp("browser"))
    client = tracking.connect(store.uri)
    # As `workbench report` builds it (cli/compare.py: report_command).
    selection = compare.select_runs(client, experiment="learn", sweep="latest")
    table = compare.compare(selection.runs, only_diff=True,
                            predictions_for=lambda ids: compare.load_predictions(client, ids)).table
    page = report.make_report(client, selection, table, out=store.root / "reports" / "learn-report.html").path
    yield {"folder": store.root, "uri": store.uri, "client": client, "table": table, "report": page,
           "sweep_id": store.sweep_id}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_ui(sweep):
    """`mlflow server` on the sweep's SQLite store, on loopback, with the arguments `make ui` gives
    it: no artifact root, so the confusion matrix shown is served from where the run recorded it."""
    port = free_port()
    log = sweep["folder"] / "mlflow-server.log"
    # The server's job runner starts half a dozen consumer processes that nothing here uses; on two
    # cores they would only slow the suite down.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri", sweep["uri"],
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            cwd=sweep["folder"], stdout=out, stderr=subprocess.STDOUT, env=env,
            start_new_session=True)  # its own process group: uvicorn's worker goes down with it
    base = f"http://127.0.0.1:{port}"
    try:
        deadline, attempts = time.monotonic() + 120, 0
        while True:
            attempts += 1
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline or attempts > 400:
                pytest.fail(f"mlflow server did not come up on {base}:\n{log.read_text()[-3000:]}", pytrace=False)
            time.sleep(0.25)
        yield base
    finally:
        stop(server)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def report_url(sweep):
    """The report's folder served over HTTP on loopback, the way a browser fetches a page."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            # Chromium asks any web server for a favicon; the 404 it would log is this test
            # server's, not the report's (opened from disk, the page asks for nothing).
            if self.path == "/favicon.ico":
                self.send_response(204)
                self.end_headers()
                return
            super().do_GET()

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(sweep["report"].parent)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{sweep['report'].name}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


# --- the MLflow UI -----------------------------------------------------------------------------------

def close_assistant(page) -> None:
    """The UI's assistant side panel only narrows the screenshots."""
    close = page.locator("[data-component-id='mlflow.assistant.chat_panel.close']")
    if close.is_visible():
        close.click()


def test_mlflow_ui_nests_the_trials_under_the_sweep_and_shows_their_curves_and_confusion_matrix(
        browser, page, sweep, mlflow_ui):
    client, parent = sweep["client"], sweep["sweep_id"]
    experiment = client.get_run(parent).info.experiment_id
    trials = {r.info.run_name: r.info.run_id for r in client.search_runs(
        [experiment], f"tags.mlflow.parentRunId = '{parent}'")}
    assert len(trials) == 2 and all(name.startswith("trial-") for name in trials)
    sweep_name = client.get_run(parent).info.run_name

    page.goto(f"{mlflow_ui}/#/experiments/{experiment}/runs?{MODEL_TRAINING}")
    row = page.locator("[role=row]", has=page.locator(f"a[href$='/runs/{parent}']"))
    row.wait_for()
    close_assistant(page)
    # Nested: the trials are folded under the sweep's row until it is expanded.
    links = page.locator("[role=row] a[href*='/runs/']")
    assert links.all_inner_texts() == [sweep_name]
    row.locator("button[data-component-id*='runnamecellrenderer']").click()
    for run_id in trials.values():
        page.locator(f"[role=row] a[href$='/runs/{run_id}']").wait_for()
    assert links.all_inner_texts()[0] == sweep_name and sorted(links.all_inner_texts()[1:]) == sorted(trials)
    page.screenshot(path=OUTPUT / "mlflow-sweep-with-trials.png")

    trial = trials[min(trials)]
    page.goto(f"{mlflow_ui}/#/experiments/{experiment}/runs/{trial}/model-metrics?{MODEL_TRAINING}")
    cards = page.locator("[data-testid='experiment-view-compare-runs-card']")
    cards.first.wait_for()
    for metric in ("loss", "val_f1_macro"):
        logged = sorted((m.step, m.value) for m in client.get_metric_history(trial, metric))
        assert len(logged) == EPOCHS
        # The charts are virtualised (only the first few are drawn): search brings this one up.
        page.get_by_placeholder("Search metric charts").fill(metric)
        plot = cards.filter(has=page.locator(f"h4[title='{metric}']")).locator(".js-plotly-plot")
        plot.wait_for()
        page.wait_for_function("d => d.data && d.data.length && d._fullLayout", arg=plot.element_handle())
        drawn = plot.evaluate("d => d.data.map(t => ({type: t.type, x: t.x, y: t.y}))")
        assert drawn[0]["type"] == "scatter"
        assert drawn[0]["x"] == [step for step, _ in logged]
        assert drawn[0]["y"] == pytest.approx([value for _, value in logged])
        assert plot.locator("svg.main-svg").count() >= 1
    page.screenshot(path=OUTPUT / "mlflow-trial-metrics.png")

    artifact = vocabulary.Artifacts.EVALUATION + "/confusion_matrix.png"
    expected = png_size(Path(client.download_artifacts(trial, artifact, str(sweep["folder"]))))
    page.goto(f"{mlflow_ui}/#/experiments/{experiment}/runs/{trial}/artifacts/{artifact}?{MODEL_TRAINING}")
    image = page.locator(f"img[alt='{artifact}']")
    image.wait_for()
    page.wait_for_function("i => i.complete && i.naturalWidth > 0", arg=image.element_handle())
    assert tuple(image.evaluate("i => [i.naturalWidth, i.naturalHeight]")) == expected
    assert image.bounding_box()["width"] > 100
    page.screenshot(path=OUTPUT / "mlflow-trial-confusion-matrix.png")


def test_the_link_sweep_prints_opens_its_trials_ranked_with_their_state_and_the_curves_first(
        browser, page, sweep, mlflow_ui):
    """The address `workbench sweep` printed (conftest kept its output), on this server: the
    sweep's trials as rows without a click, best validation objective first, the objective, test
    scores, trial state and searched hyperparameter as columns; its chart view starts with the curves."""
    client = sweep["client"]
    printed = (sweep["folder"] / "sweep.out").read_text()
    link = re.search(r"browse it: make ui, then (\S+)", printed).group(1)
    assert link.startswith(ui.DEFAULT_HOST + "/#/experiments/"), printed
    link = mlflow_ui + link.removeprefix(ui.DEFAULT_HOST)
    trials = sorted(client.search_runs([client.get_run(sweep["sweep_id"]).info.experiment_id],
                                       f"tags.mlflow.parentRunId = '{sweep['sweep_id']}'"),
                    key=lambda run: -run.data.metrics["objective"])
    assert len(trials) == 2

    page.goto(link)
    links = page.locator("[role=row] a[href*='/runs/']")
    page.wait_for_function("n => document.querySelectorAll(\"[role=row] a[href*='/runs/']\").length === n", arg=2)
    close_assistant(page)
    assert links.all_inner_texts() == [run.info.run_name for run in trials]   # no sweep row to unfold
    # The UI took the view's sort (its address now says so): the objective, largest first, as
    # val_f1_macro is better larger (the two trials may tie, so the rows alone cannot show it).
    assert "orderByKey=metrics.%60objective%60" in page.url and "orderByAsc=false" in page.url, page.url
    headers = page.locator(".ag-header-cell[col-id]").evaluate_all("cells => cells.map(c => c.getAttribute('col-id'))")
    wanted = [ui.column("metrics", m) for m in ui.SCORES] + [ui.column("tags", vocabulary.STATE),
                                                             ui.column("params", "learning_rate")]
    assert set(wanted) <= set(headers), headers
    assert headers.index(wanted[0]) < headers.index(wanted[1])   # the objective leads the scores
    for run in trials:
        row = page.locator("[role=row]", has=page.locator(f"a[href$='/runs/{run.info.run_id}']")).last
        index = row.get_attribute("row-index")
        cells = page.locator(f".ag-center-cols-container [role=row][row-index='{index}'] [role=gridcell][col-id]")
        shown = dict(cells.evaluate_all("cs => cs.map(c => [c.getAttribute('col-id'), c.innerText.trim()])"))
        assert shown[ui.column("tags", vocabulary.STATE)] == run.data.tags[vocabulary.STATE] == "finished"
        assert float(shown[ui.column("metrics", "objective")]) == pytest.approx(run.data.metrics["objective"], abs=1e-6)
        assert float(shown[ui.column("params", "learning_rate")]) == float(run.data.params["learning_rate"])
    page.screenshot(path=OUTPUT / "mlflow-sweep-view.png")

    page.goto(link + "&compareRunsMode=CHART")
    cards = page.locator("[data-testid='experiment-view-compare-runs-card'] h4[title]")
    cards.first.wait_for()
    close_assistant(page)
    page.wait_for_function("n => document.querySelectorAll(\"[data-testid='experiment-view-compare-runs-card'] h4[title]\").length >= n",
                           arg=len(ui.CURVES))
    assert cards.evaluate_all("hs => hs.map(h => h.getAttribute('title'))")[:len(ui.CURVES)] == list(ui.CURVES)
    page.screenshot(path=OUTPUT / "mlflow-sweep-charts.png")


# --- the HTML report ---------------------------------------------------------------------------------

def expected_figures(table) -> dict[str, list[str]]:
    """Section -> trace types, as `report.build_report` draws them for these runs: every run is
    among the top 5 whose curves are overlaid and the top 3 whose confusion matrices are shown."""
    runs = len(table)
    assert runs <= 3
    expected = {
        "Objective by axis": ["box"] * len(report.varied_axes(table)),     # one box per axis the runs differ on
        "Parameters vs objective": ["parcoords"],                          # one line per run in one trace
        "Learning curves": ["scatter"] * (runs * len(report.CURVE_KEYS)),  # one line per run and per-epoch metric
        "Confusion matrices": ["heatmap"] * runs,                          # one panel per run
        "Calibration": ["scatter"] * (1 + 2 * runs),                       # the diagonal, then before / after per run
        "Accuracy vs latency": ["scatter", "scatter"],                     # dominated runs, then the Pareto front
    }
    # The learned sweep's two trials share one architecture: no axis varies, and their latencies
    # differ only by timing noise, unless the machine was busy enough to make them differ more.
    if not report.varied_axes(table):
        del expected["Objective by axis"]
    if vocabulary.LATENCY not in table or report.latency_spread(table) < report.TIMING_NOISE:
        del expected["Accuracy vs latency"]
    return expected


def test_report_loads_without_console_errors_and_draws_every_figure(browser, page, sweep, report_url):
    problems = []
    page.on("console", lambda message: message.type == "error" and problems.append(f"console: {message.text}"))
    page.on("pageerror", lambda error: problems.append(f"uncaught: {error}"))
    page.on("requestfailed", lambda request: problems.append(f"request failed: {request.url}"))
    page.on("response", lambda response: response.status >= 400 and problems.append(f"HTTP {response.status}: {response.url}"))
    expected = expected_figures(sweep["table"])

    page.goto(report_url, wait_until="load")
    page.wait_for_function(
        "n => { const plots = document.querySelectorAll('.js-plotly-plot');"
        " return plots.length === n && Array.from(plots).every(d => d._fullLayout && d.querySelector('svg.main-svg')); }",
        arg=len(expected))
    drawn = page.evaluate("""() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(d => ({
        section: d.closest('section').querySelector('h2').textContent,
        types: d.data.map(t => t.type), names: d.data.map(t => t.name || ''),
        full: d._fullData.length, height: d.getBoundingClientRect().height}))""")
    assert {d["section"]: d["types"] for d in drawn} == expected
    assert [d["section"] for d in drawn] == [title for title in report.SECTIONS[1:] if title in expected]
    assert all(d["full"] == len(d["types"]) and d["height"] > 200 for d in drawn)
    # The overlaid curves carry one legend name per run, the runs the leaderboard lists.
    curves = next(d for d in drawn if d["section"] == "Learning curves")
    table = sweep["table"]
    assert set(curves["names"]) == {report.label(table, run_id) for run_id in table["run_id"]}
    assert page.locator("section", has=page.locator("h2", has_text="Leaderboard")).locator("tbody tr").count() == len(table)
    # A section with nothing to draw says why, in one line, instead of an empty chart.
    assert page.locator(".missing").count() == len(report.SECTIONS) - 1 - len(expected)
    assert "leads (marked ★)" in page.locator("section", has=page.locator("h2", has_text="Leaderboard")).inner_text()
    page.screenshot(path=OUTPUT / "report.png", full_page=True)
    assert problems == []
