"""The commands users type, run through the installed `workbench` console script, with assertions
that a broken product cannot pass: a model that learned mask / no mask must classify faces no
dataset holds, through the REST server, through the TFLite export and through `evaluate`; what
`compare`, `report` and the UI show must be the figures MLflow holds; the registry's aliases must
really move; a journal study must really resume; `--data DIR` must really train on DIR's files.

One module-scoped store: a copy of conftest's `learned` (`workbench sweep learn` over LEARN's two
real trainings and `workbench promote --name faces --experiment learn`, run through the console
script once per session), in a folder of its own with its own data, MLflow and Optuna stores, all
named in the environment of every command. Each
server starts once, right after the promotion, and boots while the tests placed before the server
tests run (the order below is for that; rollback comes last because it moves the champion and
back). Everything under test runs through the console script; in-process the tests only read back
what the commands left (MLflow's client, Optuna's storage) and feed images the way `predict` reads
them (its decoder, and export's TFLite runner on the exported file)."""

from __future__ import annotations

import csv
import hashlib
import html
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    LEARN,
    LEARNED_CLASS_FLOOR,
    LEARNED_FLOOR,
    copy_learned,
    fresh_faces,
    workbench_in_process,
    write_spec,
)
from mlflow.tracking import MlflowClient

from workbench import vocabulary

BIN = Path(sys.executable).parent
WORKBENCH = BIN / "workbench"
# 127.0.0.1 as /proc/net/tcp and /proc/net/tcp6 write it (::1 and ::ffff:127.0.0.1 included).
LOOPBACK = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}
SERVER_START_S = 90


@dataclass(frozen=True)
class Store:
    root: Path
    env: dict[str, str]
    uri: str
    client: MlflowClient
    experiment_id: str
    sweep_id: str
    trial_id: str                  # the champion's run: the sweep's best trial by the validation objective
    trial_ids: tuple[str, ...]     # every trial of the sweep
    classes: tuple[str, ...]       # the champion version's tag workbench.classes: the model's output order
    image_size: int
    fresh: Path                    # faces no dataset holds: fresh/<class>/*.jpg (conftest.fresh_faces)
    faces: list[tuple[str, Path]]  # (true class, file) for every fresh face
    model_server: Server           # `workbench serve model --model faces`, booting since the promotion
    ui_server: Server              # `workbench serve ui`, likewise


def command_env(root: Path) -> dict[str, str]:
    """The environment of every command: the user's, minus any workbench or MLflow setting from
    outside, plus this store's data folder, tracking store and study storage, named explicitly."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WORKBENCH_", "MLFLOW_"))}
    env.update(WORKBENCH_DATA=str(root / "data"),
               MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlruns' / 'mlflow.db'}",
               WORKBENCH_STORAGE=f"sqlite:///{root / 'mlruns' / 'optuna.db'}")
    return env


def cli(store_root: Path, env: dict[str, str], *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`workbench ARGS` in the store's folder, as a user runs it; output captured."""
    return subprocess.run([str(WORKBENCH), *args], cwd=store_root, env=env, capture_output=True, text=True,
                          timeout=timeout)


