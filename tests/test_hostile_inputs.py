"""Hostile specs and commands, through the real command line: each case of `hostile.SPEC_INPUTS`
and `hostile.COMMAND_INPUTS` answers with one line naming the key, file, URL or model at fault,
exit code 2 and no traceback (`--debug` shows one); and every fault and safe-default case of the
README table names the test that asserts it."""

from __future__ import annotations

import inspect
from pathlib import Path

import cv2
import hostile
import numpy as np
import pytest
from conftest import TINY, workbench_cli, workbench_in_process, write_spec


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """A working folder with an ingested two-class dataset `faces` and one face image."""
    from workbench.data import synth

    root = tmp_path_factory.mktemp("hostile-inputs")
    (root / "experiments").mkdir()
    synth.generate(root / "raw" / "faces", "mask2", seed=3, size=32, count=12)
    env = {"WORKBENCH_DATA": str(root / "data"), "WORKBENCH_RAW": str(root / "raw"), "MLFLOW_TRACKING_URI": ""}
    done = workbench_cli("data", "ingest", "folders", str(root / "raw" / "faces"), "--name", "faces", cwd=root, env=env)
    assert done.returncode == 0, done.stderr
    cv2.imwrite(str(root / "face.png"), np.full((32, 32, 3), 128, np.uint8))
    return root, env


def merged(change: dict | None) -> dict:
    raw = {**TINY, "name": "bad", "params": dict(TINY["params"])}
    for key, value in (change or {}).items():
        raw[key] = {**raw[key], **value} if key == "params" else value
    return raw


@pytest.mark.parametrize("case", hostile.SPEC_INPUTS + hostile.COMMAND_INPUTS, ids=lambda c: c.key)
def test_bad_input_is_one_line_and_exit_code_2(bench, case):
    root, env = bench
    write_spec(root, merged(case.spec), name="bad")
    args = [{"SPEC": "bad", "FACE": str(root / "face.png")}.get(a, a) for a in case.args]
    # In-process through the script's own entry point; the console script itself answers below.
    result = workbench_in_process(*args, cwd=root, env=env)
    assert result.returncode == 2, (case.key, result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), (case.key, result.stderr)
    assert case.says in lines[0], (case.key, lines[0])
    assert "hunter2" not in result.stdout + result.stderr


def test_the_console_script_answers_bad_input_in_one_line_too(bench):
    """The cases above run in-process; the installed script must say the same for a spec and a
    command case."""
    root, env = bench
    for case in (hostile.SPEC_INPUTS[0], next(c for c in hostile.COMMAND_INPUTS if c.key == "password_in_url")):
        write_spec(root, merged(case.spec), name="bad")
        args = [{"SPEC": "bad", "FACE": str(root / "face.png")}.get(a, a) for a in case.args]
        result = workbench_cli(*args, cwd=root, env=env)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and case.says in lines[0], (case.key, result.stderr)


def test_debug_shows_the_traceback(bench):
    root, env = bench
    write_spec(root, merged({"params": {"learning_rat": 0.1}}), name="bad")
    result = workbench_cli("--debug", "specs", "validate", "bad", cwd=root, env=env)
    assert result.returncode != 0 and "Traceback" in result.stderr and "SpecError" in result.stderr


# Each fault and safe-default row of the README table, and the test that asserts it.
ASSERTED_BY = {
    "read_only_store": ("test_faults.py", "test_a_store_that_turns_read_only_fails_the_trial_and_the_sweep_goes_on"),
    "concurrent_sweeps": ("test_faults.py", "test_two_sweeps_of_different_specs_at_once_share_one_store"),
    "corrupted_db": ("test_faults.py", "test_a_corrupted_database_is_one_line_and_never_replaced"),
    "killed_worker": ("test_sweep_survive.py",
                      "test_a_killed_sweep_resumes_without_repeats_and_retries_the_killed_configuration"),
    "diverging_trial": ("test_sweep_survive.py", "test_a_diverging_trial_fails_with_its_reason_and_the_sweep_completes"),
    "loopback": ("test_faults.py", "test_servers_bind_loopback_unless_told_and_warn_when_exposed"),
    "safe_mode": ("test_faults.py", "test_models_load_in_safe_mode_and_only_from_the_configured_store"),
    "secrets": ("test_faults.py", "test_nothing_secret_from_the_environment_reaches_a_run"),
}


def test_every_fault_and_default_row_names_a_test_that_exists():
    keys = [c.key for c in hostile.FAULT_CASES + hostile.DEFAULT_CASES]
    assert sorted(keys) == sorted(ASSERTED_BY)
    here = Path(inspect.getfile(hostile)).parent
    for module, function in ASSERTED_BY.values():
        assert f"def {function}(" in (here / module).read_text(), (module, function)
