"""Whole registries: one archive per model version plus an index, and back into a registry.

``export_registry`` writes every version of the chosen registered models as an archive in one
folder (local or any fsspec URL) and, last, ``registry-index.json``: the models, their
descriptions and aliases, and for each version its archive's file name and digest. The index
is published atomically once everything it names is in place, so a folder holds either no
index or a complete one. ``import_registry`` reads that index and recreates each model's
versions in their original numeric order (10 after 9), then points the aliases at the
versions made from the versions they named.

Both are idempotent: a re-run exports only versions whose archive is missing, damaged or out
of date, and imports only versions the target does not hold yet (recognised by the archive
digest that every import leaves on its version). A model that fails is reported and the
others carry on; the result lists every failure, one line each.

Models go in parallel (``workers`` threads), the versions of one model one after another.
Registering a version points MLflow's process-global tracking URI at the target (see
:func:`~mlflow_archive_plugin.mlflow_side.tracking.global_tracking_uri`); threads
swapping it to and fro would race, so a bulk run points it, and the environment variables the
workers set, at the one value every worker wants before the threads start and restores them
when the run ends.
Every swap a worker makes then writes the value that is already there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import os
import posixpath
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from mlflow_archive_plugin.errors import (
    ArchiveError,
    CorruptArchiveError,
    SourceNotFoundError,
    UnsafeArchiveError,
    UnsupportedError,
)
from mlflow_archive_plugin.formats import get_layout
from mlflow_archive_plugin.progress import enabled
from mlflow_archive_plugin.storage.location import Location, publish_file, remote_errors, resolve
from mlflow_archive_plugin.storage.pipeline import pick_container
from mlflow_archive_plugin.trust.parsing import load_json

INDEX_NAME = "registry-index.json"
INDEX_FORMAT = "mlflow-archive-registry-index"
INDEX_SCHEMA_VERSION = 1
# Versions made only to move a registry's numbering on (--preserve-version-numbers); deleted
# again at once, and by the next run if a run was killed before it could.
PLACEHOLDER_TAG = "mlflow_archive.placeholder"
PLACEHOLDER_SOURCE = "mlflow-archive-placeholder:/reserved"
_UNSAFE_FILE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_WORKERS_DEFAULT = 4


def default_workers() -> int:
    """How many models go at once by default: a few, and no more than the machine's cores."""
    return max(1, min(_MAX_WORKERS_DEFAULT, os.cpu_count() or 1))


@dataclass
class VersionOutcome:
    """What a bulk run did with one model version.

    ``status`` is ``exported``, ``skipped`` (its archive was already there, intact and up to
    date) or ``failed`` for an export; ``imported``, ``reused`` (the target already held it),
    ``failed`` or ``blocked`` (not tried, because an earlier version of its model failed and
    versions keep their order) for an import. ``version`` is the source's version number,
    ``target_version`` the one it has in the target registry. ``number_kept`` says, for an
    import with ``preserve_version_numbers``, whether the two are equal.
    """

    name: str
    version: str
    status: str
    archive: str | None = None
    digest: str | None = None
    size: int | None = None
    target_version: str | None = None
    number_kept: bool | None = None
    error: str | None = None
    seconds: float = 0.0

    def line(self) -> str:
        """One line a person reads: what happened and where."""
        what = f"{self.name} v{self.version}"
        if self.status == "exported":
            return f"exported {what} -> {self.archive}"
        if self.status == "skipped":
            return f"skipped {what}: {self.archive} is already there and up to date"
        if self.status in ("imported", "reused"):
            verb = "imported" if self.status == "imported" else "already imported"
            kept = "" if self.number_kept is not False else " (could not keep the number)"
            return f"{verb} {what} -> models:/{self.name}/{self.target_version}{kept}"
        if self.status == "blocked":
            return f"not imported {what}: {self.error}"
        return f"failed {what}: {self.error}"


@dataclass
class Failure:
    """A model, or one version of it, that a bulk run could not handle."""

    name: str
    version: str | None
    error: str

    def line(self) -> str:
        """``name vN: reason``, one line without a traceback."""
        what = self.name if self.version is None else f"{self.name} v{self.version}"
        return f"{what}: {self.error}"