def cli_together(store_root: Path, env: dict[str, str], *commands: list[str], timeout: int = 300
                 ) -> list[subprocess.CompletedProcess]:
    """Independent commands at once (each spends most of its time importing TensorFlow or MLflow
    on one core): what a user with two terminals does, in half the time on 2 cores."""
    started = [subprocess.Popen([str(WORKBENCH), *args], cwd=store_root, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for args in commands]
    done = []
    for process in started:
        out, err = process.communicate(timeout=timeout)
        done.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    return done


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"{result.args}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stdout + result.stderr, result.stderr[-3000:]
    return result


def flat(text: str) -> str:
    """Output as one line: rich wraps a long line at the console's width (160 columns when piped)."""
    return re.sub(r"\s*\n\s*", " ", text)


@pytest.fixture(scope="module")
def store(tmp_path_factory, learned) -> Store:
    learned = copy_learned(learned, tmp_path_factory.mktemp("commands"))
    root = learned.root
    env = command_env(root)
    total = LEARN["trials"]
    # What `workbench sweep learn` and `promote` printed when conftest's `learned` ran them.
    sweep_stdout, promoted_stdout = (root / "sweep.out").read_text(), (root / "promote.out").read_text()
    assert re.search(rf"\[{total}/{total}\] trial \d+ complete val_f1_macro=", sweep_stdout), sweep_stdout

    uri = env["MLFLOW_TRACKING_URI"]
    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name("learn").experiment_id
    [sweep_run] = client.search_runs([experiment_id], "tags.`workbench.role` = 'sweep'")
    trials = client.search_runs([experiment_id], "tags.`workbench.role` = 'trial'")
    assert len(trials) == total
    for run in trials:
        assert run.data.tags["mlflow.parentRunId"] == sweep_run.info.run_id
        assert run.data.tags["workbench.state"] == "finished" and run.info.status == "FINISHED"
    trial = max(trials, key=lambda run: run.data.metrics["objective"])
    champion = client.get_model_version_by_alias("faces", "champion")
    assert str(champion.version) == "1" and champion.run_id == trial.info.run_id
    # The champion really learned: otherwise every check below would test a coin toss.
    assert trial.data.metrics["test_accuracy"] >= LEARNED_FLOOR, trial.data.metrics
    assert (f"faces: run {trial.info.run_id} (objective {trial.data.metrics['objective']:.4f}) registered as new "
            "version 1, now champion; no previous champion") in flat(promoted_stdout), promoted_stdout
    classes = tuple(champion.tags["workbench.classes"].split(","))
    assert sorted(classes) == ["with_mask", "without_mask"]

    # Each server starts once, now, and boots while the tests before the server tests run. Their
    # environment names another (empty) store: only by honouring --tracking-uri do they find this one.
    elsewhere = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'elsewhere' / 'mlflow.db'}"}
    with Server(root, elsewhere, "model", "--model", "faces", "--tracking-uri", uri) as model_server, \
            Server(root, elsewhere, "ui", "--tracking-uri", uri) as ui_server:
        fresh = root / "fresh"
        faces = [(label, path) for label, files in sorted(fresh_faces(fresh).items()) for path in files]
        yield Store(root, env, uri, client, experiment_id, sweep_run.info.run_id, trial.info.run_id,
                    tuple(run.info.run_id for run in trials), classes, int(trial.data.params["image_size"]), fresh,
                    faces, model_server, ui_server)


# --- helpers --------------------------------------------------------------------------------------

def fresh_batch(store: Store) -> np.ndarray:
    """The fresh faces read and resized exactly as `workbench predict` reads them."""
    from workbench.ship.predict import read_image, to_input

    return np.stack([to_input(read_image(path), store.image_size) for _, path in store.faces])


def recalls(store: Store, probabilities: np.ndarray, columns: tuple[str, ...] | list[str]) -> dict[str, float]:
    """Recall of each true class on the fresh faces, naming each output column by `columns`."""
    probabilities = np.asarray(probabilities)
    assert probabilities.shape == (len(store.faces), len(columns)), probabilities.shape
    predicted = [columns[i] for i in probabilities.argmax(axis=1)]
    truth = [label for label, _ in store.faces]
    return {c: float(np.mean([p == c for p, t in zip(predicted, truth) if t == c])) for c in sorted(set(truth))}


