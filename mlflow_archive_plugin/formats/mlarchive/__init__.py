"""MLSteam ``.mlarchive`` (spec v2023.1): one or several MLflow models MLSteam loads through hooks.

An exported package is a zip holding ``manifest.json`` (first), the MLflow model under
``models/`` (each of several under ``models/<slug>/``), ``hooks/load.py`` and
``hooks/predict.py`` (which load and predict with ``mlflow.pyfunc``), and the shared metadata
document and checksums. Encrypted packages hold each model file as ``<file>.enc`` (see
:mod:`mlflow_archive_plugin.trust.crypto`). A package written by hand to the spec has no metadata
document: an MLflow model under ``models/`` is registered with the manifest's fields as
``mlsteam.*`` tags and its hook files as ``mlsteam.hook.<path>`` tags, which a later export
writes back in place of the generated hooks; anything else is kept whole as an
archive-backed version. Hooks are parsed with ``ast`` to check they define their function,
and never run or imported here.
"""

from __future__ import annotations

import ast
import json
import pprint
import re
from pathlib import Path
from typing import Any

from mlflow_archive_plugin.errors import CorruptArchiveError, UnsupportedError
from mlflow_archive_plugin.formats.base import Entry, Layout, read_metadata
from mlflow_archive_plugin.formats.mlflow import MlflowLayout, model_files
from mlflow_archive_plugin.formats.mlsteam import load as load_hook
from mlflow_archive_plugin.formats.mlsteam import predict as predict_hook
from mlflow_archive_plugin.snapshot import (
    METADATA_NAME,
    LoggedModelInfo,
    ModelVersionInfo,
    RegisteredModelInfo,
    Snapshot,
)
from mlflow_archive_plugin.trust import crypto
from mlflow_archive_plugin.trust.parsing import load_json, load_mlmodel, parse_python

MANIFEST_NAME = "manifest.json"
MODELS_DIR = "models"
HOOKS_DIR = "hooks"
# Each hook the spec names, with the function MLSteam's SDK calls in it.
HOOK_FUNCTIONS = {"load.py": "load", "predict.py": "predict"}
SPEC_FRAMEWORKS = ("tensorflow", "tensorflow.keras", "pytorch", "pytorch.lightning")
CLEANUP_POLICIES = load_hook.CLEANUP_POLICIES
DEFAULT_CLEANUP = "after-load"
DEFAULT_CLEANUP_FILES = load_hook.DEFAULT_CLEANUP_FILES
TAG_PREFIX = "mlsteam."
# A hand-written package's hook file, by its path under hooks/, holding the file's text.
HOOK_TAG_PREFIX = f"{TAG_PREFIX}hook."
# The spec's name for an encrypted package.
ENCRYPTED_STEM = "model-enc"
OPTIONS = ("strict", "cleanup", "cleanup_files")
MAX_MANIFEST_BYTES = 16 * 1024**2
_LIGHTNING_PACKAGES = {"lightning", "pytorch-lightning"}
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
# MLflow refuses these in a registered model's name and in a LoggedModel's; the manifest's
# name is free text.
_REGISTRY_REFUSED = re.compile(r"[/:]+")
_LOGGED_MODEL_REFUSED = re.compile(r"[/:.%\"']+")
_TAG_VALUE_MAX = 5000
# MLflow keeps a model version tag value of up to 100,000 characters and a key of up to 250.
_HOOK_TAG_VALUE_MAX = 100_000
_TAG_KEY_MAX = 250
# What a tag key may hold on any MLflow server (one on Windows refuses ':').
_HOOK_PATH = re.compile(r"^[A-Za-z0-9_.\- /]+$")
# MLflow's column types as Python annotations; tensors are numpy arrays.
_COLUMN_TYPES = {
    "boolean": "bool", "integer": "int", "long": "int", "float": "float", "double": "float",
    "string": "str", "binary": "bytes", "datetime": "datetime.datetime",
}
_CONFIG_LINE = re.compile(r"^CONFIG = .*$", re.MULTILINE)


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


