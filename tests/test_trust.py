"""Trusting the winner: calibrated probabilities that the served model gives, likely label errors
per run and across a dataset (`workbench data audit`, scored against labels planted wrong), the
promotion gate that keeps a far worse model from replacing the champion, and the model card.

The gate and the card run through the console script on a copy of the session's learned store,
against models trained there by `workbench run` (one that never learned); the statistics'
decision rule and the temperature fit are also checked on values built by hand."""

from __future__ import annotations

import json
import random
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import LEARN, workbench_cli, workbench_in_process

from workbench.measure import calibration
from workbench.ship import gate
from workbench.track import store as tracking


def flat(text: str) -> str:
    return re.sub(r"\s*\n\s*", " ", text)


# --- calibration -----------------------------------------------------------------------------------

def test_the_fitted_temperature_is_the_one_that_generated_the_labels():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(4000, 3))
    for true_t in (0.5, 2.0):
        p = calibration.scaled(logits, true_t)
        y = np.array([rng.choice(3, p=row) for row in p])
        fitted = calibration.fit_temperature(logits, y)
        assert fitted == pytest.approx(true_t, rel=0.1), (true_t, fitted)
        # The fitted temperature calibrates: ECE falls from the raw logits' to near zero.
        before = calibration.expected_calibration_error(y, calibration.scaled(logits))
        after = calibration.expected_calibration_error(y, calibration.scaled(logits, fitted))
        assert after < 0.03 < before, (before, after)


def test_a_trial_logs_its_temperature_and_serves_the_calibrated_probabilities(learned, tmp_path):
    client = tracking.connect(learned.uri)
    run = client.get_run(learned.run_id)
    m = run.data.metrics
    t = m["temperature"]
    assert abs(np.log(t)) > 0.02, "a temperature of 1 would not tell calibrated from raw probabilities"
    assert m["test_ece_calibrated"] == pytest.approx(
        calibration.expected_calibration_error(*_test_probabilities(client, learned.run_id)), abs=1e-4)
    assert {"test_brier", "test_brier_calibrated", "test_log_loss_calibrated"} <= set(m)
    paths = {f.path for f in client.list_artifacts(learned.run_id, "evaluation")}
    assert {"evaluation/reliability_diagram.png", "evaluation/label_issues.csv", "evaluation/label_issues.png"} <= paths
    page = Path(client.download_artifacts(learned.run_id, "evaluation/figures.html", str(tmp_path))).read_text()
    assert "Reliability diagram" in page

    # The registered champion, loaded as `predict` and `serve` load it, gives the logged
    # (calibrated) probabilities on the test images as training decoded them, not the raw
    # softmax: raw = softmax(T * log p) differs from them by far more than rounding.
    from workbench.model import pipeline
    from workbench.ship import predict

    frame = pd.read_csv(client.download_artifacts(learned.run_id, "evaluation/test_predictions.csv", str(tmp_path)))
    rows = frame.head(16)
    files = [str(learned.root / "data" / "synthetic" / _synthetic_folder(learned) / p) for p in rows["path"]]
    loaded = predict.load_model("models:/faces@champion", learned.uri)
    served = loaded.model.predict(pipeline.load_images(files, loaded.image_size).astype("float32"), verbose=0)
    logged = rows[[f"p_{c}" for c in learned.classes]].to_numpy()
    raw = calibration.scaled(t * np.log(np.clip(logged, 1e-12, 1)))
    assert np.abs(served - logged).max() < 1e-4
    assert np.abs(served - raw).max() > 1e-3