@dataclass
class BulkResult:
    """The outcome of :func:`export_registry` or :func:`import_registry`.

    ``counts`` tallies ``versions`` by status; ``bytes`` is what went into archives (export)
    or was read from them (import); ``failures`` has one entry per failed model or version
    (``ok`` is false when there is any); ``renumbered`` lists the versions an import with
    ``preserve_version_numbers`` could not give their source number.
    """

    operation: str
    index: str
    tracking_uri: str | None
    models: int
    counts: dict[str, int]
    bytes: int
    seconds: float
    versions: list[VersionOutcome]
    failures: list[Failure] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    renumbered: list[VersionOutcome] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every model and version went through."""
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        """The result as plain JSON-serialisable data."""
        return {**dataclasses.asdict(self), "ok": self.ok}


Reporter = Callable[[VersionOutcome], None]


# --------------------------------------------------------------------------- export


def export_registry(
    dest: str | os.PathLike,
    models: Sequence[str] | None = None,
    *,
    format: str = "mlflow",
    container: str | None = None,
    workers: int | None = None,
    tracking_uri: str | None = None,
    storage_options: dict | None = None,
    progress: bool | None = None,
    on_version: Reporter | None = None,
) -> BulkResult:
    """Export every version of the registered ``models`` (all of them when None) into the
    folder ``dest``, one archive per version, then write ``registry-index.json`` there.

    ``dest`` is a local folder or an fsspec URL (``s3://bucket/registry/``). Archives are
    named ``<name>-v<version>`` plus the container's extension (a name with characters other
    than letters, digits, ``.``, ``_`` and ``-`` gets those replaced and a short hash of the
    real name added, so that two names never share a file). An archive already there is
    kept when it is intact, holds that version of that model with its current description
    and tags, and has the digest the previous index gave it; anything else is exported
    again. ``format`` and ``container`` are :func:`~mlflow_archive_plugin.export_model`'s.

    The index lists the models whose every version is in place; a model that failed is
    named under ``failed`` instead, and in the result's ``failures``. ``on_version`` is
    called (from one thread at a time) with each version's outcome as it is known.
    """
    from mlflow_archive_plugin.mlflow_side.tracking import connect, redact_uri, resolve_tracking_uri

    started = time.monotonic()
    count = _worker_count(workers)
    layout = get_layout(format)
    chosen = pick_container(layout, container)
    raw_dest = os.fspath(dest)
    root = _export_folder(raw_dest, storage_options, chosen.name)
    uri = resolve_tracking_uri(tracking_uri)
    client = connect(uri)
    selected, failures = _select_models(client, models)
    versions = _versions_by_model(client, [model.name for model in selected], models is None)
    previous = _take_previous_index(root)
    plan = _ExportPlan(raw_dest, root, layout.name, chosen.name, uri, storage_options,
                       previous)
    total = sum(len(versions.get(model.name, [])) for model in selected)
    with _pinned_globals(uri), _Progress(total, "export-registry", progress,
                                         on_version) as report:
        entries = _run_parallel(
            count,
            [(model, versions.get(model.name, [])) for model in selected],
            lambda item: _export_model(plan, *item, report),
            plan.stop,
        )
    outcomes = [outcome for _, model_outcomes in entries for outcome in model_outcomes]
    failures += [Failure(o.name, o.version, o.error or "failed") for o in outcomes
                 if o.status == "failed"]
    failed_names = {failure.name for failure in failures}
    document = {
        "format": INDEX_FORMAT,
        "schema_version": INDEX_SCHEMA_VERSION,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "source_tracking_uri": redact_uri(uri),
        "archive_format": layout.name,
        "container": chosen.name,
        "models": [entry for entry, _ in entries if entry["name"] not in failed_names],
        "failed": [dataclasses.asdict(failure) for failure in failures],
    }
    index = root.child(INDEX_NAME)
    with publish_file(index, force=True) as handle:
        handle.write((json.dumps(document, indent=2, default=str) + "\n").encode("utf-8"))
    return BulkResult(
        operation="export",
        index=index.url,
        tracking_uri=redact_uri(uri),
        models=len(selected) + len([f for f in failures if f.version is None]),
        counts=_counts(outcomes),
        bytes=sum(o.size or 0 for o in outcomes if o.status == "exported"),
        seconds=round(time.monotonic() - started, 3),
        versions=outcomes,
        failures=failures,
    )


@dataclass
class _ExportPlan:
    """What every model's export shares: where to, in which format, from where."""

    raw_dest: str
    root: Location
    format: str
    container: str
    tracking_uri: str
    storage_options: dict | None
    previous: dict[tuple[str, str], dict[str, Any]]
    # Set on an interrupt: workers stop after the version in hand.
    stop: threading.Event = field(default_factory=threading.Event)

    def raw_child(self, name: str) -> str:
        """``name`` inside the destination, as a URL or path export_model can open (the
        location's own URL has any password masked)."""
        return f"{self.raw_dest.rstrip('/').rstrip(os.sep)}/{name}"