def _tags(member: Snapshot) -> dict[str, str]:
    return dict(member.model_version.tags) if member.model_version else {}


def _tag_json(tags: dict[str, str], key: str) -> Any:
    try:
        return json.loads(tags[TAG_PREFIX + key])
    except (KeyError, ValueError):
        return None


def manifest_name(member: Snapshot) -> str:
    """The model's name in the manifest: the original one of an imported MLSteam package."""
    return _tags(member).get(f"{TAG_PREFIX}name") or member.display_name


def manifest_version(member: Snapshot) -> str:
    """The model's version in the manifest: the original one of an imported MLSteam package,
    else the registered version (or the LoggedModel's id)."""
    tags = _tags(member)
    if tags.get(f"{TAG_PREFIX}version"):
        return tags[f"{TAG_PREFIX}version"]
    if member.model_version is not None:
        return str(member.model_version.version)
    if member.logged_model is not None and member.logged_model.model_id:
        return member.logged_model.model_id
    return "1"


def manifest_framework(member: Snapshot) -> str:
    """The manifest's framework: an imported MLSteam package's own, else from the flavors."""
    return _tags(member).get(f"{TAG_PREFIX}framework") or framework_of(member.mlmodel,
                                                                         member.model_dir)


def manifest_entry(member: Snapshot, encrypted: bool, options: dict[str, Any]) -> dict[str, Any]:
    """One ``models[]`` entry of ``manifest.json``."""
    tags = _tags(member)
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


def hook_problems(root: Path) -> list[str]:
    """Missing hooks, and hooks without the function MLSteam calls, found by parsing them
    (never by running or importing them). A hook past the parser's limits (size, nesting) is
    refused: :class:`UnsafeArchiveError` from :func:`parse_python`."""
    problems = []
    for hook, function in HOOK_FUNCTIONS.items():
        name = f"{HOOKS_DIR}/{hook}"
        path = root / HOOKS_DIR / hook
        if not path.is_file():
            problems.append(f"{name} is missing; the spec needs it, with a top-level "
                            f"def {function}(...)")
            continue
        try:
            tree = parse_python(path.read_bytes(), what=name)
        except CorruptArchiveError as exc:
            problems.append(str(exc))
            continue
        if not any(isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                   and node.name == function for node in tree.body):
            problems.append(f"{name} has no top-level def {function}(...), which MLSteam calls")
    return problems


# --------------------------------------------------------------------------- kept hooks


def hook_tags(root: Path) -> tuple[dict[str, str], str | None]:
    """Every file under ``hooks/`` as an ``mlsteam.hook.<path>`` tag holding its text, so that
    an export writes the package's own hooks back; or no tags and why they cannot be kept (a
    file that is not UTF-8 text, too long for a tag, or named as no tag key can be). The
    files are only read, never run or imported."""
    hooks = root / HOOKS_DIR
    tags = {}
    for path in sorted(path for path in hooks.rglob("*") if path.is_file()):
        name = path.relative_to(hooks).as_posix()
        where = f"{HOOKS_DIR}/{name}"
        if not _keepable_hook_path(name):
            return {}, (f"{where} has a name no MLflow tag key can hold (letters, digits and "
                        "'_-. /' only)")
        text, problem = _hook_text(path)
        if problem:
            return {}, f"{where} {problem}"
        tags[HOOK_TAG_PREFIX + name] = text
    return tags, None


def _hook_text(path: Path) -> tuple[str, str | None]:
    """A hook file's text, or why a tag cannot hold it."""
    too_long = f"is longer than the {_HOOK_TAG_VALUE_MAX:,} characters an MLflow tag holds"
    # UTF-8 spends at most 4 bytes on a character: a larger file cannot fit in a tag.
    if path.stat().st_size > 4 * _HOOK_TAG_VALUE_MAX:
        return "", too_long
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        return "", "is not UTF-8 text"
    if "\x00" in text:
        return "", "is not text (it holds a NUL character)"
    return text, too_long if len(text) > _HOOK_TAG_VALUE_MAX else None