def _test_probabilities(client, run_id):
    with tempfile.TemporaryDirectory() as tmp:
        frame = pd.read_csv(client.download_artifacts(run_id, "evaluation/test_predictions.csv", tmp))
    classes = [c.removeprefix("p_") for c in frame.columns if c.startswith("p_")]
    y = frame["true"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    return y, frame[[f"p_{c}" for c in classes]].to_numpy()


def _synthetic_folder(learned) -> str:
    [folder] = [p.name for p in (learned.root / "data" / "synthetic").iterdir() if p.is_dir()]
    return folder


def test_a_runs_label_issues_are_its_out_of_sample_images_whose_label_the_model_doubts(learned, tmp_path):
    client = tracking.connect(learned.uri)
    run = client.get_run(learned.run_id)
    issues = pd.read_csv(client.download_artifacts(learned.run_id, "evaluation/label_issues.csv", str(tmp_path)))
    scored = int(run.data.params["images_val"]) + int(run.data.params["images_test"])
    assert run.data.metrics["label_issue_rate"] == pytest.approx(len(issues) / scored)
    assert set(issues["split"]) <= {"val", "test"} and len(issues)
    assert (issues["given"] != issues["suggested"]).all()
    assert issues["score"].is_monotonic_increasing and (issues["score"] < 0.5).all()
    # Each flagged test image's given label is its true label, and its score the served
    # probability of that label (the test predictions' calibrated column).
    tested = pd.read_csv(client.download_artifacts(learned.run_id, "evaluation/test_predictions.csv", str(tmp_path)))
    joined = issues[issues["split"] == "test"].merge(tested, on="sha256")
    assert len(joined) and (joined["given"] == joined["true"]).all()
    probability = joined.apply(lambda r: r[f"p_{r['given']}"], axis=1)
    assert np.abs(probability - joined["score"]).max() < 1e-4


# --- the audit ---------------------------------------------------------------------------------------

def test_data_audit_ranks_planted_label_errors_near_the_top(workdir):
    from workbench.data import synth

    folder = workdir / "photos"
    synth.generate(folder, "mask2", seed=11, size=32, count=600)
    rng, planted = random.Random(0), set()
    for label, other in (("with_mask", "without_mask"), ("without_mask", "with_mask")):
        for f in rng.sample(sorted((folder / label).glob("*.jpg")), 10):
            shutil.move(f, folder / other / f"flipped_{f.name}")
            planted.add(f"{other}/flipped_{f.name}")
    spec = {"name": "noisy",
            "dataset": {"source": "manifests", "manifests": [{"name": "photos", "adapter": "folders",
                                                               "path": str(folder)}]},
            "split": LEARN["split"], "params": {**LEARN["params"], "learning_rate": 0.01, "epochs": 4}, "seed": 7}
    (workdir / "experiments" / "noisy.yaml").write_text(yaml.safe_dump(spec))

    done = workbench_cli("data", "audit", "noisy", "--folds", "3", cwd=workdir)
    assert done.returncode == 0, done.stderr[-3000:]
    said = flat(done.stdout)
    assert re.search(r"noisy: 600 images scored out of sample by 3-fold training", said), said
    ranking = pd.read_csv(workdir / "reports" / "noisy-audit" / "label_issues.csv")
    assert len(ranking) == 600 and ranking["score"].is_monotonic_increasing
    # Folds keep duplicate groups whole, and every image was scored by a model that never saw it.
    assert ranking["fold"].nunique() == 3
    top = set(ranking["path"].head(2 * len(planted)))
    recall = len(top & planted) / len(planted)
    # A random ranking puts 2N/600 = 6.7 % of them there (P[recall >= 0.4] < 1e-6); measured: 0.65
    # (the same with 6 epochs as with these 4).
    assert recall >= 0.4, recall
    page = (workdir / "reports" / "noisy-audit" / "label_issues.html").read_text()
    assert page.count("data:image/jpeg;base64,") == 48 and "flipped_" in page

    run_id = re.search(r"run ([0-9a-f]{32})", said).group(1)
    client = tracking.connect(f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["workbench.role"] == "audit"
    assert run.data.metrics["label_issues"] == ranking["issue"].sum()
    assert {f.path for f in client.list_artifacts(run_id, "audit")} == {"audit/label_issues.csv",
                                                                      "audit/label_issues.html"}


def test_audit_folds_never_split_a_duplicate_group():
    from workbench.analysis.audit import folds_of

    frame = pd.DataFrame({"label": ["a", "b"] * 30, "group_id": [i // 3 for i in range(60)]})
    fold = folds_of(frame, 3, seed=0)
    assert frame.assign(fold=fold).groupby("group_id")["fold"].nunique().max() == 1
    assert sorted(set(fold)) == [0, 1, 2]


# --- the gate ----------------------------------------------------------------------------------------

def test_the_gate_rule_on_hand_made_predictions():
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 2, 300)
    good = np.where(rng.random(300) < 0.9, truth, 1 - truth)
    bad = np.where(rng.random(300) < 0.55, truth, 1 - truth)
    assert gate.decide(truth, bad, good, [0, 1])[0] == "worse"
    assert gate.decide(truth, good, bad, [0, 1])[0] == "better"
    assert gate.decide(truth, good, good, [0, 1])[0] == "tie"
    slightly = good.copy()
    slightly[np.flatnonzero(slightly == truth)[:3]] ^= 1   # 3 more mistakes in 300: luck, not worse
    assert gate.decide(truth, slightly, good, [0, 1])[0] == "tie"


def test_promote_refuses_a_far_worse_model_and_records_an_override(learned_copy):
    store, env = learned_copy, learned_copy.env()
    client = tracking.connect(store.uri)

    def run_bad() -> str:
        done = workbench_in_process("run", "learn", "--set", "learning_rate=0.00001", "--set", "epochs=1",
                                    cwd=store.root, env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        return re.search(r"run ([0-9a-f]{32})", flat(done.stdout)).group(1)

    bad, bad_again = run_bad(), run_bad()
    champion_before = str(client.get_model_version_by_alias("faces", "champion").version)
    count_before = len(client.search_model_versions("name = 'faces'"))

    def unchanged() -> None:
        assert str(client.get_model_version_by_alias("faces", "champion").version) == champion_before
        assert len(client.search_model_versions("name = 'faces'")) == count_before

    refused = workbench_cli("promote", "--name", "faces", "--run", bad, cwd=store.root, env=env)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    [line] = refused.stderr.strip().splitlines()
    assert f"not promoted, run {bad} is significantly worse than champion version {champion_before}" in line, line
    assert re.search(r"on \d+ shared test images, macro-F1 -0\.[2-9]\d* .*95 % CI \[-\d\.\d+, -\d\.\d+\]", line), line
    unchanged()

    forced = workbench_in_process("promote", "--name", "faces", "--run", bad, "--force", cwd=store.root, env=env)
    assert forced.returncode == 0, forced.stderr
    assert "--force: the gate's refusal overridden" in flat(forced.stdout)
    version = client.get_model_version_by_alias("faces", "champion")
    assert version.run_id == bad
    tags = version.tags
    assert tags["workbench.gate.decision"] == "worse" and tags["workbench.gate.forced"] == "true"
    assert tags["workbench.gate.champion_version"] == champion_before
    assert float(tags["workbench.gate.delta_high"]) < 0 and float(tags["workbench.gate.mcnemar_p"]) < 0.05
    assert int(tags["workbench.gate.n"]) == int(client.get_run(bad).data.params["images_test"])
    assert "Promoted with --force, overriding the gate" in version.description

    # Two models that learned nothing are no better than each other.
    champion_before, count_before = str(version.version), count_before + 1
    same = workbench_in_process("promote", "--name", "faces", "--run", bad_again, "--require-better",
                                cwd=store.root, env=env)
    assert same.returncode == 1 and "--require-better" in same.stderr and "not significantly better" in same.stderr
    unchanged()

    # A model of other classes cannot be compared with this champion.
    tiny = {"name": "tiny3", "dataset": {"source": "synthetic", "task": "mask3_fake", "count": 90, "size": 32},
            "split": LEARN["split"], "params": {**LEARN["params"], "epochs": 1, "learning_rate": 0.01}, "seed": 7}
    (store.root / "experiments" / "tiny3.yaml").write_text(yaml.safe_dump(tiny))
    other = workbench_in_process("run", "tiny3", cwd=store.root, env=env)
    assert other.returncode == 0, other.stderr[-2000:]
    other_id = re.search(r"run ([0-9a-f]{32})", flat(other.stdout)).group(1)
    mismatch = workbench_in_process("promote", "--name", "faces", "--run", other_id, cwd=store.root, env=env)
    assert mismatch.returncode == 1 and "cannot compare with champion version" in mismatch.stderr
    assert "different tasks" in mismatch.stderr
    unchanged()


def test_the_model_card_has_every_section_its_intervals_and_the_cross_dataset_results(learned_copy, tmp_path):
    store, env = learned_copy, learned_copy.env()
    client = tracking.connect(store.uri)
    candidate = store.trials[1]
    evaluated = workbench_in_process("evaluate", "--model", f"runs:/{candidate}/model", "--data", "learn",
                                     "--split", "test", cwd=store.root, env=env)
    assert evaluated.returncode == 0, evaluated.stderr
    # The real script: every copy of the learned store holds the same run ids, and MLflow caches
    # a run's artefact location per process, so in-process the card could land in another copy.
    done = workbench_cli("promote", "--name", "faces", "--run", candidate, "--force", cwd=store.root, env=env)
    assert done.returncode == 0, done.stderr
    version = client.get_model_version_by_alias("faces", "champion")
    assert version.run_id == candidate and version.tags["workbench.gate.decision"] in ("tie", "worse", "better")

    artifacts = Path(client.get_run(candidate).info.artifact_uri.removeprefix("file://"))
    assert str(artifacts).startswith(str(store.root))
    md = (artifacts / "model_card.md").read_text()
    for section in ("## Model details", "## Intended use", "Out of scope", "## Factors", "## Metrics",
                    "## Evaluation data", "## Training data", "## Quantitative analyses", "## Ethical considerations",
                    "## Caveats and recommendations"):
        assert section in md, section
    run = client.get_run(candidate)
    m, p = run.data.metrics, run.data.params
    assert "Decision rule: the best finished run by `objective` (val_f1_macro on the validation split)" in md
    assert "Gate against champion version" in md and f"Temperature {m['temperature']:.3f}" in md
    assert f"| accuracy | {m['test_accuracy']:.4f} | [" in md
    assert f"Split sizes: train {p['images_train']}, validation {p['images_val']}, test {p['images_test']}" in md
    # Its `evaluate` run: the spec's test split again, so nothing was left out as seen.
    assert f"| {p['dataset']} (test) | {p['images_test']} | 0 | {m['test_accuracy']:.3f} [" in md
    assert f"Label issues: {100 * m['label_issue_rate']:.1f} %" in md
    assert version.description.startswith("# Model card: faces version") and len(version.description) <= 5000

    card = json.loads((artifacts / "model_card.json").read_text())
    assert set(card) >= {"model_details", "model_parameters", "quantitative_analysis", "considerations"}
    assert card["model_details"]["name"] == "faces" and card["model_details"]["version"]["name"] == str(version.version)
    overall = [x for x in card["quantitative_analysis"]["performance_metrics"]
               if x["slice"] == "all test images" and x["type"] == "accuracy"][0]
    low, high = float(overall["confidence_interval"]["lower_bound"]), float(overall["confidence_interval"]["upper_bound"])
    assert low < m["test_accuracy"] < high and high - low < 0.2
    assert {"use_cases", "limitations", "ethical_considerations"} <= set(card["considerations"])
    assert any(x["slice"] == f"data={p['dataset']}" for x in card["quantitative_analysis"]["performance_metrics"])
