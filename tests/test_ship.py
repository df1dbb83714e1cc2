"""The ship stage on real (tiny) models: promotion to `champion` and rollback in the MLflow
registry, the refusals, prediction on image files (whole and face by face), and a TFLite export
that decides like its Keras model (`workbench serve model` is tested in test_commands.py).

The models are the session's learned store (conftest's `learned`: two trials that learned mask /
no mask), copied for this module; every test registers under its own model name so the tests do
not depend on each other's order."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import copy_learned, workbench_in_process
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from workbench import vocabulary
from workbench.data import synth
from workbench.errors import WorkbenchError
from workbench.ship import export, predict
from workbench.ship import promote as P
from workbench.track import store as tracking
from workbench.workspace import Workspace

BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Yard:
    root: Path
    uri: str
    client: MlflowClient
    sweep_id: str
    trials: list[str]       # the sweep's trial run ids, best validation objective first
    broken: dict[str, str]  # refusal cases in experiment "broken": kind -> run id
    classes: tuple[str, ...]


@pytest.fixture(scope="module")
def yard(tmp_path_factory, learned) -> Yard:
    """A copy of the session's learned store (a two-trial sweep whose models learned mask / no
    mask), with the runs that must never ship beside it."""
    store = copy_learned(learned, tmp_path_factory.mktemp("ship"))
    client = tracking.connect(store.uri)
    yield Yard(store.root, store.uri, client, store.sweep_id, list(store.trials), broken_runs(client, store.uri),
               store.classes)


def broken_runs(client: MlflowClient, uri: str) -> dict[str, str]:
    """One run per way a run can be unfit to ship, alone in their own experiment."""
    experiment_id = tracking.ensure_experiment(client, "broken")

    def run(tags: dict, status: str | None, metrics: dict | None = None) -> str:
        created = client.create_run(experiment_id, tags={vocabulary.ROLE: "run", **tags})
        for key, value in (metrics or {}).items():
            client.log_metric(created.info.run_id, key, value)
        if status:
            client.set_terminated(created.info.run_id, status=status)
        return created.info.run_id

    return {
        "running": run({}, None),
        "failed": run({vocabulary.STATE: "failed", "workbench.error": "FloatingPointError: loss is NaN"}, "FAILED"),
        "pruned": run({vocabulary.STATE: "pruned"}, "FINISHED", {"val_f1_macro": 0.2}),
        "no_model": run({vocabulary.STATE: "finished"}, "FINISHED", {"test_f1_macro": 0.99}),
    }


@pytest.fixture(scope="module")
def champion(yard) -> predict.LoadedModel:
    """The sweep's best run as `faces@champion`, loaded the way `predict` and `export` load it."""
    P.promote(yard.client, "faces", sweep=yard.sweep_id)
    return predict.load_model("models:/faces@champion", yard.uri)


