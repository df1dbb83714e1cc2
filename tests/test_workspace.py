"""The library beneath the commands: a workspace is passed by hand, so two of them live in one
process without seeing each other; the registry's entries carry their behaviour, so one added in
one place trains end to end; and the package's stages import one way only."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import mlflow
import pytest
from conftest import TINY

import workbench as wb
from workbench.errors import WorkbenchError
from workbench.spec import registry

REPO = Path(__file__).resolve().parents[1]
ONE_EPOCH = {**TINY, "params": {**TINY["params"], "epochs": 1}}


def test_two_workspaces_in_one_process_never_see_each_others_runs(tmp_path, shared_data):
    # TensorFlow sets variables of its own when first imported (KMP_*, TF2_BEHAVIOR, ...): not
    # workbench's doing, and already done when other tests ran first in this process.
    import tensorflow  # noqa: F401

    env_before, uri_before = dict(os.environ), mlflow.get_tracking_uri()
    # Both read the session's generated faces (the data root); each has its own store and reports.
    a = wb.Workspace(tmp_path / "a", data=shared_data, env={})
    b = wb.Workspace(tmp_path / "b", data=shared_data, env={})
    first = a.run({**ONE_EPOCH, "name": "alpha"})
    second = b.run({**ONE_EPOCH, "name": "beta", "seed": 8})

    assert [r.info.run_id for r in a.client().search_runs([a.client().get_experiment_by_name("alpha").experiment_id])] \
        == [first.run_id]
    assert a.client().get_experiment_by_name("beta") is None
    assert b.client().get_experiment_by_name("alpha") is None
    assert list(b.compare(experiment="beta").table["run_id"]) == [second.run_id]
    with pytest.raises(WorkbenchError, match="no such experiment"):
        a.compare(experiment="beta")
    # Each run's model sits in its own workspace's store, and loads from there only.
    from workbench.ship import predict

    assert predict.load_model(f"runs:/{first.run_id}/model", a.tracking_uri).run_id == first.run_id
    with pytest.raises(WorkbenchError, match="cannot load it"):
        predict.load_model(f"runs:/{first.run_id}/model", b.tracking_uri)
    assert (tmp_path / "a" / "mlruns" / "mlflow.db").is_file() and (tmp_path / "b" / "mlruns" / "mlflow.db").is_file()
    # Nothing process-wide was changed on the way.
    assert dict(os.environ) == env_before and mlflow.get_tracking_uri() == uri_before


def test_a_workspace_takes_flags_then_environment_then_defaults(tmp_path):
    env = {"WORKBENCH_DATA": str(tmp_path / "shared"), "MLFLOW_TRACKING_URI": "http://tracking:5000"}
    ws = wb.Workspace(tmp_path, storage="postgresql://u:pw@db/optuna", env=env)
    assert ws.data == tmp_path / "shared" and ws.raw == tmp_path / "shared" / "raw"   # environment
    assert ws.tracking_uri == "http://tracking:5000"
    assert ws.storage == "postgresql://u:pw@db/optuna"                              # flag over default
    assert ws.experiments == tmp_path / "experiments" and ws.reports == tmp_path / "reports"   # defaults
    assert wb.Workspace(tmp_path, tracking_uri="sqlite:///x.db", env=env).tracking_uri == "sqlite:///x.db"
    # A worker process gets every place absolute, the store URLs in its environment (never argv).
    child = ws.child_environment({})
    assert child["WORKBENCH_STORAGE"] == "postgresql://u:pw@db/optuna"
    assert child["WORKBENCH_EXPERIMENTS"] == str((tmp_path / "experiments").resolve())
    assert wb.Workspace(tmp_path / "elsewhere", env=child).experiments == (tmp_path / "experiments").resolve()


@pytest.fixture
def registry_entries():
    """Registry tables as they were, whatever a test adds."""
    saved = {axis: dict(table) for axis, table in registry.TABLES.items()}
    yield
    for axis, table in registry.TABLES.items():
        table.clear()
        table.update(saved[axis])


def test_an_entry_registered_in_one_place_trains_end_to_end(tmp_path, shared_data, registry_entries):
    def halve(options, base_lr, epochs, first_epoch):
        import keras

        return [keras.callbacks.LearningRateScheduler(lambda epoch, lr: base_lr / 2 ** (epoch - first_epoch))]

    def five_each(train, classes, target, seed, copies):
        return registry.cut(train, 5, seed), None

    spec = {**TINY, "name": "registered", "params": {**TINY["params"], "epochs": 3, "schedule": "halve",
                                                     "balance": "five_each"}}
    ws = wb.Workspace(tmp_path, data=shared_data, env={})
    with pytest.raises(WorkbenchError, match="params.balance: Input should be 'none'.*got 'five_each'"):
        ws.spec(spec)   # unknown until registered: a name without behaviour is refused
    registry.register("schedule", "halve", registry.Schedule("halve the rate every epoch", halve))
    registry.register("balance", "five_each", registry.Balance("five training images a class", five_each))
    outcome = ws.run(spec)

    client = ws.client()
    rates = [m.value for m in sorted(client.get_metric_history(outcome.run_id, "lr"), key=lambda m: m.step)]
    assert rates == pytest.approx([0.003, 0.0015, 0.00075])
    assert outcome.metrics["train_images"] == 5 * 3   # every class has more than five
    with pytest.raises(TypeError, match="a schedule entry is a Schedule"):
        registry.register("schedule", "wrong", registry.Optimizer("not a schedule", lambda lr: None))


# --- the shape of the package ----------------------------------------------------------------------
# Lower layers never import higher ones; `cli` and `api` sit on top, `workbench/__init__` re-exports.
LAYERS = [("errors", "vocabulary", "workspace"), ("spec",), ("data",), ("measure",), ("model",), ("track",),
          ("ship",), ("analysis",), ("api",), ("cli",)]


def _layer(module: str) -> int:
    part = module.split(".")[1] if module.count(".") else ""
    return next(i for i, names in enumerate(LAYERS) if part in names)


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("workbench"):
            found |= {f"{node.module}.{a.name}" if node.module == "workbench" else node.module for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("workbench")}
    return {name for name in found if name.count(".")}


def test_stages_import_only_the_stages_below_them():
    package = REPO / "workbench"
    wrong = []
    for path in sorted(package.rglob("*.py")):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        if module == "workbench.__init__":
            continue
        mine = _layer(module)
        wrong += [f"{module} -> {name}" for name in _imports(path) if _layer(name) > mine]
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)
    top_level = sorted(p.stem for p in package.glob("*.py") if p.stem != "__init__")
    assert top_level == ["api", "errors", "vocabulary", "workspace"]


def test_no_function_is_longer_than_sixty_lines():
    long = []
    for path in sorted((REPO / "workbench").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1})")
    assert not long, "\n".join(long)