def kept_hooks(member: Snapshot) -> dict[str, bytes]:
    """The hook files an imported hand-written package came with, by path under ``hooks/``;
    empty when none were kept, or when the tags lack a hook the spec needs or name a path
    outside ``hooks/`` (tags can be edited in the registry)."""
    files = {key.removeprefix(HOOK_TAG_PREFIX): text.encode("utf-8")
             for key, text in _tags(member).items() if key.startswith(HOOK_TAG_PREFIX)}
    if not set(HOOK_FUNCTIONS) <= set(files) or not all(map(_keepable_hook_path, files)):
        return {}
    return files


def _keepable_hook_path(name: str) -> bool:
    """Whether a path under ``hooks/`` makes a tag key MLflow accepts and, read back from
    one, names a file inside ``hooks/``."""
    return (bool(_HOOK_PATH.match(name)) and len(HOOK_TAG_PREFIX + name) <= _TAG_KEY_MAX
            and all(part not in ("", ".", "..") for part in name.split("/")))


def _hooks_written(snapshot: Snapshot) -> dict[str, bytes]:
    """The kept hooks an export writes instead of generated ones: a single model's, and not
    when encrypting (the kept hooks cannot decrypt; the generated ``load.py`` does)."""
    if snapshot.bundle or snapshot.encryption is not None:
        return {}
    return kept_hooks(snapshot)


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
    _raise_first(manifest_problems(document))
    return document


def _raise_first(problems: list[str]) -> None:
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise CorruptArchiveError(problems[0] + more)