def _export_folder(raw_dest: str, storage_options: dict | None, container: str) -> Location:
    """The destination folder, created if local; refused when it is a file or read-only."""
    root = resolve(raw_dest, storage_options)
    if root.protocol in ("http", "https"):
        raise UnsupportedError(f"{root.url} can only be read from; export the registry to a "
                               "local folder or a writable URL such as s3://")
    if container == "folder" and not root.is_local:
        raise UnsupportedError(f"folder archives can only be written to local paths, not "
                               f"{root.url}; choose a file container such as zip")
    with remote_errors(root, "reach"):
        if root.fs.exists(root.path) and not root.fs.isdir(root.path):
            raise UnsupportedError(f"{root.url} is a file; export the registry into a folder")
        if root.is_local:
            os.makedirs(root.path, exist_ok=True)
    return root


def _select_models(client, names: Sequence[str] | None) -> tuple[list, list[Failure]]:
    """The registered models to export, sorted by name, and a failure per unknown name."""
    from mlflow.exceptions import MlflowException

    from mlflow_archive_plugin.mlflow_side.tracking import first_line, is_missing, mlflow_errors

    if names is None:
        with mlflow_errors("cannot list the registered models"):
            found = list(_pages(lambda token: client.search_registered_models(
                max_results=1000, page_token=token)))
        return sorted(found, key=lambda model: model.name), []
    if not names:
        raise UnsupportedError("give at least one registered model name, or export them all")
    selected, failures = [], []
    for name in dict.fromkeys(names):
        try:
            selected.append(client.get_registered_model(name))
        except MlflowException as exc:
            reason = "no such registered model" if is_missing(exc) else first_line(exc)
            failures.append(Failure(name, None, reason))
    return sorted(selected, key=lambda model: model.name), failures


def _versions_by_model(client, names: list[str], every_model: bool) -> dict[str, list]:
    """Each model's versions in numeric order (10 after 9): one search for a whole
    registry, one per model otherwise."""
    from mlflow_archive_plugin.mlflow_side.tracking import filter_value, mlflow_errors

    found: list = []
    with mlflow_errors("cannot list model versions"):
        if every_model:
            found = list(_all_versions(client, ""))
        else:
            for name in names:
                found += _all_versions(client, f"name = {filter_value(name)}")
    grouped: dict[str, list] = {}
    for version in found:
        grouped.setdefault(version.name, []).append(version)
    return {name: sorted(group, key=lambda v: int(v.version)) for name, group in grouped.items()}


def _all_versions(client, filter_string: str) -> Iterator:
    return _pages(lambda token: client.search_model_versions(
        filter_string, max_results=10000, page_token=token))


def _pages(fetch: Callable[[str | None], Any]) -> Iterator:
    token = None
    while True:
        page = fetch(token)
        yield from page
        token = page.token
        if not token:
            return


