"""Loading specs: a name under a workspace's experiments folder or a path, read as YAML, with
`--set key=value` overrides applied, validated into a `Spec`; and `smoke`, the same study at toy
scale. Every problem is one `SpecError` line naming the file and the field."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml
from pydantic import ValidationError

from workbench.errors import SpecError
from workbench.spec.registry import MIN_IMAGE_SIZE
from workbench.spec.schema import Spec, describe_validation_error
from workbench.spec.space import Params, _values

# --- loading -------------------------------------------------------------------------------------

DEFAULT_FOLDER = Path("experiments")


def resolve_path(spec: str | Path, folder: Path = DEFAULT_FOLDER) -> Path:
    """A spec argument is a path, or a name under `folder` (a workspace's experiments/, with or
    without .yaml)."""
    candidate = Path(spec)
    if candidate.is_file():
        return candidate
    for path in (folder / f"{spec}.yaml", folder / f"{spec}.yml"):
        if path.is_file():
            return path
    known = ", ".join(p.stem for p in list_specs(folder)) or "none"
    raise SpecError(f"{spec}: no such spec file or name under {folder}/ (known: {known})")


def list_specs(folder: Path = DEFAULT_FOLDER) -> list[Path]:
    return sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]) if folder.is_dir() else []


def load(spec: str | Path | dict | Spec, overrides: list[str] | None = None, folder: Path = DEFAULT_FOLDER) -> Spec:
    """Read, override (`key=value` strings as given to --set) and validate one spec: a name under
    `folder`, a path, a mapping of keys (as a YAML file would hold) or a `Spec`."""
    if isinstance(spec, (dict, Spec)):
        raw = copy.deepcopy(spec) if isinstance(spec, dict) else spec.model_dump(mode="json", exclude_none=True)
        source = f"spec {raw.get('name', '<dict>')}"
    else:
        path = resolve_path(spec, folder)
        raw, source = _read(path), str(path)
        raw.setdefault("name", path.stem)
    for item in overrides or []:
        apply_override(raw, item)
    return validate(raw, source=source)


def _read(path: Path) -> dict:
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise SpecError(f"{path}:{where} not valid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a spec is a mapping of keys, got {type(raw).__name__}")
    return raw


def validate(raw: dict, source: str = "<spec>") -> Spec:
    try:
        return Spec.model_validate(raw)
    except ValidationError as err:
        raise SpecError(f"{source}: {describe_validation_error(err)}") from None


def apply_override(raw: dict, item: str) -> None:
    """Apply one `--set key=value`: bare param names address `params`, dotted keys any field."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise SpecError(f"--set {item}: expected key=value")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        raise SpecError(f"--set {item}: value is not valid YAML") from None
    if "." in key:
        path = key.split(".")
        if path[0] in Params.model_fields:  # schedule_options.patience means params.schedule_options...
            path = ["params", *path]
    elif key in Params.model_fields:
        path = ["params", key]
    elif key in Spec.model_fields:
        path = [key]
    else:
        raise SpecError(f"--set {key}: unknown key (params: {', '.join(Params.model_fields)}; "
                        f"top level: {', '.join(Spec.model_fields)}; or a dotted path)")
    node = raw
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise SpecError(f"--set {key}: {part} is not a mapping")
    node[path[-1]] = value


# --- smoke runs ------------------------------------------------------------------------------------

SMOKE_IMAGE_SIZE = 32
# What a smoke run fixes, everywhere (params and every backbone's own values): one short epoch,
# no pretrained download, no second phase. Batches of 32: run eagerly, a step costs about the
# same at 8 or 32 tiny images (DenseNet169's 600 layers of Python), so fewer steps is faster.
SMOKE_PARAMS = {"epochs": 1, "fine_tune_epochs": 0, "weights": "none", "early_stopping": 0, "batch_size": 32,
                "eager": True}
SMOKE_TRIALS = 2
SMOKE_BALANCE_TARGET = 24


def smoke(spec: Spec) -> Spec:
    """The same study at toy scale, to run in minutes on a CPU: tiny images (each backbone's
    minimum where that is larger), one epoch run eagerly (no graph to trace), two trials, no
    ImageNet weights, one repeat, a small generated dataset (synthetic faces, or trees in each
    named dataset's own layout under data/smoke/); the search space, the class mapping, the split
    rules, the enqueued published configuration and the shipping step stay. Its runs go to
    `<name>-smoke`."""
    raw = spec.model_dump(mode="json", exclude_none=True)
    raw["name"] = f"{spec.name}-smoke"
    raw.update(trials=SMOKE_TRIALS, repeats=1)
    if raw["dataset"]["source"] == "synthetic":
        raw["dataset"].update(count=min(spec.dataset.count, 150), size=SMOKE_IMAGE_SIZE)
    for source in raw["dataset"].get("manifests", []):
        if source.get("path"):
            # Generated under the smoke run's own raw root, never inside a folder named absolutely.
            source["path"] = Path(source["path"]).name
    params = raw["params"]
    fixed = {**SMOKE_PARAMS, "image_size": SMOKE_IMAGE_SIZE}
    target = params.get("balance_target", 0)
    if isinstance(target, int) and target > SMOKE_BALANCE_TARGET:
        fixed["balance_target"] = SMOKE_BALANCE_TARGET
    params.update(fixed)
    for backbone in _values(spec.params.backbone):
        own = raw.setdefault("backbone_params", {}).setdefault(backbone, {})
        own.update({k: v for k, v in fixed.items() if k != "image_size"},
                   image_size=max(SMOKE_IMAGE_SIZE, MIN_IMAGE_SIZE[backbone]))
    # The published configuration is still tried first, without the keys smoke has fixed.
    raw["enqueue"] = [{k: v for k, v in point.items() if k not in fixed} for point in spec.enqueue]
    raw["enqueue"] = [point for point in raw["enqueue"] if point]
    if "ship" in raw:
        raw["ship"]["name"] = f"{spec.ship.name}-smoke"
    return validate(raw, source=f"{spec.name} (--smoke)")