def check_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """The layout's options with defaults filled in, or a one-line error."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise UnsupportedError(f"unknown mlarchive option {unknown[0]!r}; choose from: "
                               f"{', '.join(OPTIONS)}")
    cleanup = options.get("cleanup") or DEFAULT_CLEANUP
    if cleanup not in CLEANUP_POLICIES:
        raise UnsupportedError(f"cleanup policy {cleanup!r} is not one of: "
                               f"{', '.join(CLEANUP_POLICIES)}")
    patterns = options.get("cleanup_files") or DEFAULT_CLEANUP_FILES
    if isinstance(patterns, str):
        patterns = [patterns]
    for pattern in patterns:
        try:
            load_hook.check_pattern(pattern)
        except load_hook.PackageError as exc:
            raise UnsupportedError(str(exc)) from None
    return {"strict": bool(options.get("strict")), "cleanup": cleanup,
            "cleanup_files": list(patterns),
            "cleanup_given": "cleanup" in options or "cleanup_files" in options}


# --------------------------------------------------------------------------- the layout


class MlarchiveLayout(Layout):
    """``manifest.json`` + ``models/`` + ``hooks/``, zipped as ``.mlarchive``."""

    name = "mlarchive"
    default_container = "zip"
    containers = ("zip",)
    several_models = True

    def extension(self, container) -> str:
        return ".mlarchive"

    def file_stem(self, snapshot: Snapshot) -> str:
        if snapshot.encryption is not None:
            return ENCRYPTED_STEM
        stem = MlflowLayout().file_stem(snapshot)
        if snapshot.bundle:
            return f"{stem}-and-{len(snapshot.bundle) - 1}-more"
        return stem

    def check_options(self, options: dict[str, Any] | None) -> None:
        check_options(options)

    def warnings(self, snapshot: Snapshot, options: dict[str, Any] | None = None) -> list[str]:
        lines = [
            f"model {manifest_name(member)!r} is a {framework} model, not one of MLSteam's "
            f"frameworks ({', '.join(SPEC_FRAMEWORKS)}); manifest.json names it {framework!r} "
            "(pass --strict to refuse)"
            for member in snapshot.members
            if (framework := manifest_framework(member)) not in SPEC_FRAMEWORKS
        ]
        if snapshot.bundle or snapshot.encryption is not None:
            package = "several models" if snapshot.bundle else "encrypted model files"
            lines.extend(
                f"model {manifest_name(member)!r} kept the hooks of the package it was imported "
                f"from, but a package of {package} gets the plugin's hooks; export it alone "
                "and unencrypted to write its own"
                for member in snapshot.members if kept_hooks(member)
            )
        return lines

    def seal(self, snapshot: Snapshot, key: bytes, workdir: Path) -> None:
        """Encrypt each model's files into ``workdir``, bound to their paths in the package."""
        _assign_paths(snapshot)
        for index, member in enumerate(snapshot.members):
            member.sealed_dir = crypto.encrypt_tree(
                member.model_dir, workdir / str(index), key, member.model_path + "/")
        snapshot.encryption = crypto.describe(key)

    def plan(self, snapshot: Snapshot, options: dict[str, Any] | None = None) -> list[Entry]:
        settings = check_options(options)
        encrypted = snapshot.encryption is not None
        if settings["cleanup_given"] and not encrypted:
            raise UnsupportedError("cleanup settings apply to encrypted packages only; add "
                                   "--encrypt or drop --cleanup/--cleanup-file")
        _assign_paths(snapshot)
        members = snapshot.members
        for member in members:
            self._check_loadable(member, settings["strict"])
        manifest = {"models": [manifest_entry(member, encrypted, settings)
                               for member in members]}
        entries = [Entry(MANIFEST_NAME, data=_json_bytes(manifest))]
        for member in members:
            member.layout = self.name
            source = member.sealed_dir or member.model_dir
            entries.extend(
                Entry(f"{member.model_path}/{path.relative_to(source).as_posix()}", source=path)
                for path in model_files(source)
            )
        kept = _hooks_written(snapshot)
        if kept:
            entries.extend(Entry(f"{HOOKS_DIR}/{path}", data=data)
                           for path, data in sorted(kept.items()))
        else:
            entries.append(Entry(f"{HOOKS_DIR}/load.py",
                                 data=render_load_hook(snapshot, manifest, _hook_keys(members))))
            entries.append(Entry(f"{HOOKS_DIR}/predict.py", source=Path(predict_hook.__file__)))
        snapshot.layout = self.name
        return entries

    @staticmethod
    def _check_loadable(member: Snapshot, strict: bool) -> None:
        name = manifest_name(member)
        if "python_function" not in (member.mlmodel.get("flavors") or {}):
            raise UnsupportedError(
                f"model {name!r} has no python_function flavor, so the hooks cannot load it "
                "with mlflow.pyfunc; export it in another format"
            )
        framework = manifest_framework(member)
        if strict and framework not in SPEC_FRAMEWORKS:
            raise UnsupportedError(
                f"model {name!r} is a {framework} model, and MLSteam's manifest takes only "
                f"{', '.join(SPEC_FRAMEWORKS)}; drop --strict to write framework {framework!r}"
            )

    def detect(self, names: set[str], root: Path) -> bool:
        if "MAR-INF/MANIFEST.json" in names or "model.yaml" in names:
            return False
        has_models = any(name.startswith(f"{MODELS_DIR}/") for name in names)
        has_hooks = any(name.startswith(f"{HOOKS_DIR}/") for name in names)
        return (MANIFEST_NAME in names and (has_models or has_hooks)) or (has_models
                                                                           and has_hooks)

    def read(self, root: Path) -> Snapshot:
        document = read_manifest(root)
        _raise_first(hook_problems(root))
        if (root / METADATA_NAME).is_file():
            return self._read_own(root)
        return self._read_spec(root, document)

    def check(self, root: Path, snapshot: Snapshot, *, run: bool = False) -> list[str]:
        try:
            read_manifest(root)
        except CorruptArchiveError as exc:
            return [str(exc), *hook_problems(root)]
        return hook_problems(root)

    @staticmethod
    def _read_own(root: Path) -> Snapshot:
        """A package this plugin wrote: its metadata document says everything."""
        snapshot = read_metadata(root)
        for member in {id(m): m for m in [snapshot, *snapshot.members]}.values():
            member.model_dir = root / member.model_path
            resolved = member.model_dir.resolve()
            if root.resolve() not in resolved.parents:
                raise CorruptArchiveError(f"model_path {member.model_path!r} is not a folder "
                                          "inside the package; the archive is damaged")
            wanted = member.model_dir if snapshot.encryption else member.model_dir / "MLmodel"
            if not wanted.exists():
                raise CorruptArchiveError(
                    f"the package has no {member.model_path}"
                    + ("" if snapshot.encryption else "/MLmodel")
                    + ", so it holds no MLflow model there; export it again"
                )
        return snapshot

    def _read_spec(self, root: Path, document: dict[str, Any]) -> Snapshot:
        """A package written to the spec by hand (or another tool)."""
        entries = document["models"]
        models_dir = root / MODELS_DIR
        if not models_dir.is_dir():
            raise CorruptArchiveError(f"the .mlarchive has no {MODELS_DIR}/ folder, where the "
                                      "spec keeps model files")
        if (models_dir / "MLmodel").is_file():
            if len(entries) != 1:
                raise CorruptArchiveError(
                    f"{MANIFEST_NAME} lists {len(entries)} models, but {MODELS_DIR}/ is one "
                    f"MLflow model; give each model its own {MODELS_DIR}/<name>/ folder"
                )
            pairs = [(entries[0], MODELS_DIR)]
        else:
            folders = sorted(path.name for path in models_dir.iterdir()
                             if (path / "MLmodel").is_file())
            if not folders:
                return self._archive_backed(root, document)
            if len(folders) != len(entries):
                raise CorruptArchiveError(
                    f"{MANIFEST_NAME} lists {len(entries)} models, but {MODELS_DIR}/ holds "
                    f"{len(folders)} MLflow models ({', '.join(folders)}); list each once"
                )
            pairs = [(entry, f"{MODELS_DIR}/{folder}")
                     for entry, folder in _pair(entries, folders)]
        hooks, not_kept = hook_tags(root)
        members = [self._spec_member(root, entry, path, hooks) for entry, path in pairs]
        primary = members[0]
        if len(members) > 1:
            primary.bundle = members
        if not_kept:
            primary.warnings.append(f"the package's hooks are not kept: {not_kept}; exported "
                                    "again as mlarchive, it gets the plugin's hooks")
        return primary

    def _spec_member(self, root: Path, entry: dict[str, Any], path: str,
                     hooks: dict[str, str]) -> Snapshot:
        name, version = str(entry["name"]), str(entry["version"])
        tags = spec_tags(entry, root)
        description = entry.get("description") or (
            f"MLSteam model {name} version {version} ({entry['framework']}); imported by "
            "mlflow-archive-plugin.")
        return Snapshot(
            model_dir=root / path,
            mlmodel=_read_mlmodel(root / path / "MLmodel", path),
            registered_model=RegisteredModelInfo(name=registry_name(name)),
            model_version=ModelVersionInfo(version=version, description=description,
                                           tags={**tags, **hooks}),
            # A LoggedModel's tag holds 8,000 characters, a version's 100,000: only the
            # version keeps the hooks.
            logged_model=LoggedModelInfo(model_id="", name=logged_model_name(name),
                                         tags=dict(tags)),
            layout=self.name,
            model_path=path,
        )

    def _archive_backed(self, root: Path, document: dict[str, Any]) -> Snapshot:
        """Models that are not MLflow models: the package is kept whole, as it came."""
        entries = document["models"]
        first = entries[0]
        name, version = str(first["name"]), str(first["version"])
        tags = spec_tags(first, root)
        if len(entries) > 1:
            tags[f"{TAG_PREFIX}models"] = json.dumps(entries)[:_TAG_VALUE_MAX]
        description = first.get("description") or (
            f"MLSteam model archive {name} version {version} ({first['framework']}); imported "
            "by mlflow-archive-plugin.")
        return Snapshot(
            model_dir=root,
            mlmodel={},
            registered_model=RegisteredModelInfo(name=registry_name(name)),
            model_version=ModelVersionInfo(version=version, description=description, tags=tags),
            logged_model=LoggedModelInfo(model_id="", name=logged_model_name(name),
                                         tags=dict(tags)),
            layout=self.name,
            model_path=".",
            foreign_manifest=document,
        )


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
            tags[TAG_PREFIX + key] = json.dumps(entry[key])[:_TAG_VALUE_MAX]
    if entry.get("enc_model_cleanup"):
        tags[f"{TAG_PREFIX}enc_model_cleanup"] = str(entry["enc_model_cleanup"])
    hooks = sorted(path.name for path in (root / HOOKS_DIR).iterdir() if path.is_file())
    tags[f"{TAG_PREFIX}hooks"] = ", ".join(hooks)[:_TAG_VALUE_MAX]
    return tags


