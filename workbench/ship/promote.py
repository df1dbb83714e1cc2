"""Promotion: from tracked runs to a named model that applications load as `models:/NAME@champion`.

`promote` picks the best finished run of a sweep or an experiment by one metric (by default the
validation objective the sweep optimised, never a test figure, so the test figures it reports
stay honest), or takes the run the user names, and registers its model in the MLflow Model Registry, writes a model card as the
version's description and the run's figures as its tags, and points the alias `champion` at it,
keeping the version it replaces as `previous`; `rollback` swaps the two back. Aliases, not the
deprecated stages, carry the roles. A run is refused, with one line saying why, when it did not
finish, has no model or scores under the bar; promoting the same run twice reuses its version.
The choice of a run is a pure function of the runs' values; only the edges talk to MLflow.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import re
from dataclasses import dataclass, field

import jinja2
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from workbench import vocabulary
from workbench.errors import WorkbenchError
from workbench.track import store

CHAMPION, PREVIOUS = "champion", "previous"
DEFAULT_METRIC = vocabulary.DEFAULT_SELECTION
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class PromotionError(WorkbenchError):
    """A run, experiment or sweep cannot be promoted as asked."""


@dataclass(frozen=True)
class Candidate:
    """What promotion needs to know about one run, read once from the tracking store."""

    run_id: str
    run_name: str
    experiment_id: str
    status: str                 # MLflow's: RUNNING, FINISHED, FAILED, KILLED, SCHEDULED
    state: str | None           # workbench.state: finished, pruned, failed (None: never got that far)
    has_model: bool
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def parent_run_id(self) -> str | None:
        return self.tags.get("mlflow.parentRunId")

    @property
    def model_run_id(self) -> str:
        """The run holding the model: the run itself, or, for a configuration trained with
        repeats, its best seed's run."""
        return self.tags.get(vocabulary.MODEL_RUN, self.run_id)

    @property
    def objective(self) -> str | None:
        """The metric this run's `objective` stands for (val_f1_macro, say)."""
        return self.params.get(vocabulary.OBJECTIVE_PARAM)


@dataclass(frozen=True)
class Promotion:
    name: str
    version: str
    run_id: str
    metric: str
    score: float | None
    previous: str | None        # the version now aliased `previous`, if any
    created: bool               # a new version was registered (not reused)
    unchanged: bool = False     # it already was the champion


# --- choosing a run: values in, values out ----------------------------------------------------------

def refusal(candidate: Candidate, metric: str, min_score: float | None = None) -> str | None:
    """Why this run cannot be promoted (one line), or None when it can."""
    run = f"run {candidate.run_id}"
    if candidate.status == "RUNNING" or candidate.status == "SCHEDULED":
        return f"{run} is still {candidate.status}: only finished runs can be promoted; wait for it to end"
    if candidate.status in ("FAILED", "KILLED") or candidate.state == "failed":
        ended = candidate.status if candidate.status != "FINISHED" else "failed"
        reason = candidate.tags.get("workbench.error", "").split("\n")[0][:120]
        because = f" ({reason})" if reason else ""
        return f"{run} ended {ended}{because}: only finished runs can be promoted"
    if candidate.state == "pruned":
        return f"{run} was pruned: it has no test evaluation and no model; promote a finished run"
    role = candidate.tags.get(vocabulary.ROLE)
    if role in ("sweep", "evaluation", "matrix"):
        return f"{run} is a {role} run, not a training run: promote one of its trials or the run that trained the model"
    if candidate.state != "finished":
        return (f"{run} is not a finished workbench run (workbench.state={candidate.state or 'unset'}): "
                "only runs trained by `workbench run` or `workbench sweep` can be promoted")
    if not candidate.has_model:
        return f"{run} has no logged model (runs:/{candidate.model_run_id}/model): nothing to register"
    score = candidate.metrics.get(metric)
    if score is None or not math.isfinite(score):
        known = ", ".join(sorted(m for m in candidate.metrics if m.startswith("test_"))) or "none"
        return f"{run} has no metric {metric} (its test metrics: {known}); pick one with --metric"
    if min_score is not None and not vocabulary.at_least_as_good(score, min_score, metric, candidate.objective):
        side = "above" if vocabulary.lower_is_better(metric, candidate.objective) else "under"
        return (f"{run} has {metric} {score:.4f}, {side} --min-score {min_score:g}: not promoted; "
                "train a better model or lower the bar")
    return None