def _take_previous_index(root: Location) -> dict[tuple[str, str], dict[str, Any]]:
    """The versions an earlier run's index lists, by (name, version); the index itself is
    removed, so that a run stopped half way leaves no index rather than a stale one."""
    index = root.child(INDEX_NAME)
    with remote_errors(index, "read"):
        if not index.fs.exists(index.path):
            return {}
        with index.fs.open(index.path, "rb") as handle:
            raw = handle.read()
    try:
        document = _parse_index(raw, index.url)
    except (CorruptArchiveError, UnsafeArchiveError):
        document = {"models": []}  # unreadable: nothing in it can be trusted
    with remote_errors(index, "write"):
        index.fs.rm(index.path)
    return {
        (model["name"], str(version["version"])): version
        for model in document["models"] for version in model["versions"]
    }


def _export_model(plan: _ExportPlan, model, versions: list,
                  report: Reporter) -> tuple[dict[str, Any], list[VersionOutcome]]:
    """Export the versions of one registered model in order; its index entry and outcomes."""
    outcomes = []
    for version in versions:
        if plan.stop.is_set():
            break
        outcome = _export_version(plan, model.name, version)
        report(outcome)
        outcomes.append(outcome)
    entry = {
        "name": model.name,
        "description": model.description or None,
        "aliases": {alias: str(number) for alias, number in
                    sorted((getattr(model, "aliases", None) or {}).items())},
        "versions": [
            {"version": o.version, "archive": posixpath.basename(o.archive or ""),
             "digest": o.digest, "size": o.size}
            for o in outcomes
        ],
    }
    return entry, outcomes


def _export_version(plan: _ExportPlan, name: str, version) -> VersionOutcome:
    from mlflow_archive_plugin.api import export_model

    started = time.monotonic()
    number = str(version.version)
    file_name = archive_file_name(name, number, plan.format, plan.container)
    target = plan.root.child(file_name)
    try:
        kept = _up_to_date(plan, name, version, file_name)
        if kept is not None:
            digest, size = kept
            return VersionOutcome(name, number, "skipped", target.url, digest, size,
                                  seconds=_since(started))
        if plan.container == "folder" and os.path.isdir(target.path):
            shutil.rmtree(target.path)  # out of date: export_model would write inside it
        result = export_model(
            f"models:/{name}/{number}", plan.raw_child(file_name), format=plan.format,
            container=plan.container, force=True, tracking_uri=plan.tracking_uri,
            storage_options=plan.storage_options, progress=False,
        )
    except Exception as exc:  # noqa: BLE001 - one version failing must not stop the others
        return VersionOutcome(name, number, "failed", target.url, error=_reason(exc),
                              seconds=_since(started))
    return VersionOutcome(name, number, "exported", target.url, result.digest, result.size,
                          seconds=_since(started))


def archive_file_name(name: str, version: str, format: str = "mlflow",
                      container: str | None = None) -> str:
    """The file name :func:`export_registry` gives version ``version`` of model ``name``.

    ``iris-v3.zip``; a name with characters outside letters, digits, ``.``, ``_`` and ``-``
    has them replaced by ``_`` and the first 8 hex digits of its SHA-256 added, so that
    ``a/b`` and ``a_b`` get different files.
    """
    layout = get_layout(format)
    chosen = pick_container(layout, container)
    stem = _UNSAFE_FILE_CHARS.sub("_", name).strip("._") or "model"
    if stem != name:
        stem += "-" + hashlib.sha256(name.encode("utf-8")).hexdigest()[:8]
    suffix = "-portable" if layout.name == "portable" else ""
    return f"{stem}-v{version}{suffix}{layout.extension(chosen)}"


def _up_to_date(plan: _ExportPlan, name: str, version,
                file_name: str) -> tuple[str, int | None] | None:
    """``(digest, size)`` of the archive already at ``file_name`` when it can stay: intact,
    in the chosen format, holding this version with its current description and tags, and
    with the digest the previous index recorded; None when it must be exported."""
    from mlflow_archive_plugin.api import inspect_archive

    target = plan.root.child(file_name)
    with remote_errors(target, "reach"):
        if not target.fs.exists(target.path):
            return None
    try:
        info = inspect_archive(plan.raw_child(file_name), storage_options=plan.storage_options)
    except ArchiveError:
        return None
    meta = info.metadata or {}
    registered = meta.get("registered_model") or {}
    held = meta.get("model_version") or {}
    previous = plan.previous.get((name, str(version.version)))
    if (info.problems or not info.digest or info.layout != plan.format
            or info.container != plan.container
            or registered.get("name") != name
            or str(held.get("version")) != str(version.version)
            or (held.get("description") or None) != (version.description or None)
            or (held.get("tags") or {}) != dict(version.tags or {})
            or (previous is not None and previous.get("digest") != info.digest)):
        return None
    with remote_errors(target, "reach"):
        size = None if target.fs.isdir(target.path) else int(target.fs.size(target.path))
    return info.digest, size