def _pair(entries: list[dict[str, Any]], folders: list[str]) -> list[tuple[dict, str]]:
    """Manifest entries matched to model folders: by name when every name matches one,
    else in order."""
    by_name = {}
    for entry in entries:
        name = str(entry["name"])
        for candidate in (name, _UNSAFE_CHARS.sub("_", name)):
            if candidate in folders and candidate not in by_name.values():
                by_name[id(entry)] = candidate
                break
    if len(by_name) == len(entries):
        return [(entry, by_name[id(entry)]) for entry in entries]
    return list(zip(entries, folders, strict=True))


def _read_mlmodel(path: Path, where: str) -> dict[str, Any]:
    return load_mlmodel(path.read_bytes(), what=f"{where}/MLmodel")


def _assign_paths(snapshot: Snapshot) -> None:
    """``models/`` for one model; ``models/<name>-v<version>/`` for each of several."""
    if not snapshot.bundle:
        snapshot.model_path = MODELS_DIR
        return
    taken: set[str] = set()
    for member in snapshot.bundle:
        slug = _UNSAFE_CHARS.sub(
            "_", f"{manifest_name(member)}-v{manifest_version(member)}").strip("._-") or "model"
        candidate, count = slug, 1
        while candidate.casefold() in taken:
            count += 1
            candidate = f"{slug}-{count}"
        taken.add(candidate.casefold())
        member.model_path = f"{MODELS_DIR}/{candidate}"
    snapshot.model_path = snapshot.bundle[0].model_path