def best(candidates: list[Candidate], metric: str) -> Candidate | None:
    """The eligible run with the best score; ties go to the run listed first (the newest)."""
    eligible = [c for c in candidates if refusal(c, metric) is None]
    if not eligible:
        return None
    sign = 1 if vocabulary.lower_is_better(metric, vocabulary.objective_of(c.objective for c in eligible)) else -1
    return min(eligible, key=lambda c: sign * c.metrics[metric])


def no_eligible_run(candidates: list[Candidate], metric: str, scope: str) -> str:
    """The one line for a scope where nothing can be promoted, with counts that say why."""
    if not candidates:
        return f"{scope} has no training runs; train with `workbench run` or `workbench sweep` first"
    reasons: dict[str, int] = {}
    for c in candidates:
        if c.status in ("RUNNING", "SCHEDULED"):
            key = "running"
        elif c.status in ("FAILED", "KILLED") or c.state == "failed":
            key = "failed"
        elif c.state == "pruned":
            key = "pruned"
        elif c.state != "finished":
            key = "not workbench runs"
        elif not c.has_model:
            key = "without a model"
        else:
            key = f"without {metric}"
        reasons[key] = reasons.get(key, 0) + 1
    counts = ", ".join(f"{n} {why}" for why, n in reasons.items())
    return f"{scope} has no finished run with a model and {metric} ({len(candidates)} runs: {counts})"


# --- the model card and tags ----------------------------------------------------------------------

def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if float(value).is_integer() and abs(value) >= 1:
        return f"{int(value):,}"
    return f"{value:.{digits}f}"


def _number(text: str | None) -> str:
    try:
        return f"{float(text):.3g}"
    except (TypeError, ValueError):
        return text or "?"


def version_tags(candidate: Candidate, metric: str, experiment: str) -> dict[str, str]:
    """Registry tags: the run's test figures and what identifies its code, spec and data."""
    tags = {
        "workbench.run_id": candidate.run_id,
        "workbench.experiment": experiment,
        vocabulary.SELECTED_BY: metric,
        "workbench.spec_hash": candidate.tags.get(vocabulary.SPEC_HASH, ""),
        "workbench.dataset": candidate.params.get("dataset", ""),
        "workbench.dataset_digest": candidate.tags.get("workbench.dataset_digest",
                                                       candidate.params.get("dataset_digest", "")),
        "workbench.classes": candidate.params.get("classes", ""),
        "workbench.image_size": candidate.params.get("image_size", ""),
        "workbench.backbone": candidate.params.get("backbone", ""),
    }
    if candidate.parent_run_id:
        tags["workbench.sweep_run_id"] = candidate.parent_run_id
    if commit := candidate.tags.get("workbench.git_commit"):
        tags["workbench.git_commit"] = commit
    for key, value in candidate.metrics.items():
        if key.startswith("test_") or key in vocabulary.CARD_COST or key == metric:
            tags[key] = f"{value:.6g}"
    return {k: v for k, v in tags.items() if v != ""}