# --------------------------------------------------------------------------- import


def import_registry(
    source: str | os.PathLike,
    *,
    workers: int | None = None,
    preserve_version_numbers: bool = False,
    tracking_uri: str | None = None,
    storage_options: dict | None = None,
    progress: bool | None = None,
    on_version: Reporter | None = None,
) -> BulkResult:
    """Recreate in a registry what :func:`export_registry` wrote at ``source`` (the folder,
    or its ``registry-index.json``).

    Each model's versions are imported in their source order with
    :func:`~mlflow_archive_plugin.import_archive`, every archive verified first; a version
    the target already holds (found by its archive digest) is not imported again. Then the
    index's aliases are set on the versions made from the versions they named, unless the
    target already points an alias elsewhere (left there, with a warning), and the model's
    description is set if the target has none. When a version fails, its model's later
    versions are not tried (they would take its number), and the others carry on.

    With ``preserve_version_numbers`` a version whose number is above the target's next one
    is given its number by creating placeholder versions up to it and deleting them again
    (MLflow never reuses a deleted number); one the target has already gone past gets the
    next free number and is listed in ``renumbered``.
    """
    from mlflow_archive_plugin.mlflow_side.tracking import connect, redact_uri, resolve_tracking_uri

    started = time.monotonic()
    count = _worker_count(workers)
    folder, index = _index_location(os.fspath(source), storage_options)
    with remote_errors(index, "read"):
        if not index.fs.exists(index.path):
            raise SourceNotFoundError(
                f"{index.url} does not exist; point at a folder export-registry completed "
                "(an interrupted export writes no index: run it again)"
            )
        with index.fs.open(index.path, "rb") as handle:
            document = _parse_index(handle.read(), index.url)
    uri = resolve_tracking_uri(tracking_uri)
    connect(uri)  # fails fast on a wrong URI, and sets up a database once, not per thread
    shown = index.url.rsplit("/", 1)[0] if "/" in index.url else "."
    plan = _ImportPlan(folder, shown, uri, storage_options, preserve_version_numbers)
    models = document["models"]
    total = sum(len(model["versions"]) for model in models)
    with _pinned_globals(uri), _Progress(total, "import-registry", progress,
                                         on_version) as report:
        results = _run_parallel(count, models, lambda model: _import_model(plan, model, report),
                                plan.stop)
    outcomes = [outcome for model_outcomes, _ in results for outcome in model_outcomes]
    warnings = [line for _, model_warnings in results for line in model_warnings]
    warnings += [f"{Failure(**failed).line()} (not exported, so not imported)"
                 for failed in document.get("failed") or []]
    failures = [Failure(o.name, o.version, o.error or "failed") for o in outcomes
                if o.status == "failed"]
    return BulkResult(
        operation="import",
        index=index.url,
        tracking_uri=redact_uri(uri),
        models=len(models),
        counts=_counts(outcomes),
        bytes=sum(o.size or 0 for o in outcomes if o.status == "imported"),
        seconds=round(time.monotonic() - started, 3),
        versions=outcomes,
        failures=failures,
        warnings=warnings,
        renumbered=[o for o in outcomes if o.number_kept is False],
    )


@dataclass
class _ImportPlan:
    """What every model's import shares."""

    folder: str
    shown_folder: str  # the folder as messages show it: any password masked
    tracking_uri: str
    storage_options: dict | None
    preserve_version_numbers: bool
    stop: threading.Event = field(default_factory=threading.Event)

    def archive(self, file_name: str) -> str:
        """The URL or path of an archive the index names."""
        return f"{self.folder.rstrip('/').rstrip(os.sep)}/{file_name}"

    def shown(self, file_name: str) -> str:
        """That archive as messages show it."""
        return f"{self.shown_folder}/{file_name}"


