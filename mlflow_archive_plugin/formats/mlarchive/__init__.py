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

import json
import re
from pathlib import Path
from typing import Any

from mlflow_archive_plugin.errors import CorruptArchiveError, UnsupportedError
from mlflow_archive_plugin.formats.base import Entry, Layout, read_metadata
from mlflow_archive_plugin.formats.mlarchive.hooks import (
    HOOK_FUNCTIONS,
    HOOK_TAG_PREFIX,
    hook_keys,
    hook_problems,
    hook_tags,
    hooks_written,
    kept_hooks,
    render_load_hook,
)
from mlflow_archive_plugin.formats.mlarchive.manifest import (
    CLEANUP_POLICIES,
    HOOKS_DIR,
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    MODELS_DIR,
    TAG_PREFIX,
    TAG_VALUE_MAX,
    annotation,
    framework_of,
    logged_model_name,
    manifest_entry,
    manifest_framework,
    manifest_name,
    manifest_problems,
    manifest_version,
    raise_first,
    read_manifest,
    registry_name,
    signature_fields,
    spec_tags,
)
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
from mlflow_archive_plugin.trust.parsing import load_mlmodel

SPEC_FRAMEWORKS = ("tensorflow", "tensorflow.keras", "pytorch", "pytorch.lightning")
DEFAULT_CLEANUP = "after-load"
DEFAULT_CLEANUP_FILES = load_hook.DEFAULT_CLEANUP_FILES
# The spec's name for an encrypted package.
ENCRYPTED_STEM = "model-enc"
OPTIONS = ("strict", "cleanup", "cleanup_files")
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


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
        kept = hooks_written(snapshot)
        if kept:
            entries.extend(Entry(f"{HOOKS_DIR}/{path}", data=data)
                           for path, data in sorted(kept.items()))
        else:
            entries.append(Entry(f"{HOOKS_DIR}/load.py",
                                 data=render_load_hook(snapshot, manifest, hook_keys(members))))
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
        raise_first(hook_problems(root))
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
            tags[f"{TAG_PREFIX}models"] = json.dumps(entries)[:TAG_VALUE_MAX]
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


def _json_bytes(document: dict[str, Any]) -> bytes:
    return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


__all__ = ["CLEANUP_POLICIES", "DEFAULT_CLEANUP", "DEFAULT_CLEANUP_FILES", "ENCRYPTED_STEM",
           "HOOKS_DIR", "HOOK_FUNCTIONS", "HOOK_TAG_PREFIX", "MANIFEST_NAME",
           "MAX_MANIFEST_BYTES", "MODELS_DIR", "OPTIONS", "SPEC_FRAMEWORKS", "TAG_PREFIX",
           "MlarchiveLayout", "annotation", "check_options", "framework_of", "hook_problems",
           "hook_tags", "kept_hooks", "logged_model_name", "manifest_entry",
           "manifest_framework", "manifest_name", "manifest_problems", "manifest_version",
           "predict_hook", "read_manifest", "registry_name", "render_load_hook",
           "signature_fields", "spec_tags"]
