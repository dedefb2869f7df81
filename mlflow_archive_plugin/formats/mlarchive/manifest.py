"""``manifest.json``: its fields written from a model on export (name, version, framework,
inputs and outputs), its check against the spec on import, and a hand-written package's
entries turned into registry names and ``mlsteam.*`` tags."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from mlflow_archive_plugin.errors import CorruptArchiveError
from mlflow_archive_plugin.formats.mlsteam import load as load_hook
from mlflow_archive_plugin.snapshot import Snapshot
from mlflow_archive_plugin.trust.parsing import load_json

MANIFEST_NAME = "manifest.json"
MODELS_DIR = "models"
HOOKS_DIR = "hooks"
CLEANUP_POLICIES = load_hook.CLEANUP_POLICIES
TAG_PREFIX = "mlsteam."
MAX_MANIFEST_BYTES = 16 * 1024**2
TAG_VALUE_MAX = 5000
_LIGHTNING_PACKAGES = {"lightning", "pytorch-lightning"}
# MLflow refuses these in a registered model's name and in a LoggedModel's; the manifest's
# name is free text.
_REGISTRY_REFUSED = re.compile(r"[/:]+")
_LOGGED_MODEL_REFUSED = re.compile(r"[/:.%\"']+")
# MLflow's column types as Python annotations; tensors are numpy arrays.
_COLUMN_TYPES = {
    "boolean": "bool", "integer": "int", "long": "int", "float": "float", "double": "float",
    "string": "str", "binary": "bytes", "datetime": "datetime.datetime",
}


# --------------------------------------------------------------------------- manifest fields


def framework_of(mlmodel: dict[str, Any], model_dir: Path | None = None) -> str:
    """The manifest's ``framework`` for an MLflow model: the spec's name for PyTorch
    (``pytorch.lightning`` when Lightning is a requirement), TensorFlow and Keras, else the
    MLflow flavor's own name (``sklearn``, ``xgboost``; ``python_function`` for a custom
    pyfunc)."""
    flavors = mlmodel.get("flavors") or {}
    if "pytorch" in flavors:
        return "pytorch.lightning" if _requires_lightning(model_dir) else "pytorch"
    if "keras" in flavors:
        return "tensorflow.keras"
    if "tensorflow" in flavors:
        options = flavors["tensorflow"] if isinstance(flavors["tensorflow"], dict) else {}
        return "tensorflow.keras" if options.get("model_type") == "keras" else "tensorflow"
    others = [name for name in flavors if name != "python_function"]
    return others[0] if others else "python_function"


def _requires_lightning(model_dir: Path | None) -> bool:
    requirements = model_dir / "requirements.txt" if model_dir is not None else None
    if requirements is None or not requirements.is_file():
        return False
    for line in requirements.read_text(encoding="utf-8", errors="replace").splitlines():
        package = re.split(r"[\s=<>!~;\[@]", line.strip(), maxsplit=1)[0]
        if package.lower().replace("_", "-") in _LIGHTNING_PACKAGES:
            return True
    return False


def annotation(spec: dict[str, Any]) -> str:
    """A Python type annotation for one entry of an MLflow signature."""
    kind = spec.get("type")
    if kind == "tensor":
        return "numpy.ndarray"
    if kind == "array":
        return f"list[{annotation(spec.get('items') or {})}]"
    if kind == "map":
        return f"dict[str, {annotation(spec.get('values') or {})}]"
    if kind == "object":
        return "dict[str, typing.Any]"
    return _COLUMN_TYPES.get(str(kind), "typing.Any")


def signature_fields(mlmodel: dict[str, Any]) -> tuple[list | None, list | None]:
    """The manifest's ``inputs`` and ``outputs`` from the MLflow signature, if it has one."""
    signature = mlmodel.get("signature") or {}
    return (_fields(signature.get("inputs"), "inputs"),
            _fields(signature.get("outputs"), "outputs"))


def _fields(raw: Any, default_name: str) -> list[dict[str, str]] | None:
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return None
    if not isinstance(raw, list) or not raw:
        return None
    fields = []
    for index, spec in enumerate(raw):
        spec = spec if isinstance(spec, dict) else {}
        name = spec.get("name") or (default_name if len(raw) == 1 else f"{default_name}_{index}")
        kind = annotation(spec)
        if spec.get("required") is False:
            kind = f"typing.Optional[{kind}]"
        fields.append({"name": str(name), "type": kind})
    return fields


def member_tags(member: Snapshot) -> dict[str, str]:
    return dict(member.model_version.tags) if member.model_version else {}


def _tag_json(tags: dict[str, str], key: str) -> Any:
    try:
        return json.loads(tags[TAG_PREFIX + key])
    except (KeyError, ValueError):
        return None


def manifest_name(member: Snapshot) -> str:
    """The model's name in the manifest: the original one of an imported MLSteam package."""
    return member_tags(member).get(f"{TAG_PREFIX}name") or member.display_name


def manifest_version(member: Snapshot) -> str:
    """The model's version in the manifest: the original one of an imported MLSteam package,
    else the registered version (or the LoggedModel's id)."""
    tags = member_tags(member)
    if tags.get(f"{TAG_PREFIX}version"):
        return tags[f"{TAG_PREFIX}version"]
    if member.model_version is not None:
        return str(member.model_version.version)
    if member.logged_model is not None and member.logged_model.model_id:
        return member.logged_model.model_id
    return "1"


def manifest_framework(member: Snapshot) -> str:
    """The manifest's framework: an imported MLSteam package's own, else from the flavors."""
    return member_tags(member).get(f"{TAG_PREFIX}framework") or framework_of(member.mlmodel,
                                                                         member.model_dir)