def assert_learned(store: Store, probabilities: np.ndarray, columns) -> None:
    found = recalls(store, probabilities, columns)
    assert all(r >= LEARNED_CLASS_FLOOR for r in found.values()), found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def listening_on(port: int) -> set[str]:
    """Local addresses in LISTEN state on `port`, from /proc/net/tcp(6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if os.path.exists(table):
            for line in Path(table).read_text().splitlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.rsplit(":", 1)
                if int(hex_port, 16) == port and state == "0A":
                    found.add(address)
    return found


class Server:
    """`workbench serve ...` as a subprocess leading its own session, its output in a log file;
    on exit the whole process group (the server and its web workers) is ended, by its id."""

    def __init__(self, root: Path, env: dict[str, str], *args: str):
        self.port = free_port()
        self.log_path = root / f"serve-{args[0]}-{self.port}.log"
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen([str(WORKBENCH), "serve", *args, "--port", str(self.port)], cwd=root,
                                        env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait(self, path: str) -> None:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            assert self.process.poll() is None, f"the server exited {self.process.returncode}:\n{self.log()[-3000:]}"
            try:
                with urllib.request.urlopen(self.url(path), timeout=5) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            assert time.monotonic() < deadline, f"no answer on {path} within {SERVER_START_S} s:\n{self.log()[-3000:]}"
            time.sleep(0.5)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        for sig, grace in ((signal.SIGTERM, 3), (signal.SIGKILL, 10)):  # then whatever of the group is left
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:  # a web server's graceful shutdown is no part of the tests
                pass
        self._log.close()


def get(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=30) as answer:
        return answer.status, answer.headers.get("Content-Type", ""), answer.read()


def post_json(url: str, payload: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as answer:
        assert answer.status == 200
        return json.loads(answer.read())


def assert_loopback_only(port: int) -> None:
    addresses = listening_on(port)
    assert addresses, f"nothing listens on {port}"
    assert addresses <= LOOPBACK, f"port {port} listens on {addresses}, not only on 127.0.0.1"


# --- export: TFLite -------------------------------------------------------------------------------

def test_export_writes_a_tflite_model_and_labels_that_classify_fresh_faces(store):
    from workbench.ship.export import tflite_probabilities

    half, full = store.root / "export-float16", store.root / "export-fresh"
    done, fresh = map(ok, cli_together(
        store.root, store.env,
        ["export", "--model", "faces", "--quantize", "float16", "--out", str(half)],
        ["export", "--model", "faces", "--images", str(store.fresh), "--out", str(full)]))
    test_images = int(store.client.get_run(store.trial_id).data.params["images_test"])
    said = flat(done.stdout)
    agreement = re.search(r"agreement with Keras: ([\d.]+)% of (\d+) images \(the run's test split: (\d+) images", said)
    assert agreement, done.stdout
    assert float(agreement.group(1)) >= 99.5 and int(agreement.group(2)) == int(agreement.group(3)) == test_images
    # Named after the model version and the quantization.
    assert f"wrote {half / 'faces-v1-float16.tflite'} (" in said and \
        f"quantize float16) and {half / 'faces-v1-float16.labels.txt'}" in said, said
    labels = (half / "faces-v1-float16.labels.txt").read_text().splitlines()
    assert tuple(labels) == store.classes
    content = (half / "faces-v1-float16.tflite").read_bytes()
    assert_learned(store, tflite_probabilities(content, fresh_batch(store)), labels)

    said = flat(fresh.stdout)
    agreement = re.search(r"agreement with Keras: ([\d.]+)% of (\d+) images \((\d+) images from (\S+)\)", said)
    assert agreement, fresh.stdout
    assert float(agreement.group(1)) >= 99.5 and int(agreement.group(2)) == int(agreement.group(3)) == len(store.faces)
    assert agreement.group(4) == str(store.fresh), said
    assert (full / "faces-v1-none.labels.txt").read_text().splitlines() == labels
    # float16 weights: about half the size of the float32 export of the same model.
    assert len(content) < 0.7 * (full / "faces-v1-none.tflite").stat().st_size
    assert_learned(store, tflite_probabilities((full / "faces-v1-none.tflite").read_bytes(), fresh_batch(store)), labels)
    # Both exports logged their agreement on the model's run, and their files under tflite/.
    logged = store.client.get_metric_history(store.trial_id, "tflite_agreement")
    assert len(logged) == 2 and all(m.value >= 0.995 for m in logged), logged
    assert {f.path for f in store.client.list_artifacts(store.trial_id, "tflite")} == {
        f"tflite/faces-v1-{q}{suffix}" for q in ("float16", "none") for suffix in (".tflite", ".labels.txt")}
    local = store.client.download_artifacts(store.trial_id, "tflite/faces-v1-none.labels.txt",
                                            str(store.root / "logged-labels"))
    assert Path(local).read_text().splitlines() == labels
    # A second export of the same version and quantization is refused, not written over.
    before = (half / "faces-v1-float16.tflite").stat().st_mtime_ns
    again = workbench_in_process("export", "--model", "faces", "--quantize", "float16", "--out", str(half),
                                 cwd=store.root, env=store.env)
    assert again.returncode == 1 and len(again.stderr.strip().splitlines()) == 1, again.stderr
    assert "faces-v1-float16.tflite exists" in again.stderr and "--overwrite" in again.stderr
    assert (half / "faces-v1-float16.tflite").stat().st_mtime_ns == before


# --- compare in every format, and the report ------------------------------------------------------

def display(value: float) -> str:
    """A figure as the human formats show it (4 significant digits, whole numbers whole)."""
    return str(int(value)) if float(value).is_integer() else f"{value:.4g}"


def html_table(page: str) -> tuple[list[str], list[list[str]]]:
    """The header and the rows of the first <table> of a page."""
    table = html.unescape(re.search(r"<table.*?</table>", page, re.S).group(0))
    rows = [re.findall(r"<td[^>]*>(.*?)</td>", row, re.S) for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table, re.S)]
    return re.findall(r"<th[^>]*>(.*?)</th>", table, re.S), [row for row in rows if row]


def cells_by_column(header: list[str], rows: list[list[str]], run_id: str) -> dict[str, str]:
    header = [h.strip() for h in header]
    [row] = [r for r in rows if run_id in [c.strip() for c in r]]
    assert len(row) == len(header), (header, row)
    return dict(zip(header, [c.strip() for c in row]))


def test_compare_writes_every_format_with_the_objective_mlflow_holds_and_report_names_its_page(store):
    out = store.root / "tables"
    done, report = map(ok, cli_together(store.root, store.env,
                                        ["compare", "--experiment", "learn", "--all-formats", str(out)],
                                        ["report", "--experiment", "learn", "--sweep", "latest"]))
    files = {fmt: out / f"learn-compare.{suffix}" for fmt, suffix in
             (("table", "txt"), ("csv", "csv"), ("markdown", "md"), ("html", "html"), ("latex", "tex"),
              ("json", "json"))}
    assert f"wrote {len(files)} files" in done.stderr, done.stderr
    for path in files.values():
        assert path.is_file() and str(path) in done.stderr.replace("\n", ""), path
    runs = [r for r in store.client.search_runs([store.experiment_id])
            if r.data.tags.get("workbench.role") in ("trial", "run")]
    expected = {r.info.run_id: r.data.metrics["objective"] for r in runs}
    assert store.trial_id in expected

    rows = list(csv.DictReader(files["csv"].open()))
    assert {r["run_id"]: float(r["objective"]) for r in rows} == pytest.approx(expected, rel=1e-9, abs=0)
    records = json.loads(files["json"].read_text())
    assert {r["run_id"]: r["objective"] for r in records} == pytest.approx(expected, rel=1e-9, abs=0)
    assert {r["run_id"]: r["test_accuracy"] for r in records} == \
        pytest.approx({r.info.run_id: r.data.metrics["test_accuracy"] for r in runs}, rel=1e-9, abs=0)

    lines = files["markdown"].read_text().splitlines()
    split = [[c for c in line.strip().strip("|").split(" | ")] for line in lines if line.startswith("|")]
    header, body = html_table(files["html"].read_text())
    # The page leads with the objective and the statistics, not with twenty parameter columns.
    params = [c for c in header if c in ("backbone", "balance", "augmentation", "learning_rate", "epochs")]
    assert header[3] == "objective" and params and header.index("objective") < min(map(header.index, params)), header
    assert header.index("f1_macro_ci") < min(map(header.index, params)), header
    tex = [line.rstrip("\\").rstrip() for line in files["latex"].read_text().splitlines() if "&" in line]
    text = [line for line in files["table"].read_text().splitlines() if "│" in line or "┃" in line]
    text_header = [c for c in re.split(r"[┃│]", next(line for line in text if "┃" in line))[1:-1]]
    text_rows = [re.split(r"[┃│]", line)[1:-1] for line in text if "│" in line]
    for run_id, objective in expected.items():
        for shown in (cells_by_column(split[0], split[2:], run_id),
                      cells_by_column(header, body, run_id),
                      cells_by_column(tex[0].split("&"), [line.split("&") for line in tex[1:]], run_id),
                      cells_by_column(text_header, text_rows, run_id)):
            assert shown["objective"] == display(objective), (shown, objective)

    said = flat(report.stdout)
    named = re.search(r"wrote (\S+\.html) \(", said)
    assert named, report.stdout
    page = (store.root / named.group(1)).read_text()
    assert page.lstrip().lower().startswith("<!doctype html") and "plotly" in page.lower()
    # Its leaderboard: the sweep's trials with the objectives MLflow holds.
    board = html_table(page[page.index("Leaderboard"):])
    assert len(board[1]) == len(store.trial_ids)
    for trial_id in store.trial_ids:
        assert cells_by_column(*board, trial_id)["objective"] == display(expected[trial_id])
    assert f"attached to sweep run {store.sweep_id} as report/report.html" in said, said
    assert "report/report.html" in {f.path for f in store.client.list_artifacts(store.sweep_id, "report")}


# --- evaluate -------------------------------------------------------------------------------------

def test_evaluate_scores_the_champion_on_the_specs_test_split_and_logs_what_it_computed(store):
    from sklearn.metrics import accuracy_score, f1_score

    done = ok(cli(store.root, store.env, "evaluate", "--model", "faces", "--data", "learn", "--split", "test"))
    trial = store.client.get_run(store.trial_id)
    test_images = int(trial.data.params["images_test"])
    # The spec's test split is what the trial was tested on: nothing of it was seen in training.
    said = flat(done.stdout)
    assert re.search(rf"models:/faces@champion on \S+ \(test\): {test_images} images; left out 0 the model saw",
                     said), said
    run_id = re.search(r"evaluation run ([0-9a-f]{32})", said).group(1)
    run = store.client.get_run(run_id)
    assert run.info.experiment_id == store.experiment_id and run.info.status == "FINISHED"
    assert run.data.tags["workbench.role"] == "evaluation" and run.data.tags["workbench.model_run_id"] == store.trial_id
    assert run.data.tags["workbench.model_version"] == "1" and run.data.params["split"] == "test"
    # Its metrics carry the dataset's name: no UI view mixes them with a trial's own test_* scores.
    prefix = vocabulary.eval_prefix(run.data.params["data"])
    assert not [k for k in run.data.metrics if k.startswith("test_")], sorted(run.data.metrics)
    metrics = {k.replace(prefix, "test", 1): v for k, v in run.data.metrics.items()}
    assert metrics["images_evaluated"] == test_images and metrics["excluded_seen"] == 0
    assert metrics["test_accuracy"] >= LEARNED_FLOOR, metrics

    local = store.client.download_artifacts(run_id, "evaluation/test_predictions.csv", str(store.root / "eval"))
    rows = list(csv.DictReader(open(local)))
    assert len(rows) == test_images
    truth, predicted = [r["true"] for r in rows], [r["predicted"] for r in rows]
    assert metrics["test_accuracy"] == pytest.approx(accuracy_score(truth, predicted), abs=1e-9)
    assert metrics["test_f1_macro"] == pytest.approx(f1_score(truth, predicted, average="macro"), abs=1e-6)
    # Each row's predicted class is its most probable column, under the model's own class names.
    for row in rows:
        assert row["predicted"] == max(store.classes, key=lambda c: float(row[f"p_{c}"]))
    # The same model on the same images: the figures its trial logged.
    assert metrics["test_accuracy"] == pytest.approx(trial.data.metrics["test_accuracy"], abs=1e-9)
    assert metrics["test_f1_macro"] == pytest.approx(trial.data.metrics["test_f1_macro"], abs=1e-6)
    accuracy = re.search(r"accuracy (\d\.\d{3}) \[", said).group(1)
    assert accuracy == f"{metrics['test_accuracy']:.3f}", said


# --- serve model: the REST server (booted since the fixture) --------------------------------------

def post(url: str, body: bytes, content_type: str) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def served_probabilities(answer: dict, classes) -> np.ndarray:
    """The answer's probability columns in `classes` order, after checking each named class is its argmax."""
    rows = answer["predictions"]
    for row in rows:
        assert row["class"] == max(row["probabilities"], key=row["probabilities"].get)
    return np.array([[row["probabilities"][c] for c in classes] for row in rows])


