"""The experiment registry: good specs load with defaults filled, bad ones fail with one line
naming the file and field, and a search space samples reproducibly."""

from __future__ import annotations

import optuna
import pytest
from conftest import TINY, workbench_cli, write_spec

from workbench import spec as S
from workbench.errors import SpecError


def test_every_shipped_spec_is_valid(repo_experiments):
    shipped = S.list_specs()
    assert any(p.stem == "quickstart" for p in shipped)
    for path in shipped:
        loaded = S.load(path)
        assert loaded.name == path.stem


def test_defaults_are_filled_and_dimensions_classified(tiny_spec):
    spec = S.load("tiny", ["learning_rate={low: 1.0e-4, high: 1.0e-2, log: true}", "backbone=[simple_cnn, vgg16]"])
    dims = spec.params.dims()
    assert isinstance(dims["backbone"], S.Choice) and dims["backbone"].values == ["simple_cnn", "vgg16"]
    assert isinstance(dims["learning_rate"], S.Range) and dims["learning_rate"].log
    assert isinstance(dims["optimizer"], S.Fixed) and dims["optimizer"].value == "adam"
    assert spec.objective.metric == "val_f1_macro" and spec.objective.direction == "maximize"
    config = S.single_config(spec)
    assert config.backbone == "simple_cnn"
    assert config.learning_rate == pytest.approx(1e-3)  # geometric middle of the log range
    assert config.seed == 7


@pytest.mark.parametrize("change, field, words", [
    ({"params": {"learning_rate": "fast"}}, "params.learning_rate", "valid number"),
    ({"params": {"backbone": "resnet50"}}, "params.backbone", "simple_cnn"),
    ({"params": {"backbone": "xception", "image_size": 64}}, "params.image_size", "xception's minimum of 71"),
    ({"params": {"epochs": {"low": 5, "high": 2}}}, "params.epochs", "must be below high"),
    ({"params": {"batch_size": []}}, "params.batch_size", "empty list"),
    ({"params": {"dropout": {"low": 0, "high": 0.5, "log": True}}}, "params.dropout", "log range"),
    ({"params": {"lr": 0.1}}, "params.lr", "unknown key (known: backbone, balance"),
    ({"params": {"learning_rat": 0.1}}, "params.learning_rat", "unknown key (did you mean 'learning_rate'?)"),
    ({"objective": {"metric": "val_loss", "direction": "maximize"}}, "objective", "val_loss is better when it goes min"),
    ({"split": {"train": 0.5, "val": 0.1, "test": 0.1}}, "split", "must be 1"),
    ({"dataset": {"task": "mask9"}}, "dataset.task", "mask2"),
    ({"trials": 0}, "trials", "greater than or equal to 1"),
    # A backbone's own setting is one value: the space must not depend on the backbone drawn.
    ({"backbone_params": {"simple_cnn": {"image_size": [32, 48]}}}, "backbone_params.simple_cnn.image_size",
     "one fixed value"),
    ({"backbone_params": {"simple_cnn": {"epochs": {"low": 1, "high": 2}}}}, "backbone_params.simple_cnn.epochs",
     "one fixed value"),
    # Class names become folder names: none may climb out of a folder.
    ({"dataset": {"source": "manifests", "manifests": [{"name": "m", "classes": {"a": "../up"}}]}},
     "dataset.manifests.0.classes.a", "is not a class name"),
])
def test_bad_spec_is_one_line_naming_file_and_field(workdir, change, field, words):
    raw = {**TINY, **{k: {**TINY.get(k, {}), **v} if isinstance(v, dict) else v for k, v in change.items()}}
    path = write_spec(workdir, raw, name="bad")
    with pytest.raises(SpecError) as caught:
        S.load(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: {field}:"), message
    assert words in message


def test_bad_yaml_and_unknown_spec(workdir):
    (workdir / "experiments" / "broken.yaml").write_text("params: {backbone: [simple_cnn\n")
    with pytest.raises(SpecError, match=r"broken.yaml: line \d+ not valid YAML"):
        S.load("broken")
    with pytest.raises(SpecError, match="no such spec"):
        S.load("does-not-exist")


def test_overrides_address_params_top_level_and_dotted_paths(tiny_spec):
    spec = S.load("tiny", ["epochs=1", "seed=3", "dataset.count=60", "image_size=[32, 48]"])
    assert spec.params.epochs.value == 1 and spec.seed == 3 and spec.dataset.count == 60
    assert spec.params.image_size.values == [32, 48]
    with pytest.raises(SpecError, match="--set colour: unknown key"):
        S.load("tiny", ["colour=red"])
    with pytest.raises(SpecError, match="expected key=value"):
        S.load("tiny", ["epochs"])


def test_a_study_recorded_before_the_transfer_rules_still_resumes(tiny_spec):
    # TINY's hash as workbench computed it before objective.holdout_source existed: a sweep
    # resumes only under the same hash, so keys added later must not move it until set.
    assert S.load("tiny").content_hash() == "b3509d047311695e"
    assert S.load("tiny", ["objective.leave_one_source_out=false"]).content_hash() == "b3509d047311695e"


def test_content_hash_ignores_trial_budget_but_not_the_space(tiny_spec):
    base = S.load("tiny")
    assert S.load("tiny", ["trials=50"]).content_hash() == base.content_hash()
    assert S.load("tiny", ["epochs=3"]).content_hash() != base.content_hash()


def test_sampling_is_reproducible_from_the_seed(tiny_spec):
    spec = S.load("tiny", ["backbone=[simple_cnn, mobilenet_v2]", "balance=[none, oversample, class_weight]",
                           "learning_rate={low: 1.0e-4, high: 1.0e-2, log: true}", "batch_size={low: 8, high: 64}"])

    def draw():
        study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=spec.seed), direction="maximize")
        configs = []
        for _ in range(6):
            trial = study.ask()
            configs.append(S.sample_config(spec, trial))
            study.tell(trial, 0.5)
        return configs

    first, second = draw(), draw()
    assert first == second
    assert all(1e-4 <= c.learning_rate <= 1e-2 and 8 <= c.batch_size <= 64 for c in first)
    assert len({(c.backbone, c.balance, c.learning_rate) for c in first}) > 1