def _index_location(source: str, storage_options: dict | None) -> tuple[str, Location]:
    """The folder the archives are in (as given) and the index's location."""
    if source.endswith(".json"):
        is_url = "://" in source
        folder = source.rsplit("/", 1)[0] if is_url else os.path.dirname(source) or "."
        return folder, resolve(source, storage_options)
    return source, resolve(source, storage_options).child(INDEX_NAME)


def _parse_index(raw: bytes, shown: str) -> dict[str, Any]:
    """A parsed, checked index; any defect is a one-line error naming it (one past the
    limits of :func:`load_json` is :class:`UnsafeArchiveError`)."""
    def bad(why: str) -> CorruptArchiveError:
        return CorruptArchiveError(f"{shown} is not a registry index: {why}")

    document = load_json(raw, what=shown)
    if not isinstance(document, dict) or document.get("format") != INDEX_FORMAT:
        raise bad(f"'format' is not {INDEX_FORMAT!r}")
    schema = document.get("schema_version")
    if not isinstance(schema, int) or isinstance(schema, bool) or schema < 1:
        raise bad("'schema_version' is not a positive integer")
    if schema > INDEX_SCHEMA_VERSION:
        raise CorruptArchiveError(f"{shown} has schema_version {schema}, newer than this "
                                  f"plugin reads ({INDEX_SCHEMA_VERSION}); upgrade "
                                  "mlflow-archive-plugin")
    models = document.get("models")
    if not isinstance(models, list):
        raise bad("'models' is not a list")
    names = set()
    for model in models:
        if not isinstance(model, dict) or not isinstance(model.get("name"), str) \
                or not isinstance(model.get("versions"), list) \
                or not isinstance(model.get("aliases") or {}, dict):
            raise bad("a model is not an object with a name, versions and aliases")
        if model["name"] in names:
            raise bad(f"model {model['name']!r} is listed twice")
        names.add(model["name"])
        for version in model["versions"]:
            _check_index_version(version, model["name"], bad)
        model["versions"].sort(key=lambda v: int(v["version"]))
    return document


def _check_index_version(version: Any, name: str, bad) -> None:
    if not isinstance(version, dict) or not str(version.get("version", "")).isdigit():
        raise bad(f"a version of {name!r} has no version number")
    archive = version.get("archive")
    # The index may come from anywhere: it names files beside it, never elsewhere.
    if not isinstance(archive, str) or archive in ("", ".", "..") \
            or any(sep in archive for sep in ("/", "\\")) or ":" in archive:
        raise bad(f"version {version.get('version')} of {name!r} names archive {archive!r}, "
                  "not a file beside the index")
    if not isinstance(version.get("digest"), str):
        raise bad(f"version {version.get('version')} of {name!r} has no digest")


def _import_model(plan: _ImportPlan, entry: dict[str, Any],
                  report: Reporter) -> tuple[list[VersionOutcome], list[str]]:
    """Import one model's versions in order, then its aliases and description."""
    from mlflow_archive_plugin.mlflow_side.tracking import connect, first_line

    name = entry["name"]
    outcomes: list[VersionOutcome] = []
    try:
        client = connect(plan.tracking_uri)
        target = _TargetModel.read(client, name)
    except Exception as exc:  # noqa: BLE001 - this model fails, the others carry on
        reason = _reason(exc)
        for version in entry["versions"]:
            outcome = VersionOutcome(name, str(version["version"]), "failed", error=reason)
            report(outcome)
            outcomes.append(outcome)
        return outcomes, []
    warnings: list[str] = []
    failed_at: str | None = None
    for version in entry["versions"]:
        if plan.stop.is_set():
            break
        number = str(version["version"])
        if failed_at is not None:
            outcome = VersionOutcome(name, number, "blocked", version["archive"],
                                     error=f"v{failed_at} failed, and versions keep their "
                                           "order; run the import again once it is fixed")
        else:
            outcome = _import_version(plan, client, target, version)
            if outcome.status == "failed":
                failed_at = number
        report(outcome)
        outcomes.append(outcome)
    try:
        warnings += target.finish(entry, {o.version: o.target_version for o in outcomes
                                          if o.target_version is not None})
    except Exception as exc:  # noqa: BLE001 - the versions are in; say what is missing
        warnings.append(f"{name}: could not set its aliases or description "
                        f"({first_line(exc)}); run the import again")
    return outcomes, warnings