def test_serve_model_answers_rest_requests_with_a_model_that_tells_masks_apart(store):
    server = store.model_server  # started by the fixture, stopped when the module ends
    server.wait("/ping")
    assert_loopback_only(server.port)
    batch = fresh_batch(store)
    answer = post_json(server.url("/invocations"), {"inputs": batch.tolist()})
    assert answer["classes"] == list(store.classes)
    served = served_probabilities(answer, store.classes)
    assert np.allclose(served.sum(axis=1), 1.0, atol=1e-4)
    # The very model the trial logged, answering as it does in Keras.
    import mlflow

    mlflow.set_tracking_uri(store.uri)
    np.testing.assert_allclose(served, mlflow.keras.load_model(f"runs:/{store.trial_id}/model").predict(batch, verbose=0),
                               atol=1e-4)
    assert_learned(store, served, store.classes)
    log = server.log()
    assert f"model server for models:/faces@champion: http://127.0.0.1:{server.port}" in log, log[-2000:]
    assert "reachable from the network" not in log, log[-2000:]


def test_serve_model_takes_photos_at_their_own_size_as_files_and_base64(store, tmp_path):
    """An app's request: a camera-size JPEG (225 x 154) as the body, or several as base64 in JSON.
    Each answer names its class, and is what `workbench predict` says of the same file."""
    import base64

    import cv2

    from workbench.ship.predict import read_image, to_input

    server = store.model_server
    server.wait("/ping")
    photos = []
    for i, (label, path) in enumerate(store.faces[:8]):
        big = cv2.resize(cv2.imread(str(path)), (225, 154), interpolation=cv2.INTER_CUBIC)
        photos.append((label, tmp_path / f"photo{i}.jpg"))
        cv2.imwrite(str(photos[-1][1]), big)
    expected = served_probabilities(post_json(server.url("/invocations"), {"inputs": np.stack(
        [to_input(read_image(p), store.image_size) for _, p in photos]).tolist()}), store.classes)

    status, one = post(server.url("/invocations"), photos[0][1].read_bytes(), "image/jpeg")
    assert status == 200 and len(one["predictions"]) == 1
    np.testing.assert_allclose(served_probabilities(one, store.classes)[0], expected[0], atol=1e-4)

    encoded = [base64.b64encode(p.read_bytes()).decode() for _, p in photos]
    many = post_json(server.url("/invocations"), {"images": encoded})
    np.testing.assert_allclose(served_probabilities(many, store.classes), expected, atol=1e-4)
    said = [row["class"] for row in many["predictions"]]
    assert np.mean([s == label for s, (label, _) in zip(said, photos)]) >= LEARNED_CLASS_FLOOR, said
    # MLflow's own request shape for a named input works too.
    named = post_json(server.url("/invocations"), {"inputs": {"image": encoded[:2]}})
    assert [row["class"] for row in named["predictions"]] == said[:2]

    # Pixel tensors at a size other than the model's are resized, not refused.
    status, odd = post(server.url("/invocations"), json.dumps({"inputs": np.zeros((1, 50, 40, 3)).tolist()}).encode(),
                       "application/json")
    assert status == 200 and len(odd["predictions"]) == 1

    # Wrong input: one short line, never the request echoed back.
    for body, kind, code, says in [
        (b"not json", "application/json", 400, "not valid JSON"),
        (json.dumps({"images": ["@@@"]}).encode(), "application/json", 400, "image 0 is not valid base64"),
        (json.dumps({"images": [base64.b64encode(b"plain text").decode()]}).encode(), "application/json", 400,
         "image 0 is not a usable image"),
        (json.dumps({"inputs": [[1, 2], [3]]}).encode(), "application/json", 400, "pixel tensors must be numbers"),
        (b"<xml/>", "text/xml", 415, "Content-Type text/xml is not accepted"),
    ]:
        status, error = post(server.url("/invocations"), body, kind)
        assert status == code and says in error["message"], (status, error)
        assert "\n" not in error["message"] and len(error["message"]) < 300, error["message"]
    status, meta = get(server.url("/metadata"))[0], json.loads(get(server.url("/metadata"))[2])
    assert meta["classes"] == list(store.classes) and meta["image_size"] == store.image_size