_CARD = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True).from_string("""\
# {{ name }}: {{ classes | join(", ") or "image" }} classifier

Promoted from run `{{ c.run_id }}` ({{ c.run_name }}) of experiment `{{ experiment }}`
{%- if c.parent_run_id %}, sweep run `{{ c.parent_run_id }}`{% endif %}; selected by `{{ metric }}`
{%- if metric == "objective" and c.objective %} ({{ c.objective }} on the validation split){% endif %}
 = {{ fmt(m.get(metric)) }}{{ " (lower is better)" if lower else "" }}.
{% if metric.startswith("test_") %}
Chosen by a test figure: the test metrics below are optimistic, since the test split picked the model.
{% else %}
The test split played no part in choosing it: the test metrics below are an honest estimate.
{% endif %}

## Data

- dataset `{{ p.get("dataset", "?") }}`, digest `{{ p.get("dataset_digest", "?") }}`
- classes ({{ classes | length }}): {{ classes | join(", ") }}
- split sizes: train {{ p.get("images_train", "?") }}, val {{ p.get("images_val", "?") }}, test {{ p.get("images_test", "?") }}
- balance `{{ p.get("balance", "?") }}`, augmentation `{{ p.get("augmentation", "?") }}`

## Model

- backbone `{{ p.get("backbone", "?") }}` (weights `{{ p.get("weights", "?") }}`), input {{ size }}x{{ size }} RGB pixels \
in [0, 255], output softmax probabilities in the class order above
- optimizer `{{ p.get("optimizer", "?") }}`, learning rate {{ number(p.get("learning_rate")) }}, \
{{ p.get("epochs", "?") }} epoch(s), best epoch {{ fmt(m.get("best_epoch")) }}
- {{ fmt(m.get("total_params")) }} parameters, {{ fmt(m.get("model_size_mb"), 2) }} MB, \
{{ fmt(m.get("latency_ms_batch1"), 2) }} ms per image at batch 1 on {{ c.tags.get("workbench.device", "?") }}

## Test metrics

| metric | value |
| --- | --- |
{% for key in quality if key in m %}
| {{ key | replace("test_", "", 1) }} | {{ fmt(m[key]) }} |
{% endfor %}

| class | F1 | precision | recall |
| --- | --- | --- | --- |
{% for k in classes %}
| {{ k }} | {{ fmt(m.get("test_f1_" ~ k)) }} | {{ fmt(m.get("test_precision_" ~ k)) }} | {{ fmt(m.get("test_recall_" ~ k)) }} |
{% endfor %}

## Limits

{% for line in limits %}
- {{ line }}
{% endfor %}

## Provenance

- run `{{ c.run_id }}`, spec `{{ c.tags.get("workbench.spec", experiment) }}` hash `{{ c.tags.get("workbench.spec_hash", "?") }}`, \
seed {{ p.get("seed", "?") }}
- git commit `{{ c.tags.get("workbench.git_commit", "unknown") }}`, TensorFlow {{ c.tags.get("workbench.tensorflow_version", "?") }}, \
Keras {{ c.tags.get("workbench.keras_version", "?") }}
""")
CARD_QUALITY = ("test_accuracy", "test_f1_macro", "test_f1_weighted", "test_precision_macro", "test_recall_macro",
                "test_roc_auc_ovr", "test_log_loss", "test_ece")


