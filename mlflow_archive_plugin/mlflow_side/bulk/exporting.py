"""``export_registry``: every version of the chosen registered models as an archive in one
folder, then ``registry-index.json`` published last (see the package's docstring)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import posixpath
import shutil
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mlflow_archive_plugin.errors import (
    ArchiveError,
    CorruptArchiveError,
    UnsafeArchiveError,
    UnsupportedError,
)
from mlflow_archive_plugin.formats import get_layout
from mlflow_archive_plugin.mlflow_side.bulk.common import (
    _UNSAFE_FILE_CHARS,
    INDEX_FORMAT,
    INDEX_NAME,
    INDEX_SCHEMA_VERSION,
    BulkResult,
    Failure,
    Reporter,
    VersionOutcome,
    _all_versions,
    _counts,
    _pages,
    _parse_index,
    _pinned_globals,
    _Progress,
    _reason,
    _run_parallel,
    _since,
    _worker_count,
)
from mlflow_archive_plugin.storage.location import Location, publish_file, remote_errors, resolve
from mlflow_archive_plugin.storage.pipeline import pick_container


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


