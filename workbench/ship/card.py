"""The model card a promotion writes: the sections of Mitchell et al., "Model Cards for Model
Reporting" (2019) - model details, intended use, factors, metrics, evaluation data, training
data, quantitative analyses, ethical considerations, caveats - filled from what the runs
recorded, never typed by hand. It is rendered as markdown (the registered version's description
and `model_card.md` on the run) and as JSON under the field names of the TensorFlow Model Card
Toolkit schema (`model_card.json`: model_details, model_parameters, quantitative_analysis,
considerations), so tools that read that schema can read ours.

`gather` is the edge that reads the store (test predictions, class counts, evaluation and
matrix runs); `card` and `card_json` are pure functions of the `Facts` it returns, so every
sentence can be checked in a test on facts built by hand.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import pandas as pd
from mlflow.exceptions import MlflowException

from workbench import vocabulary
from workbench.measure import stats
from workbench.track import evidence
from workbench.vocabulary import Artifacts

# A model version's description is a 5,000-character column in MLflow's SQL stores.
DESCRIPTION_LIMIT = 4800
RESAMPLES = 1000


@dataclass(frozen=True)
class Slice:
    """One row of a quantitative analysis: a metric on a slice of the test images, with its 95 % interval."""

    slice: str
    metric: str
    value: float
    low: float | None = None
    high: float | None = None
    images: int | None = None


@dataclass(frozen=True)
class Facts:
    """Everything the card says, read once from the store."""

    name: str
    version: str
    experiment: str
    run_id: str
    run_name: str
    model_run_id: str
    selected_by: str
    objective: str | None
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]
    slices: list[Slice] = field(default_factory=list)          # overall, per class, per source
    class_counts: pd.DataFrame | None = None                    # label x (train, val, test, total)
    cross_dataset: list[dict] = field(default_factory=list)     # evaluate runs of this model
    matrix: pd.DataFrame | None = None                          # the latest matrix of its spec
    gate: dict[str, str] = field(default_factory=dict)          # workbench.gate.* tags

    @property
    def classes(self) -> list[str]:
        return [k for k in self.params.get(vocabulary.CLASSES, "").split(",") if k]

    @property
    def synthetic(self) -> bool:
        return self.tags.get(vocabulary.SYNTHETIC) == "true"


# --- the quantitative analyses (pure) ------------------------------------------------------------

def analyses(predictions: pd.DataFrame, classes: list[str]) -> list[Slice]:
    """Accuracy and macro-F1 overall and per source dataset, and per class precision, recall and
    F1 (support-weighted), each with a bootstrap 95 % interval, from per-image predictions."""
    rows: list[Slice] = []
    labels = list(classes)
    known = predictions[predictions["true"].isin(labels) & predictions["predicted"].isin(labels)]

    def scored(frame: pd.DataFrame, name: str) -> None:
        if frame.empty:
            return
        correct = (frame["true"] == frame["predicted"]).to_numpy()
        low, high = stats.bootstrap_accuracy(correct, RESAMPLES)
        rows.append(Slice(name, "accuracy", float(correct.mean()), low, high, len(frame)))
        present = sorted(set(frame["true"]))
        f1 = _f1_over(frame, present)
        low, high = stats.bootstrap_f1_macro(frame["true"], frame["predicted"], labels, RESAMPLES,
                                             average_over=present)
        rows.append(Slice(name, "f1_macro", f1, low, high, len(frame)))

    scored(known, "all test images")
    sources = sorted(known["source"].astype(str).unique()) if "source" in known else []
    if len(sources) > 1:
        for source in sources:
            scored(known[known["source"].astype(str) == source], f"source={source}")
    for label in labels:
        truth = (known["true"] == label).to_numpy()
        said = (known["predicted"] == label).to_numpy()
        if truth.any():
            recall = float(said[truth].mean())
            low, high = stats.bootstrap_accuracy(said[truth], RESAMPLES)
            rows.append(Slice(f"class={label}", "recall", recall, low, high, int(truth.sum())))
        if said.any():
            precision = float(truth[said].mean())
            low, high = stats.bootstrap_accuracy(truth[said], RESAMPLES)
            rows.append(Slice(f"class={label}", "precision", precision, low, high, int(said.sum())))
    return rows


def _f1_over(frame: pd.DataFrame, present: list[str]) -> float:
    """Macro-F1 over the classes the slice holds (a source lacking a class is not charged a zero for it)."""
    from sklearn.metrics import f1_score

    return float(f1_score(frame["true"], frame["predicted"], labels=present, average="macro", zero_division=0))


# --- the edge: read the store --------------------------------------------------------------------

def gather(client, candidate, *, name: str, version: str, experiment: str, metric: str,
           gate: dict[str, str] | None = None) -> Facts:
    """The facts of one promoted run (a `promote.Candidate`), from the store."""
    model_run = candidate.model_run_id
    predictions = evidence.load_predictions(client, [model_run])[model_run]
    classes = [k for k in candidate.params.get(vocabulary.CLASSES, "").split(",") if k]
    return Facts(
        name=name, version=version, experiment=experiment, run_id=candidate.run_id, run_name=candidate.run_name,
        model_run_id=model_run, selected_by=metric, objective=candidate.objective, params=candidate.params,
        metrics=candidate.metrics, tags=candidate.tags,
        slices=analyses(predictions, classes) if predictions is not None and len(predictions) else [],
        class_counts=_csv(client, model_run, Artifacts.CLASS_COUNTS, index_col=0),
        cross_dataset=_evaluations(client, candidate.experiment_id, model_run),
        matrix=_latest_matrix(client, candidate.experiment_id, candidate.tags.get(vocabulary.SPEC)),
        gate=gate or {})


def _csv(client, run_id: str, path: str, **read) -> pd.DataFrame | None:
    try:
        with tempfile.TemporaryDirectory() as tmp:
            return pd.read_csv(client.download_artifacts(run_id, path, tmp), **read)
    except (MlflowException, OSError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return None


def _evaluations(client, experiment_id: str, model_run: str) -> list[dict]:
    """`workbench evaluate` runs of this model: what it scored on data it never trained on."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{vocabulary.MODEL_RUN}` = '{model_run}' and "
                                                             f"tags.`{vocabulary.ROLE}` = 'evaluation'",
                              order_by=["attributes.start_time DESC"], max_results=20)
    found = []
    for run in runs:
        m, data = run.data.metrics, run.data.params.get("data", "?")
        p = vocabulary.eval_prefix(data)
        p = p if f"{p}_accuracy" in m else "test"   # evaluation runs logged before the prefix
        found.append({"data": data, "split": run.data.params.get("split", "?"),
                      "images": m.get("images_evaluated"), "excluded_seen": m.get("excluded_seen"),
                      **{key: m.get(f"{p}_{key}") for key in ("accuracy", "accuracy_low", "accuracy_high", "f1_macro",
                                                              "f1_macro_low", "f1_macro_high")},
                      "run_id": run.info.run_id})
    return found