def manifest_entry(member: Snapshot, encrypted: bool, options: dict[str, Any]) -> dict[str, Any]:
    """One ``models[]`` entry of ``manifest.json``."""
    tags = member_tags(member)
    inputs, outputs = signature_fields(member.mlmodel)
    description = (member.model_version.description if member.model_version else None) or (
        member.registered_model.description if member.registered_model else None)
    return {
        "name": manifest_name(member),
        "version": manifest_version(member),
        "description": description,
        "framework": manifest_framework(member),
        "inputs": _tag_json(tags, "inputs") or inputs,
        "outputs": _tag_json(tags, "outputs") or outputs,
        "enc_model_cleanup": options["cleanup"] if encrypted else None,
        "enc_model_cleanup_files": list(options["cleanup_files"]) if encrypted else None,
    }



# --------------------------------------------------------------------------- validation


def manifest_problems(document: Any) -> list[str]:
    """What makes a parsed ``manifest.json`` unusable, one line each."""
    if not isinstance(document, dict):
        return [f"{MANIFEST_NAME} is not a JSON object; write it as the spec shows"]
    models = document.get("models")
    if not isinstance(models, list) or not models:
        return [f"{MANIFEST_NAME} has no 'models' list; the spec needs models[] with name, "
                "version and framework"]
    problems = []
    for index, entry in enumerate(models):
        where = f"{MANIFEST_NAME} models[{index}]"
        if not isinstance(entry, dict):
            problems.append(f"{where} is not an object")
            continue
        for key in ("name", "framework"):
            if not isinstance(entry.get(key), str) or not entry[key].strip():
                problems.append(f"{where} lacks '{key}' (text), which the spec requires")
        version = entry.get("version")
        if isinstance(version, bool) or not isinstance(version, str | int) or version == "":
            problems.append(f"{where} lacks 'version' (text), which the spec requires")
        if entry.get("description") is not None and not isinstance(entry["description"], str):
            problems.append(f"{where} 'description' is not text")
        for key in ("inputs", "outputs"):
            problems.extend(_io_problems(entry.get(key), f"{where} '{key}'"))
        problems.extend(_cleanup_problems(entry, where))
    return problems


def _io_problems(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(
        isinstance(item, dict) and isinstance(item.get("name"), str)
        and isinstance(item.get("type"), str) for item in value
    ):
        return [f"{where} is not a list of {{name, type}} objects with text values"]
    return []


def _cleanup_problems(entry: dict[str, Any], where: str) -> list[str]:
    policy = entry.get("enc_model_cleanup")
    problems = []
    if policy is not None and policy not in CLEANUP_POLICIES:
        problems.append(f"{where} 'enc_model_cleanup' {policy!r} is not one of: "
                        f"{', '.join(CLEANUP_POLICIES)}")
    patterns = entry.get("enc_model_cleanup_files")
    if patterns is None:
        return problems
    if not isinstance(patterns, list):
        return [*problems, f"{where} 'enc_model_cleanup_files' is not a list of patterns"]
    for pattern in patterns:
        try:
            load_hook.check_pattern(pattern)
        except load_hook.PackageError as exc:
            problems.append(f"{where}: {exc}")
    return problems


def read_manifest(root: Path) -> dict[str, Any]:
    """``manifest.json``, checked against the spec; any defect is a one-line error."""
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise CorruptArchiveError(f"the .mlarchive has no {MANIFEST_NAME}, which the spec "
                                  "requires at its root; add one listing its models")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise CorruptArchiveError(f"{MANIFEST_NAME} is larger than {MAX_MANIFEST_BYTES} bytes, "
                                  "which no manifest needs")
    document = load_json(path.read_bytes(), what=MANIFEST_NAME, max_bytes=MAX_MANIFEST_BYTES)
    raise_first(manifest_problems(document))
    return document


def raise_first(problems: list[str]) -> None:
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise CorruptArchiveError(problems[0] + more)


# --------------------------------------------------------------------------- hand-written packages


def registry_name(name: str) -> str:
    """The manifest's free-text name made a name MLflow's registry accepts."""
    cleaned = _REGISTRY_REFUSED.sub("_", name).strip()
    if not cleaned:
        raise CorruptArchiveError(f"{MANIFEST_NAME} names a model {name!r}, which cannot be a "
                                  "registered model's name; import it with --name")
    return cleaned


def logged_model_name(name: str) -> str:
    """The manifest's name made a name MLflow accepts for a LoggedModel."""
    return _LOGGED_MODEL_REFUSED.sub("_", registry_name(name))


def spec_tags(entry: dict[str, Any], root: Path) -> dict[str, str]:
    """A manifest entry's fields as ``mlsteam.*`` version tags, and the hooks it came with."""
    tags = {f"{TAG_PREFIX}name": str(entry["name"]), f"{TAG_PREFIX}version": str(entry["version"]),
            f"{TAG_PREFIX}framework": str(entry["framework"])}
    for key in ("inputs", "outputs", "enc_model_cleanup_files"):
        if entry.get(key) is not None:
            tags[TAG_PREFIX + key] = json.dumps(entry[key])[:TAG_VALUE_MAX]
    if entry.get("enc_model_cleanup"):
        tags[f"{TAG_PREFIX}enc_model_cleanup"] = str(entry["enc_model_cleanup"])
    hooks = sorted(path.name for path in (root / HOOKS_DIR).iterdir() if path.is_file())
    tags[f"{TAG_PREFIX}hooks"] = ", ".join(hooks)[:TAG_VALUE_MAX]
    return tags