def test_serve_model_refuses_a_model_that_does_not_exist_in_one_line(store):
    done = cli(store.root, store.env, "serve", "model", "--model", "nosuch", "--port", str(free_port()))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert lines[0].startswith("error: --model models:/nosuch@champion: cannot load it"), lines


# --- serve ui: the MLflow UI (booted since the fixture) -------------------------------------------

def test_serve_ui_loads_the_app_and_its_api_lists_the_sweep(store):
    server = store.ui_server
    server.wait("/health")
    assert_loopback_only(server.port)
    status, kind, body = get(server.url("/"))
    page = body.decode()
    assert status == 200 and kind.startswith("text/html"), (status, kind)
    assert "<title>MLflow</title>" in page and 'id="root"' in page, page[:500]
    # The page's application script is served too: the UI really loads, not just its shell.
    script = re.search(r'src="([^"]*static/js/main\.[0-9a-f]+\.js)"', page)
    assert script, page[:1000]
    status, kind, code = get(server.url("/" + script.group(1).lstrip("./")))
    assert status == 200 and "javascript" in kind and len(code) > 100_000, (status, kind, len(code))

    found = json.loads(get(server.url("/api/2.0/mlflow/experiments/get-by-name?experiment_name=learn"))[2])
    assert found["experiment"]["experiment_id"] == store.experiment_id and found["experiment"]["name"] == "learn"
    runs = post_json(server.url("/api/2.0/mlflow/runs/search"),
                     {"experiment_ids": [store.experiment_id], "max_results": 100})["runs"]
    by_id = {r["info"]["run_id"]: r for r in runs}
    assert {store.sweep_id, *store.trial_ids} <= set(by_id), sorted(by_id)
    for trial_id in store.trial_ids:
        served_objective = {m["key"]: m["value"] for m in by_id[trial_id]["data"]["metrics"]}["objective"]
        assert served_objective == pytest.approx(store.client.get_run(trial_id).data.metrics["objective"])
        tags = {t["key"]: t["value"] for t in by_id[trial_id]["data"]["tags"]}
        assert tags["mlflow.parentRunId"] == store.sweep_id and tags["workbench.role"] == "trial"
    log = server.log()
    # The address is printed once the UI answers, with the view that shows the model-training runs.
    assert re.search(rf"MLflow UI: http://127.0.0.1:{server.port} \(answering after \d+ s, \d+ workers?\); open "
                     rf"http://127.0.0.1:{server.port}/#/experiments\?workflowType=machine_learning", log), log[-2000:]
    assert not (store.root / "elsewhere").exists()  # the store the environment named was never opened