def model_card(candidate: Candidate, metric: str, experiment: str, name: str) -> str:
    """A markdown model card: what the model is, which metric chose it, what it was trained and
    tested on, how well it did (per class too) and what it was not shown, so a reader can judge
    where it is fit to use."""
    p, m = candidate.params, candidate.metrics
    dataset = p.get("dataset", "?")
    limits = []
    if candidate.tags.get(vocabulary.SYNTHETIC) == "true":
        limits.append("Trained and tested on synthetic faces (stylised renders by `workbench.data.synth`), never on "
                      "photographs: its figures say nothing about real faces; do not use it on people.")
    n_test = int(float(p["images_test"])) if p.get("images_test") else None
    if n_test is not None and "test_accuracy" in m:
        acc = m["test_accuracy"]
        half = 1.96 * math.sqrt(max(acc * (1 - acc), 1e-12) / max(n_test, 1))
        limits.append(f"The test split holds {n_test} images: accuracy {acc:.3f} is known to about "
                      f"+/-{half:.3f} (95 %); smaller per-class figures are less certain still.")
    if repeats := candidate.tags.get(vocabulary.REPEATS):
        limits.append(f"The figures here are the means over the {repeats} seeds this configuration was trained "
                      f"with; the registered model is its best seed's (run `{candidate.model_run_id}`), whose "
                      "own test figures are on that run.")
    if "overfit_gap" in m:
        gap = m["overfit_gap"]
        verdict = "a sign of overfitting" if gap > 0.05 else "no sign of overfitting"
        limits.append(f"Overfit gap (final train - validation accuracy): {gap:+.3f}, {verdict}.")
    if "test_ece" in m:
        limits.append(f"Calibration error (ECE) {m['test_ece']:.3f}: treat probabilities as scores, "
                      "not as calibrated likelihoods, unless this is small.")
    limits.append(f"Not tested on: images from outside `{dataset}` (other cameras, lighting, resolutions, "
                  "poses or occlusions), several faces per image or faces cropped by a detector "
                  "(`workbench predict --detect-faces`), per-group fairness (age, skin tone, gender), "
                  "or deliberately adversarial or spoofed images.")
    return _CARD.render(c=candidate, p=p, m=m, name=name, experiment=experiment, metric=metric,
                        classes=[k for k in p.get("classes", "").split(",") if k], size=p.get("image_size", "?"),
                        lower=vocabulary.lower_is_better(metric, candidate.objective), limits=limits,
                        quality=CARD_QUALITY, fmt=_fmt, number=_number)


# --- the tracking-store edge ------------------------------------------------------------------------

def _has_model(client: MlflowClient, run) -> bool:
    # MLflow 3 logs models as LoggedModels (outputs of the run); older runs kept them as artifacts.
    if run.outputs is not None and run.outputs.model_outputs:
        return True
    try:
        return any(f.path == "model/MLmodel" for f in client.list_artifacts(run.info.run_id, "model"))
    except (MlflowException, OSError):
        return False


def to_candidate(client: MlflowClient, run) -> Candidate:
    holder = run.data.tags.get(vocabulary.MODEL_RUN)
    if holder and run.data.tags.get(vocabulary.ROLE) in vocabulary.TRAINING_ROLES:
        try:
            holder_run = client.get_run(holder)
        except MlflowException:
            holder_run = None
        has_model = holder_run is not None and _has_model(client, holder_run)
    else:
        has_model = _has_model(client, run)
    return Candidate(run_id=run.info.run_id, run_name=run.info.run_name or "", experiment_id=run.info.experiment_id,
                     status=run.info.status, state=run.data.tags.get(vocabulary.STATE),
                     has_model=has_model, metrics=dict(run.data.metrics),
                     params=dict(run.data.params), tags=dict(run.data.tags))


def _get_run(client: MlflowClient, run_id: str):
    try:
        return client.get_run(run_id)
    except MlflowException:
        raise PromotionError(f"run {run_id}: no such run in this tracking store (check --tracking-uri)") from None