def test_cli_bad_spec_exits_2_with_one_line_and_no_traceback(workdir):
    write_spec(workdir, {**TINY, "params": {**TINY["params"], "dropout": 1.5}}, name="bad")
    result = workbench_cli("specs", "validate", "bad", cwd=workdir)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "params.dropout" in lines[0] and "bad.yaml" in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_cli_lists_shows_and_validates(repo_experiments):
    workdir = repo_experiments.parent
    listed = workbench_cli("specs", "list", cwd=workdir)
    assert listed.returncode == 0 and "quickstart" in listed.stdout
    shown = workbench_cli("specs", "show", "quickstart", "--set", "epochs=1", cwd=workdir)
    assert shown.returncode == 0 and "epochs: 1" in shown.stdout and "optimizer: adam" in shown.stdout
    ok = workbench_cli("specs", "validate", "experiments/quickstart.yaml", cwd=workdir)
    assert ok.returncode == 0 and ": ok" in ok.stdout


def test_backbone_params_apply_only_to_their_backbone(tiny_spec):
    spec = S.load("tiny", ["backbone=[vgg16, xception]", "image_size=64",
                           "backbone_params={xception: {image_size: 96, pooling: flatten}, "
                           "vgg16: {schedule_options: {patience: 5}}}"])
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    seen = {}
    for _ in range(8):
        trial = study.ask()
        config = S.sample_config(spec, trial)
        seen[config.backbone] = config
        study.tell(trial, 0.0)
    assert seen["xception"].image_size == 96 and seen["xception"].pooling == "flatten"
    assert seen["vgg16"].image_size == 64 and seen["vgg16"].pooling == "gap"
    assert seen["vgg16"].schedule_options["patience"] == 5 and seen["xception"].schedule_options["patience"] == 3
    # Without its own size, xception would be below its minimum: the spec says so.
    with pytest.raises(SpecError, match="params.image_size: 64 is below xception's minimum"):
        S.load("tiny", ["backbone=[vgg16, xception]", "image_size=64"])


def test_yaml_on_and_off_switches_are_read_as_words(tiny_spec):
    spec = S.load("tiny", ["xla=off", "mixed_precision=on"])
    config = S.single_config(spec)
    assert (config.xla, config.mixed_precision) == ("off", "on")