# --- journal storage ------------------------------------------------------------------------------

def test_a_sweep_on_journal_storage_writes_the_journal_and_resumes_from_it(store):
    import optuna

    write_spec(store.root, {**LEARN, "name": "journal",
                            "params": {**LEARN["params"], "epochs": 1, "learning_rate": [0.003, 0.001]}})
    journal = store.root / "studies" / "journal.log"
    url = f"journal:///{journal}"     # journal:/// then the absolute path, as sqlite:/// takes one
    # In-process: what is under test is the journal, not the process around it (the other
    # commands here run the real script), and it saves two TensorFlow imports.
    first = ok(workbench_in_process("sweep", "journal", "--trials", "1", "--storage", url, cwd=store.root, env=store.env))
    assert journal.is_file() and journal.stat().st_size > 0
    assert "resuming" not in first.stdout and re.search(r"\[1/1\] trial 0 complete", first.stdout), first.stdout
    size = journal.stat().st_size

    second = ok(workbench_in_process("sweep", "journal", "--trials", "2", "--storage", url, cwd=store.root, env=store.env))
    assert "resuming journal: 1 complete; 1 to run" in second.stdout, second.stdout
    progress = [line for line in second.stdout.splitlines() if line.startswith("[")]
    assert len(progress) == 1 and re.match(r"\[2/2\] trial \d+ complete", progress[0]), second.stdout
    assert journal.stat().st_size > size

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    trials = [t for t in optuna.load_study(study_name="journal", storage=storage).trials
              if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(trials) == 2 and trials[0].number == 0 and progress[0].startswith(f"[2/2] trial {trials[1].number} ")
    # The study went to the journal, not to the default storage the environment names.
    assert "journal" not in optuna.get_all_study_names(store.env["WORKBENCH_STORAGE"])
    experiment = store.client.get_experiment_by_name("journal").experiment_id
    [sweep] = store.client.search_runs([experiment], "tags.`workbench.role` = 'sweep'")
    children = store.client.search_runs([experiment], f"tags.mlflow.parentRunId = '{sweep.info.run_id}'")
    assert sorted(r.data.tags["workbench.trial"] for r in children) == sorted(str(t.number) for t in trials)
    assert {r.info.run_id for r in children} == {t.user_attrs["mlflow_run_id"] for t in trials}


# --- a folder of photos given with --data ---------------------------------------------------------

def test_a_sweep_with_data_dir_trains_on_that_folders_photos_and_logs_them(store):
    photos = store.root / "photos"            # not under the data folder: only --data can point here
    written = fresh_faces(photos / "mine", per_class=25, seed=4321)
    write_spec(store.root, {
        "name": "mine",
        "dataset": {"source": "manifests", "manifests": [{"name": "mine", "adapter": "folders", "path": "mine"}]},
        "split": LEARN["split"], "params": {**LEARN["params"], "epochs": 1}, "trials": 1, "seed": 7})
    done = ok(cli(store.root, store.env, "sweep", "mine", "--trials", "1", "--data", str(photos)))
    assert re.search(r"\[1/1\] trial 0 complete", done.stdout), done.stdout

    experiment = store.client.get_experiment_by_name("mine").experiment_id
    [found] = store.client.search_runs([experiment], "tags.`workbench.role` = 'trial'")
    trial = store.client.get_run(found.info.run_id)
    assert trial.data.tags["workbench.state"] == "finished" and trial.data.params["dataset"] == "mine"
    assert trial.data.params["classes"] == "with_mask,without_mask"
    local = store.client.download_artifacts(trial.info.run_id, "data/manifest.csv", str(store.root / "mine-run"))
    logged = list(csv.DictReader(open(local)))
    files = {str(p.relative_to(photos / "mine")): hashlib.sha256(p.read_bytes()).hexdigest()
             for paths in written.values() for p in paths}
    assert {r["path"]: r["sha256"] for r in logged} == files
    assert {r["path"]: r["label"] for r in logged} == {p: p.split("/")[0] for p in files}
    assert sum(int(trial.data.params[f"images_{s}"]) for s in ("train", "val", "test")) == len(files)
    [dataset] = trial.inputs.dataset_inputs
    assert dataset.dataset.name == "mine" and dataset.dataset.digest == trial.data.tags["workbench.dataset_digest"]
    sidecar = json.loads((store.root / "data" / "manifests" / "mine.json").read_text())
    assert sidecar["raw_root"] == str((photos / "mine").resolve())


# --- rollback (last: it registers a second version) -----------------------------------------------

def test_rollback_puts_the_previous_champion_back(store):
    [run_id] = [r for r in store.trial_ids if r != store.trial_id]   # the sweep's other trial
    promoted = ok(cli(store.root, store.env, "promote", "--name", "faces", "--run", run_id))
    said = flat(promoted.stdout)
    assert f"faces: run {run_id} " in said, said
    assert "registered as new version 2, now champion; previous: version 1" in said, said
    alias = store.client.get_model_version_by_alias
    assert (str(alias("faces", "champion").version), str(alias("faces", "previous").version)) == ("2", "1")
    assert alias("faces", "champion").run_id == run_id

    back = ok(cli(store.root, store.env, "rollback", "--name", "faces"))
    assert flat(back.stdout).strip() == \
        f"faces: version 1 (run {store.trial_id}) is champion again; previous: version 2"
    champion, previous = alias("faces", "champion"), alias("faces", "previous")
    assert (str(champion.version), champion.run_id) == ("1", store.trial_id)
    assert (str(previous.version), previous.run_id) == ("2", run_id)