def select(client: MlflowClient, *, metric: str = DEFAULT_METRIC, experiment: str | None = None,
           sweep: str | None = None, run_id: str | None = None, min_score: float | None = None) -> Candidate:
    """The run to promote: the one named by --run (checked against --experiment/--sweep when
    given), else the best of the runs `--experiment`/`--sweep` name (`store.scope`)."""
    if run_id:
        chosen = to_candidate(client, _get_run(client, run_id))
        if sweep or experiment:
            where = store.scope(client, experiment=experiment, sweep=sweep)
            if where.sweep_run_id and chosen.parent_run_id != where.sweep_run_id:
                raise PromotionError(f"run {run_id} is not a trial of sweep {where.sweep_run_id}")
            if chosen.experiment_id != where.experiment_id:
                raise PromotionError(f"run {run_id} is not in experiment {where.experiment}")
    else:
        if not experiment and not sweep:
            raise PromotionError("say which runs to choose from: --experiment NAME, --sweep RUN_ID or --run RUN_ID")
        where = store.scope(client, experiment=experiment, sweep=sweep)
        candidates = [to_candidate(client, r) for r in store.configuration_runs(client, where)]
        chosen = best(candidates, metric)
        if chosen is None:
            raise PromotionError(no_eligible_run(candidates, metric, where.description))
    reason = refusal(chosen, metric, min_score)
    if reason:
        raise PromotionError(reason)
    return chosen


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise PromotionError(f"--name {name!r}: use letters, digits, '.', '_' or '-' (it goes into "
                             "models:/NAME@champion URIs)")
    return name


def alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None  # no such model or no such alias: both mean "nobody holds it"


def register(client: MlflowClient, name: str, candidate: Candidate, metric: str, experiment: str) -> tuple[str, bool]:
    """The version holding this run's model: an existing one when the run was registered before."""
    import mlflow

    existing = client.search_model_versions(f"name = '{name}' and run_id = '{candidate.model_run_id}'")
    if existing:
        return str(min(int(v.version) for v in existing)), False
    tags = version_tags(candidate, metric, experiment)
    # Registering a run's MLflow 3 model exists only as MLflow's process-wide call: on our store.
    with _quiet_registration(), store.fluent(client.tracking_uri):
        version = mlflow.register_model(f"runs:/{candidate.model_run_id}/model", name, tags=tags)
    client.update_model_version(name, version.version, description=model_card(candidate, metric, experiment, name))
    return str(version.version), True


def promote(client: MlflowClient, name: str, *, metric: str = DEFAULT_METRIC, experiment: str | None = None,
            sweep: str | None = None, run_id: str | None = None, min_score: float | None = None) -> Promotion:
    check_name(name)
    chosen = select(client, metric=metric, experiment=experiment, sweep=sweep, run_id=run_id, min_score=min_score)
    experiment_name = client.get_experiment(chosen.experiment_id).name
    version, created = register(client, name, chosen, metric, experiment_name)
    champion = alias_version(client, name, CHAMPION)
    score = chosen.metrics.get(metric)
    if champion == version:
        return Promotion(name, version, chosen.run_id, metric, score, alias_version(client, name, PREVIOUS),
                         created, unchanged=True)
    # Previous first: if we stopped between the two calls, the old champion would still serve.
    if champion is not None:
        client.set_registered_model_alias(name, PREVIOUS, champion)
    client.set_registered_model_alias(name, CHAMPION, version)
    return Promotion(name, version, chosen.run_id, metric, score, champion, created)


def rollback(client: MlflowClient, name: str) -> Promotion:
    """Swap `champion` and `previous`: the version that served before serves again."""
    check_name(name)
    champion, previous = alias_version(client, name, CHAMPION), alias_version(client, name, PREVIOUS)
    if previous is None:
        what = "has no champion" if champion is None else f"has no previous champion (champion is version {champion})"
        raise PromotionError(f"model {name} {what}: nothing to roll back to")
    client.set_registered_model_alias(name, CHAMPION, previous)
    if champion is not None:
        client.set_registered_model_alias(name, PREVIOUS, champion)
    else:
        client.delete_registered_model_alias(name, PREVIOUS)
    version = client.get_model_version(name, previous)
    return Promotion(name, previous, version.run_id or "", version.tags.get("workbench.selected_by", ""),
                     None, champion, created=False)


@contextlib.contextmanager
def _quiet_registration():
    """`mlflow.register_model` prints progress lines and, for MLflow 3 LoggedModels, warns that it
    resolved runs:/ID/model to models:/m-...: both are noise in a command's output."""
    logger = logging.getLogger("mlflow.tracking._model_registry.fluent")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)
