"""``import_registry``: the models of a ``registry-index.json`` recreated version by version,
in their numeric order, and their aliases pointed at the versions made (see the package's
docstring)."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from mlflow_archive_plugin.errors import (
    SourceNotFoundError,
)
from mlflow_archive_plugin.mlflow_side.bulk.common import (
    INDEX_NAME,
    PLACEHOLDER_SOURCE,
    PLACEHOLDER_TAG,
    BulkResult,
    Failure,
    Reporter,
    VersionOutcome,
    _all_versions,
    _counts,
    _parse_index,
    _pinned_globals,
    _Progress,
    _reason,
    _run_parallel,
    _since,
    _worker_count,
)
from mlflow_archive_plugin.storage.location import Location, remote_errors, resolve


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