def _import_version(plan: _ImportPlan, client, target: _TargetModel,
                    version: dict[str, Any]) -> VersionOutcome:
    from mlflow_archive_plugin.api import import_archive

    started = time.monotonic()
    name, number = target.name, str(version["version"])
    shown = plan.shown(version["archive"])
    done = target.by_digest.get(version["digest"])
    if done is not None:
        return VersionOutcome(name, number, "reused", shown, version["digest"],
                              version.get("size"), target_version=done,
                              number_kept=_kept(plan, number, done), seconds=_since(started))
    try:
        with target.reserved(int(number) if plan.preserve_version_numbers else None):
            result = import_archive(plan.archive(version["archive"]), aliases=False,
                                    tracking_uri=plan.tracking_uri,
                                    storage_options=plan.storage_options, progress=False)
    except Exception as exc:  # noqa: BLE001 - one version failing must not stop the others
        return VersionOutcome(name, number, "failed", shown, version["digest"],
                              error=_reason(exc), seconds=_since(started))
    target.added(result.version, result.digest)
    return VersionOutcome(
        name, number, "reused" if result.reused else "imported", shown, result.digest,
        version.get("size"), result.version, _kept(plan, number, result.version),
        seconds=_since(started),
    )


def _kept(plan: _ImportPlan, source: str, target: str) -> bool | None:
    return (int(source) == int(target)) if plan.preserve_version_numbers else None


@dataclass
class _TargetModel:
    """One registered model in the target registry, as one import run sees and changes it."""

    client: Any
    name: str
    exists: bool
    highest: int
    by_digest: dict[str, str]
    created_here: bool = False

    @classmethod
    def read(cls, client, name: str) -> _TargetModel:
        """The model's visible versions; placeholders a killed run left are deleted first."""
        from mlflow.exceptions import MlflowException

        from mlflow_archive_plugin.mlflow_side.registry import DIGEST_TAG
        from mlflow_archive_plugin.mlflow_side.tracking import (
            filter_value,
            is_missing,
            mlflow_errors,
        )

        with mlflow_errors(f"cannot read registered model {name!r} in the target"):
            try:
                client.get_registered_model(name)
                exists = True
            except MlflowException as exc:
                if not is_missing(exc):
                    raise
                exists = False
            versions = list(_all_versions(client, f"name = {filter_value(name)}"))
            by_digest: dict[str, str] = {}
            for version in sorted(versions, key=lambda v: -int(v.version)):
                tags = version.tags or {}
                if tags.get(PLACEHOLDER_TAG):
                    client.delete_model_version(name, version.version)
                elif tags.get(DIGEST_TAG):
                    by_digest[tags[DIGEST_TAG]] = str(version.version)
        highest = max((int(v.version) for v in versions), default=0)
        return cls(client, name, exists, highest, by_digest)

    def added(self, version: str, digest: str) -> None:
        """Note a version the import made (or found)."""
        self.exists = True
        self.highest = max(self.highest, int(version))
        self.by_digest.setdefault(digest, str(version))

    @contextlib.contextmanager
    def reserved(self, number: int | None) -> Iterator[None]:
        """With ``number``: placeholder versions fill the numbers below it that the target
        has not used, so that the next version created gets it; deleted again afterwards.

        MLflow hides deleted versions but never reuses their numbers, so the first
        placeholder also finds out where the numbering really stands.
        """
        placeholders: list[str] = []
        try:
            if number is not None and self.highest + 1 < number:
                self._ensure_exists()
                while True:
                    made = self.client.create_model_version(
                        self.name, PLACEHOLDER_SOURCE, tags={PLACEHOLDER_TAG: "true"},
                        description="Reserved by mlflow-archive import-registry to keep "
                                    "version numbers; deleted once they are used.",
                    )
                    placeholders.append(str(made.version))
                    self.highest = max(self.highest, int(made.version))
                    if int(made.version) >= number - 1:
                        break
            yield
        finally:
            for placeholder in placeholders:
                with contextlib.suppress(Exception):  # a re-run deletes what is left
                    self.client.delete_model_version(self.name, placeholder)

    def _ensure_exists(self) -> None:
        if not self.exists:
            self.client.create_registered_model(self.name)
            self.exists = self.created_here = True

    def finish(self, entry: dict[str, Any], made_from: dict[str, str]) -> list[str]:
        """Point the index's aliases at the versions made from theirs and set the description
        if the target has none; returns a warning per alias left elsewhere. A model this run
        created only for placeholders, that got no version, is deleted again."""
        if not made_from:
            if self.created_here:
                self.client.delete_registered_model(self.name)
            return []
        model = self.client.get_registered_model(self.name)
        if entry.get("description") and not model.description:
            self.client.update_registered_model(self.name, description=entry["description"])
        current = {alias: str(v) for alias, v in (model.aliases or {}).items()}
        warnings = []
        for alias, source_version in sorted((entry.get("aliases") or {}).items()):
            version = made_from.get(str(source_version))
            if version is None:
                continue
            if current.get(alias, version) != version:
                warnings.append(f"alias {alias!r} of {self.name!r} already points at version "
                                f"{current[alias]}; left there (move it yourself to use "
                                f"version {version})")
            elif alias not in current:
                self.client.set_registered_model_alias(self.name, alias, version)
        return warnings