def _latest_matrix(client, experiment_id: str, spec: str | None) -> pd.DataFrame | None:
    if not spec:
        return None
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{vocabulary.ROLE}` = 'matrix'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return _csv(client, runs[0].info.run_id, Artifacts.MATRIX) if runs else None


# --- rendering (pure) ----------------------------------------------------------------------------

def _f(value, digits: int = 4) -> str:
    """Counts as integers, scores with `digits` decimals (a recall of 1 reads 1.0000, not 1)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, int) or (float(value).is_integer() and abs(value) >= 100):
        return f"{int(value):,}"
    return f"{value:.{digits}f}"


def _count(value) -> str:
    return "-" if value is None or not math.isfinite(float(value)) else f"{int(value):,}"


def _interval(s: Slice) -> str:
    return f"[{s.low:.3f}, {s.high:.3f}]" if s.low is not None else "-"


def intended_use(f: Facts) -> tuple[list[str], list[str]]:
    classes = ", ".join(f.classes) or "its classes"
    chosen = f"; chosen for how it does on {f.params.get(vocabulary.HOLDOUT_SOURCE)}, a source it never trained on" \
        if f.params.get(vocabulary.RULE) == "holdout_source" else ""
    uses = [f"Sorting single, roughly centred face images into {classes}, at "
            f"{f.params.get('image_size', '?')} px, from sources like `{f.params.get('dataset', '?')}`{chosen}.",
            "Comparing configurations and as a baseline for further training, in the study that produced it."]
    out = ["Any decision about a person (access, discipline, identity, age or health) without human review.",
           "Images unlike the training data: other cameras, crowds, several faces per image, video frames "
           "without face detection (`workbench predict --detect-faces`), drawings or spoofs.",
           "Treating a probability as certain: see calibration below."]
    if f.synthetic:
        uses = ["Demonstrating and testing the workbench: it was trained on synthetic faces only."]
        out.insert(0, "Any use on photographs of real people: it has never seen one.")
    return uses, out


def factors(f: Facts) -> list[str]:
    lines = []
    sources = [s.slice.removeprefix("source=") for s in f.slices if s.slice.startswith("source=")]
    if sources:
        lines.append(f"Source dataset ({', '.join(sources)}): the data merge several sources, analysed separately below.")
    lines.append("Class: per-class precision and recall below.")
    lines.append("Not recorded, so not analysed: age, skin tone, gender, lighting, camera, pose, occlusion. "
                 "Performance across them is unknown.")
    return lines


def decision_rule(f: Facts) -> str:
    rule = f"the best finished run by `{f.selected_by}`"
    held_out = f.params.get(vocabulary.HOLDOUT_SOURCE)
    if f.selected_by == vocabulary.OBJECTIVE and f.objective:
        rule += f" ({f.objective} {vocabulary.measured_on(f.params.get(vocabulary.RULE), held_out)})"
    rule += f", {_f(f.metrics.get(f.selected_by))} for this one"
    if vocabulary.IN_DISTRIBUTION in f.metrics:
        rule += (f" (on the training sources' own validation images {_f(f.metrics[vocabulary.IN_DISTRIBUTION])}, "
                 f"a transfer gap of {f.metrics.get(vocabulary.TRANSFER_GAP, float('nan')):+.4f})")
    if f.selected_by.startswith("test_"):
        rule += "; chosen by a test figure, so the test figures below are optimistic"
    else:
        rule += "; the test split played no part in choosing it, so the test figures below are an honest estimate"
        if f.params.get(vocabulary.RULE) == "holdout_source":
            rule += f" of how it does on {held_out}'s test images, a source it never trained on"
    return rule


def gate_line(f: Facts) -> str | None:
    g = {k.removeprefix("workbench.gate."): v for k, v in f.gate.items()}
    if not g:
        return None
    forced = " Promoted with --force, overriding the gate." if g.get("forced") == "true" else ""
    if g.get("decision") == "incomparable":
        return f"Gate against champion version {g.get('champion_version')}: not comparable ({g.get('reason', '')}).{forced}"
    return (f"Gate against champion version {g.get('champion_version')}: **{g.get('decision')}** on {g.get('n')} shared "
            f"leak-free test images; macro-F1 difference {float(g['delta_f1_macro']):+.4f} (95 % CI "
            f"[{float(g['delta_low']):+.4f}, {float(g['delta_high']):+.4f}]), McNemar p = {float(g['mcnemar_p']):.3g} "
            f"({g.get('mcnemar_c')} images only this model got right, {g.get('mcnemar_b')} only the champion).{forced}")


def calibration_lines(m: dict[str, float]) -> list[str]:
    if "temperature" not in m:
        return ["Not calibrated (the run predates calibration): treat probabilities as scores."]
    lines = [f"Temperature {m['temperature']:.3f}, fitted on the validation split (NLL); the served model "
             "applies it."]
    for key, what in (("ece", "expected calibration error"), ("brier", "Brier score"), ("log_loss", "log loss")):
        before, after = m.get(f"test_{key}"), m.get(f"test_{key}_calibrated")
        if before is not None and after is not None:
            lines.append(f"Test {what}: {before:.4f} before, {after:.4f} after.")
    return lines


def caveats(f: Facts) -> list[str]:
    m, p = f.metrics, f.params
    lines = []
    if f.synthetic:
        lines.append("Trained and tested on synthetic faces (stylised renders by `workbench.data.synth`), never on "
                     "photographs: its figures say nothing about real faces; do not use it on people.")
    n_test = int(float(p["images_test"])) if p.get("images_test") else None
    if n_test is not None:
        lines.append(f"The test split holds {n_test} images: per-class figures rest on fewer still; read the intervals.")
    if folds := f.tags.get(vocabulary.FOLDS):
        lines.append(f"Run-level figures are means over {len(folds.split(','))} trainings, each holding one source out "
                     f"({folds}) and tested on it; the registered model is the best fold's (run `{f.model_run_id}`), "
                     "trained without one of the sources, whose per-image figures the analyses use.")
    if repeats := f.tags.get(vocabulary.REPEATS):
        lines.append(f"Run-level figures are means over {repeats} seeds; the registered model is the best seed's "
                     f"(run `{f.model_run_id}`), whose per-image figures the analyses use.")
    if "overfit_gap" in m:
        gap = m["overfit_gap"]
        lines.append(f"Overfit gap (final train - validation accuracy): {gap:+.3f}, "
                     f"{'a sign of overfitting' if gap > 0.05 else 'no sign of overfitting'}.")
    if "label_issue_rate" in m:
        lines.append(f"Label issues: {100 * m['label_issue_rate']:.1f} % of the validation and test images look "
                     f"mislabelled by confident learning (`{Artifacts.LABEL_ISSUES}` on the run); scores against "
                     "those labels are off by about that much. `workbench data audit` ranks the whole dataset.")
    if f.tags.get(vocabulary.LEFT_OUT):
        lines.append(f"Images left out of the data: {f.tags[vocabulary.LEFT_OUT]}.")
    lines.append("Not tested on: other cameras, lighting, resolutions, poses or occlusions beyond the evaluations "
                 "listed, several faces per image, per-group fairness, or adversarial and spoofed images.")
    return lines


_CARD = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                           undefined=jinja2.StrictUndefined).from_string("""\
# Model card: {{ f.name }} version {{ f.version }}

## Model details

- {{ f.classes | length }}-class image classifier ({{ f.classes | join(", ") }}), backbone `{{ p.get("backbone", "?") }}` \
(weights `{{ p.get("weights", "?") }}`), input {{ p.get("image_size", "?") }}x{{ p.get("image_size", "?") }} RGB pixels in [0, 255] \
(any size is resized the way training resized), output class probabilities in that order.
- Trained by workbench: run `{{ f.run_id }}` ({{ f.run_name }}) of experiment `{{ f.experiment }}`\
{% if f.tags.get("mlflow.parentRunId") %}, sweep run `{{ f.tags["mlflow.parentRunId"] }}`{% endif %}; \
spec `{{ f.tags.get("workbench.spec", "?") }}` (hash `{{ f.tags.get("workbench.spec_hash", "?") }}`), seed {{ p.get("seed", "?") }}.
- Training: optimizer `{{ p.get("optimizer", "?") }}`, learning rate {{ p.get("learning_rate", "?") }}, {{ p.get("epochs", "?") }} epoch(s) \
(best epoch {{ count(m.get("best_epoch")) }}), balance `{{ p.get("balance", "?") }}`, augmentation `{{ p.get("augmentation", "?") }}`.
- {{ count(m.get("total_params")) }} parameters, {{ fmt(m.get("model_size_mb"), 2) }} MB, \
{{ fmt(m.get("latency_ms_batch1"), 2) }} ms per image at batch 1 on {{ f.tags.get("workbench.device", "?") }}.
- Code: git commit `{{ f.tags.get("workbench.git_commit", "unknown") }}`, TensorFlow {{ f.tags.get("workbench.tensorflow_version", "?") }}, \
Keras {{ f.tags.get("workbench.keras_version", "?") }}, MLflow {{ f.tags.get("workbench.mlflow_version", "?") }}.

## Intended use

{% for line in uses %}
- {{ line }}
{% endfor %}

Out of scope:
{% for line in out_of_scope %}
- {{ line }}
{% endfor %}

## Factors

{% for line in factor_lines %}
- {{ line }}
{% endfor %}

## Metrics

- Decision rule: {{ rule }}.
{% if gate %}
- {{ gate }}
{% endif %}
- Reported: accuracy and macro-F1 on the test split, with 95 % percentile-bootstrap intervals (1,000 resamples of the \
test images); per-class precision and recall likewise.
- Calibration:
{% for line in calibration %}
  - {{ line }}
{% endfor %}

| metric | value | 95 % interval |
| --- | --- | --- |
{% for s in overall %}
| {{ s.metric }} | {{ fmt(s.value) }} | {{ interval(s) }} |
{% endfor %}
{% for key in ("test_roc_auc_ovr", "test_log_loss", "test_ece", "test_ece_calibrated") if key in m %}
| {{ key | replace("test_", "", 1) }} | {{ fmt(m[key]) }} | - |
{% endfor %}

## Evaluation data

- The test split of dataset `{{ p.get("dataset", "?") }}` (digest `{{ p.get("dataset_digest", "?") }}`): \
{{ p.get("images_test", "?") }} images, never used for training or for choosing the model; images sharing a duplicate \
group (same bytes or near-identical perceptual hash) with a training image were kept out of it.
{% if cross %}
- Other datasets (`workbench evaluate`, images the model trained or validated on left out):

| data | images | left out as seen | accuracy [95 %] | macro-F1 [95 %] |
| --- | --- | --- | --- | --- |
{% for e in cross %}
| {{ e.data }} ({{ e.split }}) | {{ count(e.images) }} | {{ count(e.excluded_seen) }} | {{ fmt(e.accuracy, 3) }} \
[{{ fmt(e.accuracy_low, 3) }}, {{ fmt(e.accuracy_high, 3) }}] | {{ fmt(e.f1_macro, 3) }} [{{ fmt(e.f1_macro_low, 3) }}, \
{{ fmt(e.f1_macro_high, 3) }}] |
{% endfor %}
{% else %}
- No cross-dataset evaluation yet: `workbench evaluate models:/{{ f.name }}@champion --data OTHER` adds one.
{% endif %}
{% if matrix is not none %}

Cross-dataset matrix of this spec (one model per source, trained on it and tested on each):

| trained on | tested on | images | macro-F1 |
| --- | --- | --- | --- |
{% for r in matrix.itertuples() %}
| {{ r.trained_on }} | {{ r.tested_on }} | {{ r.images }} | {{ fmt(r.test_f1_macro, 3) }} |
{% endfor %}
{% endif %}

## Training data

- Dataset `{{ p.get("dataset", "?") }}`{% if f.synthetic %} (synthetic faces){% endif %}, digest \
`{{ p.get("dataset_digest", "?") }}`; split manifest with every image's hash: `{{ manifest }}` on run `{{ f.model_run_id }}`.
- Split sizes: train {{ p.get("images_train", "?") }}, validation {{ p.get("images_val", "?") }}, test {{ p.get("images_test", "?") }}; \
{{ count(m.get("train_images")) }} training images after balancing (`{{ p.get("balance", "?") }}`).
{% if f.tags.get("workbench.left_out") %}
- Left out, and why: {{ f.tags["workbench.left_out"] }}.
{% else %}
- Nothing was left out.
{% endif %}
{% if counts is not none %}

| class | train | val | test | total |
| --- | --- | --- | --- | --- |
{% for label, row in counts.iterrows() %}
| {{ label }} | {{ row.get("train", "-") }} | {{ row.get("val", "-") }} | {{ row.get("test", "-") }} | {{ row.get("total", "-") }} |
{% endfor %}
{% endif %}

## Quantitative analyses

| slice | metric | value | 95 % interval | images |
| --- | --- | --- | --- | --- |
{% for s in f.slices %}
| {{ s.slice }} | {{ s.metric }} | {{ fmt(s.value) }} | {{ interval(s) }} | {{ count(s.images) }} |
{% endfor %}
{% for k in f.classes if ("test_f1_" ~ k) in m %}
| class={{ k }} | f1 | {{ fmt(m["test_f1_" ~ k]) }} | - | - |
{% endfor %}

## Ethical considerations

- Faces are personal data: the training images' consent and licence are those of dataset `{{ p.get("dataset", "?") }}`; \
check them before shipping.
- Errors are not spread evenly: without demographic labels, nobody has measured for whom this model fails more often.

## Caveats and recommendations

{% for line in caveat_lines %}
- {{ line }}
{% endfor %}
""")


def card(f: Facts) -> str:
    """The markdown card."""
    uses, out = intended_use(f)
    return _CARD.render(f=f, p=f.params, m=f.metrics, fmt=_f, count=_count, interval=_interval, uses=uses, out_of_scope=out,
                        factor_lines=factors(f), rule=decision_rule(f), gate=gate_line(f),
                        calibration=calibration_lines(f.metrics),
                        overall=[s for s in f.slices if s.slice == "all test images"],
                        cross=f.cross_dataset, matrix=f.matrix, counts=f.class_counts,
                        manifest=Artifacts.MANIFEST, caveat_lines=caveats(f))


# Left out of a too-long version description first to last; the file on the run keeps them.
DROPPABLE = ("Quantitative analyses", "Factors", "Ethical considerations", "Training data", "Intended use")


def description(markdown: str, run_id: str) -> str:
    """The card as a version description, within the registry's column: whole sections are left
    out (the per-slice tables first) and named, with where the full card is."""
    head, *rest = markdown.split("\n## ")
    sections = {part.split("\n", 1)[0]: part for part in rest}
    dropped: list[str] = []

    def joined() -> str:
        kept = [sections[t] for t in sections if t not in dropped]
        note = (f"\n\n(Left out here for length: {', '.join(dropped)}; the full card is `{Artifacts.MODEL_CARD}` "
                f"on run `{run_id}`.)\n") if dropped else ""
        return "\n## ".join([head, *kept]).rstrip("\n") + ("\n" if not note else note)

    for title in DROPPABLE:
        if len(joined()) <= DESCRIPTION_LIMIT:
            break
        if title in sections:
            dropped.append(title)
    text = joined()
    return text if len(text) <= DESCRIPTION_LIMIT else text[:DESCRIPTION_LIMIT - 40] + "\n\n(cut: see model_card.md)\n"


def card_json(f: Facts) -> dict:
    """The card under the TensorFlow Model Card Toolkit schema's field names."""
    uses, out = intended_use(f)

    def metric(s: Slice) -> dict:
        entry = {"type": s.metric, "value": _f(s.value), "slice": s.slice}
        if s.low is not None:
            entry["confidence_interval"] = {"lower_bound": _f(s.low), "upper_bound": _f(s.high)}
        return entry

    performance = [metric(s) for s in f.slices]
    for key in ("temperature", "test_ece", "test_ece_calibrated", "test_brier", "test_brier_calibrated",
                "test_log_loss", "test_log_loss_calibrated", "label_issue_rate"):
        if key in f.metrics:
            performance.append({"type": key, "value": _f(f.metrics[key]), "slice": "test"})
    for e in f.cross_dataset:
        for key in ("accuracy", "f1_macro"):
            if e.get(key) is not None:
                performance.append({"type": key, "value": _f(e[key]), "slice": f"data={e['data']}",
                                    "confidence_interval": {"lower_bound": _f(e.get(f"{key}_low")),
                                                            "upper_bound": _f(e.get(f"{key}_high"))}})
    data = [{"name": f"{f.params.get('dataset', '?')} ({split})", "link": f"runs:/{f.model_run_id}/{Artifacts.MANIFEST}",
             "sensitive": {"sensitive_data": [] if f.synthetic else ["face images of people"]},
             "description": f"{f.params.get(f'images_{split}', '?')} images"} for split in ("train", "val", "test")]
    p = f.params
    return {
        "schema_version": "0.0.2",
        "model_details": {
            "name": f.name,
            "overview": f"{len(f.classes)}-class face image classifier ({', '.join(f.classes)}), "
                        f"backbone {p.get('backbone', '?')}.",
            "version": {"name": str(f.version), "diff": gate_line(f) or ""},
            "references": [{"reference": f"runs:/{f.run_id}"}],
            "path": f"models:/{f.name}/{f.version}",
        },
        "model_parameters": {
            "model_architecture": f"{p.get('backbone', '?')} (weights {p.get('weights', '?')}) + dense head",
            "data": data,
            "input_format": f"RGB image, resized to {p.get('image_size', '?')}x{p.get('image_size', '?')}, pixels in [0, 255]",
            "output_format": f"class probabilities, temperature-calibrated, in the order {', '.join(f.classes)}",
        },
        "quantitative_analysis": {"performance_metrics": performance},
        "considerations": {
            "users": [{"description": "Students, researchers and small teams comparing face-image classifiers."}],
            "use_cases": [{"description": u} for u in uses],
            "limitations": [{"description": line} for line in [*out, *caveats(f)]],
            "tradeoffs": [{"description": f"Selected by {decision_rule(f)}."}],
            "ethical_considerations": [{"name": "Unmeasured performance across demographic groups",
                                        "mitigation_strategy": "Evaluate on labelled groups with `workbench evaluate` "
                                                               "before any use on people."}],
        },
    }


def write(f: Facts, folder: Path) -> tuple[Path, Path]:
    """`model_card.md` and `model_card.json` in `folder`."""
    import json

    md, js = Path(folder) / Artifacts.MODEL_CARD, Path(folder) / Artifacts.MODEL_CARD_JSON
    md.write_text(card(f))
    js.write_text(json.dumps(card_json(f), indent=2))
    return md, js