def ship_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The user's command line: the console script."""
    return subprocess.run([str(BIN / "workbench"), *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"})


def in_process_cli(*args: str):
    from workbench.cli import app

    return CliRunner().invoke(app, list(args))


def versions(client: MlflowClient, name: str) -> list:
    return client.search_model_versions(f"name = '{name}'")


def alias(client: MlflowClient, name: str, which: str) -> str | None:
    return P.alias_version(client, name, which)


# --- promote and rollback ----------------------------------------------------------------------------

def test_promote_registers_the_best_finished_run_as_champion_with_tags_and_a_model_card(yard):
    done = P.promote(yard.client, "pick", sweep=yard.sweep_id)
    assert done.run_id == yard.trials[0] and done.created and done.previous is None
    version = yard.client.get_model_version("pick", done.version)
    assert version.run_id == yard.trials[0] and version.aliases == ["champion"]
    run = yard.client.get_run(yard.trials[0])
    tags = version.tags
    assert tags["workbench.run_id"] == yard.trials[0] and tags["workbench.sweep_run_id"] == yard.sweep_id
    assert tags["workbench.spec_hash"] == run.data.tags[vocabulary.SPEC_HASH]
    assert tags["workbench.dataset_digest"] == run.data.tags["workbench.dataset_digest"]
    assert tags["workbench.classes"] == ",".join(yard.classes)
    assert float(tags["test_f1_macro"]) == pytest.approx(run.data.metrics["test_f1_macro"], rel=1e-5)
    card = version.description
    assert len(card) <= 5000  # MLflow's SQL stores hold a version description in 5,000 characters
    for part in ("## Model details", "## Metrics", "## Caveats and recommendations", "synthetic faces", "Overfit gap",
                 "Not tested on", "Decision rule: the best finished run by `objective` (val_f1_macro on the "
                 "validation split)", "an honest estimate", *(f"| {c} |" for c in yard.classes)):
        assert part in card, part
    assert "Gate against" not in card  # the first champion had nothing to be compared with

    # The same run again, by experiment and by its latest sweep: no second version, nothing moves.
    for scope in ({"experiment": "learn"}, {"experiment": "learn", "sweep": "latest"}):
        again = P.promote(yard.client, "pick", **scope)
        assert again.unchanged and again.version == done.version and len(versions(yard.client, "pick")) == 1


def test_promoting_another_run_keeps_the_old_champion_as_previous_and_rollback_swaps_them(yard):
    first = P.promote(yard.client, "swap", sweep=yard.sweep_id)
    second = P.promote(yard.client, "swap", run_id=yard.trials[1], sweep=yard.sweep_id)
    assert second.created and second.previous == first.version
    assert (alias(yard.client, "swap", "champion"), alias(yard.client, "swap", "previous")) == (second.version, first.version)

    back = P.rollback(yard.client, "swap")
    assert back.version == first.version and back.run_id == yard.trials[0]
    assert (alias(yard.client, "swap", "champion"), alias(yard.client, "swap", "previous")) == (first.version, second.version)
    # Promoting a run registered before reuses its version.
    again = P.promote(yard.client, "swap", run_id=yard.trials[1])
    assert not again.created and again.version == second.version and len(versions(yard.client, "swap")) == 2


def test_lower_is_better_for_losses_calibration_and_latency():
    assert [vocabulary.lower_is_better(m) for m in ("test_log_loss", "test_ece", "latency_ms_batch1", "test_f1_macro")] == \
        [True, True, True, False]
    runs = [P.Candidate(run_id=str(i), run_name="", experiment_id="1", status="FINISHED", state="finished",
                        has_model=True, metrics={"test_log_loss": loss, "test_f1_macro": f1})
            for i, (loss, f1) in enumerate([(0.9, 0.5), (0.4, 0.4), (0.7, 0.8)])]
    assert P.best(runs, "test_log_loss").run_id == "1" and P.best(runs, "test_f1_macro").run_id == "2"


@pytest.mark.parametrize("kind, says", [
    ("running", "is still RUNNING"),
    ("failed", "ended FAILED (FloatingPointError: loss is NaN)"),
    ("pruned", "was pruned"),
    ("no_model", "has no logged model"),
])
def test_unfit_runs_are_refused_with_one_line(yard, kind, says):
    with pytest.raises(WorkbenchError) as err:
        P.promote(yard.client, "refused", run_id=yard.broken[kind])
    assert says in str(err.value) and "\n" not in str(err.value)
    assert not yard.client.search_registered_models("name = 'refused'")


def test_a_scope_without_eligible_runs_a_low_score_and_no_previous_are_refused(yard):
    with pytest.raises(WorkbenchError, match=r"experiment broken has no finished run with a model and objective "
                                             r"\(4 runs: .*1 running.*\)"):
        P.promote(yard.client, "refused", experiment="broken")
    with pytest.raises(WorkbenchError, match=r"under --min-score 1.01: not promoted"):
        P.promote(yard.client, "refused", sweep=yard.sweep_id, min_score=1.01)
    with pytest.raises(WorkbenchError, match="no such run"):
        P.promote(yard.client, "refused", run_id="0" * 32)
    P.promote(yard.client, "single", run_id=yard.trials[1])
    with pytest.raises(WorkbenchError, match="model single has no previous champion .*nothing to roll back to"):
        P.rollback(yard.client, "single")


def test_cli_refusals_are_one_line_without_a_traceback(yard):
    cases = [
        (["promote", "--name", "cli", "--run", yard.broken["running"]], "is still RUNNING"),
        (["promote", "--name", "cli", "--sweep", yard.sweep_id, "--min-score", "1.01"], "under --min-score"),
        (["rollback", "--name", "cli"], "nothing to roll back to"),
    ]
    for args, says in cases:  # in-process through the script's entry point; the script itself answers below
        result = workbench_in_process(*args, "--tracking-uri", yard.uri, cwd=yard.root)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], result.stderr
        assert "Traceback" not in result.stdout + result.stderr

    ok = ship_cli("promote", "--name", "cli", "--experiment", "learn", "--tracking-uri", yard.uri, cwd=yard.root)
    assert ok.returncode == 0, ok.stderr
    assert f"run {yard.trials[0]}" in ok.stdout and "now champion" in ok.stdout and "models:/cli@champion" in ok.stdout


# --- predict -------------------------------------------------------------------------------------------

def rendered_faces(folder: Path, count: int, size: int, mask: bool) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for index in range(count):
        image = synth.render_face(3, index, synth.FaceAttributes(mask=mask, old=False, fake=False), size)
        files.append(folder / f"face-{int(mask)}-{size}-{index}.png")
        cv2.imwrite(str(files[-1]), image)
    return files


def plain_image(path: Path) -> Path:
    cv2.imwrite(str(path), np.full((90, 160, 3), 180, np.uint8))  # not square, not the model's size
    return path


def test_predict_classifies_whole_images_of_any_size(yard, champion, tmp_path):
    files = [*rendered_faces(tmp_path, 1, 128, mask=True), plain_image(tmp_path / "plain.jpg")]
    results = predict.predict_images(champion, predict.read_images(files), [str(f) for f in files])
    assert [r.image for r in results] == [str(f) for f in files]
    for result in results:
        [only] = result.predictions
        assert only.label in champion.classes and only.box is None
        assert sum(only.probabilities.values()) == pytest.approx(1.0, abs=1e-4)
    assert champion.classes == yard.classes and champion.image_size == 32

    shown = in_process_cli("predict", *map(str, files), "--model", "faces", "--format", "json",
                           "--tracking-uri", yard.uri)
    assert shown.exit_code == 0, shown.output
    payload = json.loads(shown.stdout)
    assert payload["model"] == "models:/faces@champion" and len(payload["results"]) == 2
    assert payload["results"][0]["predictions"][0]["class"] in yard.classes

    # A folder stands for the image files under it, at any depth, other files skipped.
    (tmp_path / "more" / "deeper").mkdir(parents=True)
    nested = rendered_faces(tmp_path / "more" / "deeper", 2, 64, mask=False)
    (tmp_path / "more" / "notes.txt").write_text("not an image")
    folder = in_process_cli("predict", str(tmp_path / "more"), files[0].as_posix(), "--model", "faces",
                            "--format", "json", "--tracking-uri", yard.uri)
    assert folder.exit_code == 0, folder.output
    assert [r["image"] for r in json.loads(folder.stdout)["results"]] == [*map(str, nested), str(files[0])]
    (tmp_path / "nothing").mkdir()
    none = in_process_cli("predict", str(tmp_path / "nothing"), "--model", "faces", "--tracking-uri", yard.uri)
    assert none.exit_code == 1 and "a folder with no image files" in str(none.exception)


def test_predict_names_an_unreadable_image_in_one_line(tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    result = ship_cli("predict", str(broken), cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"error: {broken}: not an image: text"


class BoxOnFaces:
    """Stands in for the Haar cascade: one fixed box on face renders, none on plain images."""

    def detectMultiScale(self, gray, **_):
        return np.array([[40, 50, 100, 100]]) if gray.std() > 5 else ()


def test_face_boxes_are_cropped_and_classified_and_an_image_without_faces_says_so(champion, tmp_path):
    files = [*rendered_faces(tmp_path, 1, 256, mask=False), plain_image(tmp_path / "plain.png")]
    face, plain = predict.predict_images(champion, predict.read_images(files), [str(f) for f in files],
                                         detector=BoxOnFaces())
    [found] = face.predictions
    assert found.box == (40, 50, 100, 100) and found.label in champion.classes
    assert sum(found.probabilities.values()) == pytest.approx(1.0, abs=1e-4)
    assert plain.predictions == [] and plain.note == "no face found"
    # The crop is square, widened by the margin and kept inside the image.
    crop = predict.face_crop(np.zeros((256, 256, 3), np.uint8), (200, 10, 50, 50), margin=0.3)
    assert crop.shape == (80, 80, 3)


def test_haar_cascade_finds_rendered_faces_and_each_box_is_classified(champion, tmp_path):
    files = [*rendered_faces(tmp_path, 4, 256, mask=False), *rendered_faces(tmp_path, 2, 256, mask=True),
             plain_image(tmp_path / "plain.png")]
    results = predict.predict_images(champion, predict.read_images(files), [str(f) for f in files],
                                     detector=predict.face_detector())
    assert sum(len(r.predictions) for r in results[:-1]) >= 1, "Haar found no face in any render"
    for result in results[:-1]:
        for p in result.predictions:
            x, y, w, h = p.box
            assert 0 <= x and 0 <= y and x + w <= 256 and y + h <= 256 and p.label in champion.classes
    assert results[-1].predictions == [] and results[-1].note == "no face found"


def test_model_uris_from_what_the_user_types():
    assert predict.model_uri("faces") == "models:/faces@champion"
    assert predict.model_uri("runs:/abc/model") == "runs:/abc/model"
    assert predict.model_uri(None, ["only"]) == "models:/only@champion"
    with pytest.raises(WorkbenchError, match="say which model"):
        predict.model_uri(None, ["a", "b"])
    assert export.default_out_dir("models:/faces@champion", Path("exports")) == Path("exports/faces")
    assert export.default_out_dir("models:/faces/3", Path("exports")) == Path("exports/faces")
    assert export.default_out_dir("runs:/abc123/model", Path("exports")) == Path("exports/abc123")


# --- export --------------------------------------------------------------------------------------------

def test_tflite_export_decides_like_keras_on_the_runs_test_split_and_is_logged(yard, champion, tmp_path):
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(yard.root)
        result = export.export(Workspace(yard.root, tracking_uri=yard.uri, env={}), yard.client, champion, quantize="none",
                               out_dir=tmp_path / "tflite")
    assert result.passed and result.agreement >= 0.995, result
    assert result.images == 160 and "the run's test split" in result.images_source
    assert result.tflite_path.stat().st_size > 0 and 0 < result.size_mb < 5
    assert result.labels_path.read_text().splitlines() == list(champion.classes)

    run = yard.client.get_run(champion.run_id)
    assert run.data.metrics["tflite_agreement"] == pytest.approx(result.agreement)
    assert run.data.metrics["tflite_size_mb"] == pytest.approx(result.size_mb)
    logged = {f.path for f in yard.client.list_artifacts(champion.run_id, "tflite")}
    assert logged == {"tflite/faces-v1-none.tflite", "tflite/faces-v1-none.labels.txt"}
    assert export.file_stem(yard.client, f"runs:/{champion.run_id}/model", "dynamic") == \
        f"run-{champion.run_id[:8]}-dynamic"


def test_an_export_under_the_bar_fails_and_logs_no_artifacts(yard, tmp_path):
    other = predict.load_model(f"runs:/{yard.trials[1]}/model", yard.uri)
    result = export.export(Workspace(yard.root, tracking_uri=yard.uri, env={}), yard.client, other, out_dir=tmp_path / "out",
                           images_dir=None, min_agreement=1.5)
    assert not result.passed and result.agreement <= 1.0
    assert yard.client.list_artifacts(yard.trials[1], "tflite") == []
    # Nothing is left where an app would pick it up.
    assert not result.tflite_path.exists() and not result.labels_path.exists()
    assert yard.client.get_run(yard.trials[1]).data.metrics["tflite_agreement"] == pytest.approx(result.agreement)
    with pytest.raises(WorkbenchError, match="no images"):
        export.agreement(np.zeros((0, 3)), np.zeros((0, 3)))