# --------------------------------------------------------------------------- shared


@contextlib.contextmanager
def _pinned_globals(tracking_uri: str) -> Iterator[None]:
    """Hold MLflow's global tracking URI, and the variables registration and download set,
    at the values every worker wants, for the whole run (see the module docstring)."""
    from mlflow_archive_plugin.mlflow_side.tracking import environment, global_tracking_uri

    with global_tracking_uri(tracking_uri), environment(
        MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT="true",
        MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false",
    ):
        yield


def _worker_count(workers: int | None) -> int:
    count = default_workers() if workers is None else workers
    if count < 1:
        raise UnsupportedError(f"workers must be at least 1, not {count}")
    return count


def _run_parallel(count: int, items: Iterable, work: Callable, stop: threading.Event) -> list:
    """``work`` applied to every item, ``count`` at a time, results in the items' order.

    On an interrupt ``stop`` is set, so that the workers end after the version in hand,
    and models not started are dropped."""
    items = list(items)
    if count == 1 or len(items) <= 1:
        return [work(item) for item in items]
    pool = ThreadPoolExecutor(max_workers=min(count, len(items)),
                              thread_name_prefix="mlflow-archive")
    try:
        futures = [pool.submit(work, item) for item in items]
        return [future.result() for future in futures]
    except BaseException:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)


class _Progress:
    """Hands each outcome to the caller's reporter, one thread at a time, and counts
    versions on a progress bar (off unless stderr is a terminal; see progress.py)."""

    def __init__(self, total: int, description: str, requested: bool | None,
                 reporter: Reporter | None) -> None:
        self._total = total
        self._description = description
        self._show = enabled(requested)
        self._reporter = reporter
        self._lock = threading.Lock()
        self._bar: Any = None

    def __enter__(self) -> Reporter:
        if self._show:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self._total, desc=self._description, unit="version",
                             file=sys.stderr, leave=False)
        return self._report

    def __exit__(self, *exc_info: object) -> None:
        if self._bar is not None:
            self._bar.close()

    def _report(self, outcome: VersionOutcome) -> None:
        with self._lock:
            if self._reporter is not None:
                self._reporter(outcome)
            if self._bar is not None:
                self._bar.update(1)


def _counts(outcomes: list[VersionOutcome]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    return counts


def _reason(exc: BaseException) -> str:
    """One line for a failed version: the plugin's own message, else the exception's type
    and first line."""
    from mlflow_archive_plugin.mlflow_side.tracking import first_line

    if isinstance(exc, ArchiveError):
        return first_line(exc)
    return f"{type(exc).__name__}: {first_line(exc)}"


def _since(started: float) -> float:
    return round(time.monotonic() - started, 3)
