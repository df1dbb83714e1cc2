"""Promotion: from tracked runs to a named model that applications load as `models:/NAME@champion`.

`promote` picks the best finished run of a sweep or an experiment by one metric (by default the
validation objective the sweep optimised, never a test figure, so the test figures it reports
stay honest), or takes the run the user names. Before anything is registered, the gate
(`ship.gate`) compares it with the current champion on their shared leak-free test images and
refuses a candidate that is significantly worse (or, with `--require-better`, not significantly
better) unless `--force`. Then it registers the model in the MLflow Model Registry with the run's
figures and the gate's evidence as tags and the model card (`ship.card`) as its description,
and points the alias `champion` at it, keeping the version it replaces as `previous`;
`rollback` swaps the two back. Aliases, not the deprecated stages, carry the roles. A run is
refused, with one line saying why, when it did not finish, has no model or scores under the
bar; promoting the same run twice reuses its version. The choice of a run is a pure function of
the runs' values; only the edges talk to MLflow.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import re
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from workbench import vocabulary
from workbench.errors import WorkbenchError
from workbench.ship import card, gate
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
    verdict: gate.Verdict | None = None   # the gate's comparison with the champion it replaced


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
        elif c.state == "interrupted":
            key = "interrupted"
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


# --- registry tags -----------------------------------------------------------------------------------

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


def register(client: MlflowClient, name: str, candidate: Candidate, metric: str, experiment: str,
             verdict: gate.Verdict | None = None) -> tuple[str, bool]:
    """The version holding this run's model (an existing one when the run was registered before),
    its tags (the run's figures and the gate's evidence) and its model card: the version's
    description, and `model_card.md` / `model_card.json` on the run."""
    import mlflow

    existing = client.search_model_versions(f"name = '{name}' and run_id = '{candidate.model_run_id}'")
    tags = {**version_tags(candidate, metric, experiment), **(verdict.tags() if verdict else {})}
    if existing:
        version, created = str(min(int(v.version) for v in existing)), False
        for key, value in (verdict.tags() if verdict else {}).items():
            client.set_model_version_tag(name, version, key, value)
    else:
        # Registering a run's MLflow 3 model exists only as MLflow's process-wide call: on our store.
        with _quiet_registration(), store.fluent(client.tracking_uri):
            version, created = str(mlflow.register_model(f"runs:/{candidate.model_run_id}/model", name,
                                                         tags=tags).version), True
    facts = card.gather(client, candidate, name=name, version=version, experiment=experiment, metric=metric,
                        gate=verdict.tags() if verdict else None)
    markdown = card.card(facts)
    client.update_model_version(name, version, description=card.description(markdown, candidate.run_id))
    with tempfile.TemporaryDirectory() as tmp:
        card.write(facts, Path(tmp))
        client.log_artifacts(candidate.run_id, tmp)
    return version, created


def judge(client: MlflowClient, name: str, chosen: Candidate, champion: str | None, *, require_better: bool,
          force: bool) -> gate.Verdict | None:
    """The gate's verdict on `chosen` against the current champion (None: no champion, or it is
    the champion already); raises the one-line refusal unless `force`."""
    if champion is None:
        return None
    held = client.get_model_version(name, champion)
    if held.run_id == chosen.model_run_id:
        return None
    try:
        champion_classes = held.tags.get("workbench.classes") or \
            client.get_run(held.run_id).data.params.get(vocabulary.CLASSES, "")
    except MlflowException:
        champion_classes = ""
    verdict = gate.judge(client, chosen.model_run_id, chosen.params.get(vocabulary.CLASSES, ""), champion,
                         held.run_id, champion_classes)
    why = None
    if verdict.decision == "incomparable":
        why = f"cannot compare with champion version {champion}: {verdict.reason}"
    elif verdict.refuses:
        why = f"run {chosen.run_id} is significantly worse than champion version {champion} ({verdict.decision}): " \
              f"{verdict.summary()}"
    elif require_better and verdict.decision != "better":
        why = f"--require-better: run {chosen.run_id} is not significantly better than champion version {champion} " \
              f"({verdict.decision}): {verdict.summary()}"
    if why and not force:
        raise PromotionError(f"not promoted, {why}; the champion stays (--force overrides, and is recorded)")
    return replace(verdict, forced=bool(why))


def promote(client: MlflowClient, name: str, *, metric: str = DEFAULT_METRIC, experiment: str | None = None,
            sweep: str | None = None, run_id: str | None = None, min_score: float | None = None,
            require_better: bool = False, force: bool = False) -> Promotion:
    """Choose a run, pass it through the gate against the current champion, register it and make
    it the champion. Every refusal happens before the registry is touched."""
    check_name(name)
    chosen = select(client, metric=metric, experiment=experiment, sweep=sweep, run_id=run_id, min_score=min_score)
    experiment_name = client.get_experiment(chosen.experiment_id).name
    champion = alias_version(client, name, CHAMPION)
    verdict = judge(client, name, chosen, champion, require_better=require_better, force=force)
    version, created = register(client, name, chosen, metric, experiment_name, verdict)
    score = chosen.metrics.get(metric)
    if champion == version:
        return Promotion(name, version, chosen.run_id, metric, score, alias_version(client, name, PREVIOUS),
                         created, unchanged=True)
    # Previous first: if we stopped between the two calls, the old champion would still serve.
    if champion is not None:
        client.set_registered_model_alias(name, PREVIOUS, champion)
    client.set_registered_model_alias(name, CHAMPION, version)
    return Promotion(name, version, chosen.run_id, metric, score, champion, created, verdict=verdict)


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
