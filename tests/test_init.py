"""`workbench init`: folders of photos to a spec that trains, with a search that follows the photos,
and the next commands printed; README's walkthrough (init, sweep, promote) runs exactly as
written; refusals are one line and exit 2."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import yaml
from conftest import REPO, workbench_in_process
from mlflow.tracking import MlflowClient

from workbench import spec as S
from workbench.data import synth


def photos(folder: Path, seed: int, size: int, count: int, drop_masked: int = 0) -> Path:
    synth.generate(folder, "mask2", seed=seed, size=size, count=count)
    for file in sorted((folder / "with_mask").glob("*.jpg"))[:drop_masked]:
        file.unlink()
    return folder


def test_init_writes_a_spec_that_follows_the_photos_and_trains(workdir):
    shop = photos(workdir / "shop", seed=3, size=96, count=80, drop_masked=25)
    street = photos(workdir / "street photos", seed=4, size=72, count=40)
    done = workbench_in_process("init", "mine", str(shop), str(street), cwd=workdir)
    assert done.returncode == 0, done.stderr
    said = " ".join(done.stdout.split())
    assert "wrote " in said and "(imbalanced: balance is searched)" in said and "; 96 px;" in said, said
    for command in ("workbench sweep mine", "workbench compare --experiment mine --sweep latest",
                    "workbench promote --name mine --experiment mine", "workbench matrix mine"):
        assert f"  {command}" in done.stdout, done.stdout

    text = (workdir / "experiments" / "mine.yaml").read_text()
    assert text.startswith("# mine: written by `workbench init`") and "# the classes are imbalanced" in text
    raw = yaml.safe_load(text)
    assert [m["name"] for m in raw["dataset"]["manifests"]] == ["shop", "street_photos"]
    assert raw["params"]["balance"] == ["none", "oversample", "class_weight"]
    assert raw["params"]["image_size"] == 96       # most photos are 96 px (the median shorter side)
    assert raw["backbone_params"]["mobilenet_v2"]["weights"] == "none"   # nothing cached in the test's KERAS_HOME
    assert raw["enqueue"] == [{"backbone": "simple_cnn"}]   # the quick baseline first
    spec = S.load("mine", folder=workdir / "experiments")
    assert spec.params.dims().keys() >= {"backbone", "balance", "augmentation", "learning_rate"}

    # Balanced photos: no balance axis. One folder: no matrix.
    even = photos(workdir / "even", seed=5, size=40, count=40)
    single = workbench_in_process("init", "even", str(even), cwd=workdir)
    assert single.returncode == 0, single.stderr
    assert "workbench matrix" not in single.stdout
    assert yaml.safe_load((workdir / "experiments" / "even.yaml").read_text())["params"]["balance"] == "none"


def test_init_refusals_are_one_line_and_exit_2(workdir):
    shop = photos(workdir / "shop", seed=3, size=48, count=40)
    (workdir / "experiments" / "taken.yaml").write_text("name: taken\n")
    one_class = workdir / "one"
    shutil.copytree(shop / "with_mask", one_class / "with_mask")
    for args, says in [
        (("taken", str(shop)), "taken.yaml exists: choose another NAME, or pass --force"),
        (("bad name", str(shop)), "NAME 'bad name': use letters"),
        (("fresh", str(workdir / "missing")), "missing: not a folder of photos"),
        (("lonely", str(one_class)), "only one class"),
    ]:
        done = workbench_in_process("init", *args, cwd=workdir)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and says in lines[0], (args, done.stderr)
    assert (workdir / "experiments" / "taken.yaml").read_text() == "name: taken\n"
    assert not (workdir / "experiments" / "lonely.yaml").exists()


def walkthrough() -> list[list[str]]:
    """The commands of README's "Your own photos, start to finish", as a shell splits them."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("### Your own photos, start to finish"):]
    block = section[section.index("```bash\n") + len("```bash\n"):]
    block = block[:block.index("```")]
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]


def test_the_readme_walkthrough_runs_exactly_as_written(workdir):
    commands = walkthrough()
    assert [c[:2] for c in commands] == [["workbench", "init"], ["workbench", "sweep"], ["workbench", "promote"]]
    # The folders it names, small: 40 px photos make a 32 px spec.
    photos(workdir / "photos" / "shop", seed=3, size=40, count=70, drop_masked=10)
    photos(workdir / "photos" / "street", seed=4, size=40, count=40)
    outputs = []
    for command in commands:
        done = workbench_in_process(*command[1:], cwd=workdir)
        assert done.returncode == 0, (command, done.stdout, done.stderr)
        outputs.append(" ".join(done.stdout.split()))
    assert "wrote experiments/mine.yaml" in outputs[0].replace(str(workdir) + "/", ""), outputs[0]
    assert "[1/1] trial" in outputs[1] and "backbone=simple_cnn" in outputs[1], outputs[1]   # the baseline first
    client = MlflowClient(f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    champion = client.get_model_version_by_alias("mine", "champion")
    assert client.get_run(champion.run_id).data.tags["workbench.spec"] == "mine"