def _hook_keys(members: list[Snapshot]) -> list[str]:
    """The names ``load()`` returns the models under: the manifest's, made unique."""
    keys: list[str] = []
    for member in members:
        key = manifest_name(member)
        if key in keys:
            key = f"{key}:{manifest_version(member)}"
        if key in keys:
            key = member.model_path.rsplit("/", 1)[-1]
        keys.append(key)
    return keys


def render_load_hook(snapshot: Snapshot, manifest: dict[str, Any], keys: list[str]) -> bytes:
    """``hooks/load.py``: the hook template with this package's models and encryption."""
    config = {
        "models": [
            {
                "name": key,
                "path": "." if member.model_path == MODELS_DIR
                else member.model_path.removeprefix(f"{MODELS_DIR}/"),
                "enc_model_cleanup": entry["enc_model_cleanup"],
                "enc_model_cleanup_files": entry["enc_model_cleanup_files"],
            }
            for key, member, entry in zip(keys, snapshot.members, manifest["models"],
                                          strict=True)
        ],
        "encryption": snapshot.encryption,
    }
    template = Path(load_hook.__file__).read_text(encoding="utf-8")
    literal = pprint.pformat(config, width=96, sort_dicts=False)
    source, count = _CONFIG_LINE.subn(lambda _: f"CONFIG = {literal}", template, count=1)
    if count != 1:
        raise RuntimeError("the load hook template has no CONFIG line")
    return source.encode("utf-8")


def _json_bytes(document: dict[str, Any]) -> bytes:
    return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


__all__ = ["MlarchiveLayout", "annotation", "framework_of", "hook_problems", "hook_tags",
           "kept_hooks", "manifest_problems", "read_manifest", "signature_fields"]
