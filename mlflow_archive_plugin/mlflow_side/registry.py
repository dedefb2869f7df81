"""Write a Snapshot into a registry (import side): run, logged model, files, version, aliases.

Order matters: the version is registered only after the files are uploaded and their sizes
checked, so nobody can load a half-uploaded version. Anything created before a failure is
deleted again. A process killed half way cannot do that, so the run and the logged model carry
an ``mlflow_archive.incomplete`` tag until their version exists, and the next import of the
same archive deletes what such a killed import left. What MLflow does not let a client set
(version numbers, creation times, user, ids) is kept in ``mlflow_archive.source.*`` tags.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import (
    Dataset,
    DatasetInput,
    InputTag,
    LoggedModelInput,
    LoggedModelOutput,
    Metric,
    Param,
)
from mlflow.exceptions import MlflowException

from mlflow_archive_plugin.errors import TrackingServerError, UnsupportedError, VersionExistsError
from mlflow_archive_plugin.mlflow_side.served import proxied_repository, upload_through_proxy
from mlflow_archive_plugin.mlflow_side.tracking import (
    MLFLOW_MODEL_VERSIONS,
    connect,
    environment,
    filter_value,
    global_tracking_uri,
    is_missing,
    mlflow_errors,
    resolve_tracking_uri,
)
from mlflow_archive_plugin.snapshot import Snapshot
from mlflow_archive_plugin.snapshot.metrics import read_points
from mlflow_archive_plugin.storage.extents import Extent, materialize
from mlflow_archive_plugin.storage.location import resolve
from mlflow_archive_plugin.storage.pipeline import check_free_space

DIGEST_TAG = "mlflow_archive.digest"
# On the run and logged model of an import until its version exists (value: the digest), so
# whatever still carries it was left by an import killed before it could finish or undo.
INCOMPLETE_TAG = "mlflow_archive.incomplete"
SOURCE_PREFIX = "mlflow_archive.source."
_TERMINAL_STATUSES = {"FINISHED", "FAILED", "KILLED"}
# Tags MLflow maintains itself on the target; copying the source's values would be wrong there.
_MLFLOW_MANAGED_TAGS = {MLFLOW_MODEL_VERSIONS}
PARENT_RUN_TAG = "mlflow.parentRunId"
_SOURCE_ONLY_RUN_TAGS = {PARENT_RUN_TAG, "mlflow.rootRunId"}
_MAX_PARAMS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000


@dataclass
class Registered:
    """The version an import produced or found."""

    name: str
    version: str
    reused: bool
    run_id: str | None = None
    model_id: str | None = None
    warnings: list[str] = field(default_factory=list)
    # Whether this import created the registered model (so undoing it deletes that too).
    created_model: bool = False


@dataclass
class _Created:
    """What this import created so far, to delete again if a later step fails."""

    client: MlflowClient
    run_id: str | None = None
    model_id: str | None = None
    registered_model: str | None = None
    version: tuple[str, str] | None = None
    parent_run_ids: list[str] = field(default_factory=list)

    def roll_back(self) -> None:
        client = self.client
        with contextlib.suppress(MlflowException, OSError):
            if self.version is not None:
                client.delete_model_version(*self.version)
        with contextlib.suppress(MlflowException, OSError):
            if self.registered_model is not None:
                client.delete_registered_model(self.registered_model)
        with contextlib.suppress(MlflowException, OSError):
            if self.model_id is not None:
                client.delete_logged_model(self.model_id)
        with contextlib.suppress(MlflowException, OSError):
            if self.run_id is not None:
                client.delete_run(self.run_id)
        for run_id in self.parent_run_ids:
            with contextlib.suppress(MlflowException, OSError):
                client.delete_run(run_id)


def register(
    snapshot: Snapshot,
    digest: str,
    *,
    name: str | None = None,
    experiment: str | None = None,
    on_exists: str = "reuse",
    aliases: bool = True,
    tracking_uri: str | None = None,
    registry_uri: str | None = None,
    extents: dict[Path, Extent] | None = None,
) -> Registered:
    """Recreate ``snapshot`` as a registered model version; idempotent by archive ``digest``.

    ``extents`` are model files left in the archive (placeholders in ``model_dir``): they are
    uploaded from there.
    """
    target = name or snapshot.display_name
    tracking_uri = resolve_tracking_uri(tracking_uri)
    _check_unread_first(tracking_uri, extents or {})
    _check_metric_history(snapshot)
    client = connect(tracking_uri, registry_uri)
    with mlflow_errors(f"cannot import into registered model {target!r}"):
        _check_artifact_space(client, experiment or target, snapshot.model_dir)
        imported = _versions_with_digest(client, digest)
        existing = min((v for v in imported if v.name == target), key=lambda v: int(v.version),
                       default=None)
        if existing is not None and on_exists == "reuse":
            _unmark(client, existing.run_id, _model_id_of(existing))
            return Registered(target, str(existing.version), True, existing.run_id,
                              _model_id_of(existing))
        if existing is not None and on_exists == "fail":
            raise VersionExistsError(
                f"version {existing.version} of {target!r} was already imported from this archive; "
                "pass --on-exists reuse to return it or new to register another"
            )
        created = _Created(client)
        try:
            # SQL registries resolve the version's models:/m-<id> source through the *global*
            # tracking URI (an MLflow TODO), so point it at the target while registering.
            # Ending a run on a server prints its URL to stdout, which would corrupt --json.
            with global_tracking_uri(tracking_uri), environment(
                MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT="true"
            ):
                return _create_all(client, created, snapshot, digest, target, experiment,
                                   aliases, imported, extents or {})
        except BaseException:
            created.roll_back()
            raise


def _create_all(client, created, snapshot, digest, target, experiment, aliases,
                imported, extents) -> Registered:
    source_experiment = snapshot.run.experiment_name if snapshot.run is not None else None
    experiment_id = _experiment_id(client, experiment or source_experiment or target)
    if snapshot.run is not None:
        _add_experiment_tags(client, experiment_id, snapshot.run.experiment_tags)
    _remove_killed_imports(client, experiment_id, digest, imported)
    run_id = _create_run(client, created, snapshot, experiment_id, digest)
    model_id = _create_logged_model(client, created, snapshot, experiment_id, run_id, digest)
    _log_model_inputs(client, run_id, snapshot, model_id)
    _log_metrics(client, run_id, snapshot, model_id)
    _finish_run(client, run_id, snapshot)
    _upload_files(client, model_id, snapshot.model_dir, extents)
    _ensure_registered_model(client, created, snapshot, target)
    version = client.create_model_version(
        name=target,
        source=f"models:/{model_id}",
        run_id=run_id,
        tags=_version_tags(snapshot, digest),
        description=snapshot.model_version.description if snapshot.model_version else None,
        model_id=model_id,
        run_link=snapshot.model_version.run_link if snapshot.model_version else None,
    )
    created.version = (target, str(version.version))
    # What mlflow.register_model does and a bare create_model_version does not: the model's
    # page lists the versions made from it.
    client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(
        [{"name": target, "version": int(version.version)}]
    )})
    _unmark(client, run_id, model_id)
    if run_id is not None and snapshot.run.lifecycle_stage == "deleted":
        client.delete_run(run_id)  # as the source run is: recreated in full, then deleted
    warnings = []
    if aliases and snapshot.model_version is not None:
        warnings = _set_free_aliases(client, target, str(version.version),
                                     snapshot.model_version.aliases)
    return Registered(target, str(version.version), False, run_id, model_id, warnings,
                      created_model=created.registered_model is not None)


def unregister(registered: Registered, *, tracking_uri: str | None = None,
               registry_uri: str | None = None) -> None:
    """Delete what :func:`register` created for ``registered`` (nothing if it was reused):
    used when a later model of the same archive fails to import."""
    if registered.reused:
        return
    client = connect(resolve_tracking_uri(tracking_uri), registry_uri)
    _Created(
        client,
        run_id=registered.run_id,
        model_id=registered.model_id,
        registered_model=registered.name if registered.created_model else None,
        version=(registered.name, registered.version),
    ).roll_back()


def _set_free_aliases(client, name: str, version: str, aliases: list[str]) -> list[str]:
    """Set the archive's aliases, except those the target already points elsewhere: moving
    ``champion`` is a deployment decision, not an import side effect."""
    current = client.get_registered_model(name).aliases or {}
    taken = {alias: str(v) for alias, v in current.items()}
    warnings = []
    for alias in aliases:
        if taken.get(alias, version) != version:
            warnings.append(f"alias {alias!r} of {name!r} already points at version "
                            f"{taken[alias]}; left there (move it yourself to use version "
                            f"{version})")
        else:
            client.set_registered_model_alias(name, alias, version)
    return warnings


def _model_id_of(version) -> str | None:
    """SQL registries do not store a version's model id; its source URI names it."""
    source = version.source or ""
    return getattr(version, "model_id", None) or (
        source.removeprefix("models:/") if source.startswith("models:/m-") else None
    )


def _versions_with_digest(client: MlflowClient, digest: str) -> list:
    """Every visible version, of any registered model, imported from an archive with
    ``digest``."""
    try:
        versions = list(_all_versions(client, f"tags.`{DIGEST_TAG}` = {filter_value(digest)}"))
    except MlflowException as exc:
        if is_missing(exc):
            return []
        raise
    return [v for v in versions if (v.tags or {}).get(DIGEST_TAG) == digest]


def _remove_killed_imports(client: MlflowClient, experiment_id: str, digest: str,
                           imported: list) -> None:
    """Delete the logged models and runs that imports of this archive killed half way left in
    the experiment (still marked incomplete, and no version made from them), as a failed
    import would have deleted its own; one a version was made from only loses the mark.

    An import of the same archive into the same experiment still running elsewhere looks the
    same; it then fails and undoes itself (a registry takes one import of an archive at a
    time, or it would get two versions of it anyway)."""
    marked = f"tags.`{INCOMPLETE_TAG}` = {filter_value(digest)}"
    used_models = {_model_id_of(v) for v in imported}
    used_runs = {v.run_id for v in imported}
    for model in _all_logged_models(client, experiment_id, marked):
        if model.model_id in used_models:
            client.delete_logged_model_tag(model.model_id, INCOMPLETE_TAG)
        else:
            client.delete_logged_model(model.model_id)
    for run in _all_runs(client, experiment_id, marked):
        if run.info.run_id in used_runs:
            client.delete_tag(run.info.run_id, INCOMPLETE_TAG)
        else:
            client.delete_run(run.info.run_id)


@dataclass
class KilledImport:
    """A run or logged model an import killed half way left (still marked incomplete, and
    no version made from it)."""

    kind: str  # "run" or "logged model"
    id: str
    experiment_id: str
    digest: str
    age_seconds: float

    def line(self) -> str:
        return (f"{self.kind} {self.id} in experiment {self.experiment_id}: left by an import "
                f"of archive {self.digest[:12]} killed {self.age_seconds / 3600:.1f} hours ago")


def find_killed_imports(tracking_uri: str | None = None, *,
                        older_than: float = 24 * 3600.0) -> list[KilledImport]:
    """Every run and logged model, in every active experiment, that an import left marked
    incomplete more than ``older_than`` seconds ago and no version was made from. (A younger
    one may belong to an import still running.)"""
    client = connect(resolve_tracking_uri(tracking_uri))
    now_ms = time.time() * 1000
    marked = f"tags.`{INCOMPLETE_TAG}` LIKE '%'"
    found: list[KilledImport] = []
    with mlflow_errors("cannot list what killed imports left"):
        for experiment in client.search_experiments(max_results=50000):
            eid = experiment.experiment_id
            for model in _all_logged_models(client, eid, marked):
                digest = (model.tags or {}).get(INCOMPLETE_TAG, "")
                age = (now_ms - (model.creation_timestamp or now_ms)) / 1000
                if age > older_than and not _made_from(client, digest, model_id=model.model_id):
                    found.append(KilledImport("logged model", model.model_id, eid, digest, age))
            for run in _all_runs(client, eid, marked):
                digest = run.data.tags.get(INCOMPLETE_TAG, "")
                age = (now_ms - (run.info.start_time or now_ms)) / 1000
                if age > older_than and not _made_from(client, digest, run_id=run.info.run_id):
                    found.append(KilledImport("run", run.info.run_id, eid, digest, age))
    return found


def remove_killed_imports(found: list[KilledImport], tracking_uri: str | None = None) -> None:
    """Delete what :func:`find_killed_imports` found (runs go to MLflow's deleted state,
    as a failed import's own do)."""
    client = connect(resolve_tracking_uri(tracking_uri))
    with mlflow_errors("cannot delete what killed imports left"):
        for item in found:
            if item.kind == "logged model":
                client.delete_logged_model(item.id)
            else:
                client.delete_run(item.id)


def _made_from(client: MlflowClient, digest: str, *, run_id: str | None = None,
               model_id: str | None = None) -> bool:
    versions = _versions_with_digest(client, digest) if digest else []
    return any((run_id is not None and v.run_id == run_id)
               or (model_id is not None and _model_id_of(v) == model_id) for v in versions)


def _unmark(client: MlflowClient, run_id: str | None, model_id: str | None) -> None:
    """Take the incomplete mark off the run and logged model of a version that exists. Best
    effort: a mark left on them is harmless (a model in use is never deleted for it) and the
    next import of the archive that creates anything takes it off."""
    with contextlib.suppress(MlflowException, OSError):
        if model_id is not None and INCOMPLETE_TAG in (client.get_logged_model(model_id).tags
                                                       or {}):
            client.delete_logged_model_tag(model_id, INCOMPLETE_TAG)
        if run_id is not None and INCOMPLETE_TAG in client.get_run(run_id).data.tags:
            client.delete_tag(run_id, INCOMPLETE_TAG)


def _all_logged_models(client: MlflowClient, experiment_id: str, filter_string: str) -> Iterator:
    token = None
    while True:
        page = client.search_logged_models([experiment_id], filter_string=filter_string,
                                           page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def _all_runs(client: MlflowClient, experiment_id: str, filter_string: str) -> Iterator:
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def _all_versions(client: MlflowClient, filter_string: str) -> Iterator:
    token = None
    while True:
        page = client.search_model_versions(filter_string, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def _experiment_id(client: MlflowClient, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is None:
        return client.create_experiment(name)
    if found.lifecycle_stage == "deleted":
        raise UnsupportedError(
            f"experiment {name!r} is deleted; restore it or pass --experiment with another name"
        )
    return found.experiment_id


def _add_experiment_tags(client, experiment_id: str, tags: dict[str, str]) -> None:
    """The source experiment's tags (its description among them) that the target's lacks;
    a tag the target set itself is left as it is."""
    present = client.get_experiment(experiment_id).tags or {}
    for key, value in tags.items():
        if key not in present:
            client.set_experiment_tag(experiment_id, key, value)


def _source_tags(pairs: dict[str, object]) -> dict[str, str]:
    return {
        SOURCE_PREFIX + key: str(value) for key, value in pairs.items() if value not in (None, "")
    }


def _create_run(client, created: _Created, snapshot: Snapshot, experiment_id: str,
                digest: str) -> str | None:
    run = snapshot.run
    if run is None:
        return None
    # The source's parent and root run ids name runs of another server: kept as lineage, and
    # mlflow.parentRunId points at the parent recreated here (or found from an earlier import).
    parent_id = _recreate_parents(client, created, run, experiment_id, snapshot)
    tags = _lineage_tags(run, parent_id)
    tags.update(_source_tags({"run_id": run.run_id, "experiment_id": run.experiment_id,
                              "experiment_name": run.experiment_name, "user_id": run.user_id,
                              "tracking_uri": snapshot.lineage.source_tracking_uri}))
    tags[INCOMPLETE_TAG] = digest
    new = client.create_run(experiment_id, start_time=run.start_time, tags=tags,
                            run_name=run.run_name)
    created.run_id = new.info.run_id
    params = [Param(key, str(value)) for key, value in run.params.items()]
    for start in range(0, len(params), _MAX_PARAMS_PER_BATCH):
        client.log_batch(created.run_id, params=params[start:start + _MAX_PARAMS_PER_BATCH])
    if run.datasets:
        client.log_inputs(created.run_id, datasets=[
            DatasetInput(Dataset(d["name"], d["digest"], d["source_type"], d["source"],
                                 d.get("schema"), d.get("profile")),
                         tags=[InputTag(k, v) for k, v in (d.get("tags") or {}).items()])
            for d in run.datasets])
    return created.run_id


def _lineage_tags(run, parent_id: str | None) -> dict[str, str]:
    tags = {k: v for k, v in run.tags.items() if k not in _SOURCE_ONLY_RUN_TAGS}
    tags.update(_source_tags({key.removeprefix("mlflow."): value for key, value in run.tags.items()
                              if key in _SOURCE_ONLY_RUN_TAGS}))
    if parent_id is not None:
        tags[PARENT_RUN_TAG] = parent_id
    return tags


def _recreate_parents(client, created: _Created, run, experiment_id: str,
                      snapshot: Snapshot) -> str | None:
    """The runs above a nested run, root first, each found again where an earlier import
    made it (by its source run id) or created with its params, tags, metrics and times;
    the target id of the nearest parent, or None for a run that was not nested."""
    parent_id = None
    for parent in reversed(run.parents):
        found = _imported_run(client, experiment_id, parent.run_id)
        if found is None:
            found = _create_parent(client, created, parent, experiment_id, parent_id, snapshot)
        parent_id = found
    return parent_id


def _imported_run(client, experiment_id: str, source_run_id: str) -> str | None:
    runs = client.search_runs([experiment_id], max_results=1, filter_string=(
        f"tags.`{SOURCE_PREFIX}run_id` = {filter_value(source_run_id)}"))
    return runs[0].info.run_id if runs else None


def _create_parent(client, created: _Created, parent, experiment_id: str,
                   grandparent_id: str | None, snapshot: Snapshot) -> str:
    tags = _lineage_tags(parent, grandparent_id)
    tags.update(_source_tags({"run_id": parent.run_id, "experiment_id": parent.experiment_id,
                              "user_id": parent.user_id,
                              "tracking_uri": snapshot.lineage.source_tracking_uri}))
    new = client.create_run(experiment_id, start_time=parent.start_time, tags=tags,
                            run_name=parent.run_name)
    run_id = new.info.run_id
    created.parent_run_ids.append(run_id)
    params = [Param(key, str(value)) for key, value in parent.params.items()]
    for start in range(0, len(params), _MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, params=params[start:start + _MAX_PARAMS_PER_BATCH])
    metrics = (Metric(key, float(p["value"]), int(p["timestamp"]), int(p["step"]))
               for key, history in parent.metrics.items() for p in history)
    while batch := list(itertools.islice(metrics, _MAX_METRICS_PER_BATCH)):
        client.log_batch(run_id, metrics=batch)
    if parent.status in _TERMINAL_STATUSES:
        client.set_terminated(run_id, status=parent.status, end_time=parent.end_time)
    if parent.lifecycle_stage == "deleted":
        client.delete_run(run_id)
    return run_id


def _log_model_inputs(client, run_id: str | None, snapshot: Snapshot, model_id: str) -> None:
    """The LoggedModels the source run took as inputs, where the target has them: this
    import's own, or one an earlier import made (by its ``mlflow_archive.source.model_id``).
    The others are named in ``mlflow_archive.source.model_inputs``."""
    run = snapshot.run
    if run_id is None or run is None or not run.model_inputs:
        return
    own = snapshot.logged_model.model_id if snapshot.logged_model else None
    found, missing = [], []
    for source_id in run.model_inputs:
        target_id = model_id if source_id == own else _imported_logged_model(client, source_id)
        (found if target_id else missing).append(target_id or source_id)
    if found:
        client.log_inputs(run_id, models=[LoggedModelInput(target) for target in found])
    if missing:
        client.set_tag(run_id, SOURCE_PREFIX + "model_inputs", ",".join(missing))


def _imported_logged_model(client, source_model_id: str) -> str | None:
    wanted = f"tags.`{SOURCE_PREFIX}model_id` = {filter_value(source_model_id)}"
    token = None
    while True:
        experiments = client.search_experiments(max_results=1000, page_token=token)
        ids = [experiment.experiment_id for experiment in experiments]
        if ids:
            models = client.search_logged_models(ids, filter_string=wanted, max_results=1)
            if models:
                return models[0].model_id
        token = experiments.token
        if not token:
            return None


def _log_metrics(client, run_id: str | None, snapshot: Snapshot, model_id: str) -> None:
    """Replay the run's metric history; points that belonged to the logged model keep the link."""
    if run_id is None:
        return
    model_points = {
        _identity(p["key"], p): p
        for p in (snapshot.logged_model.metrics if snapshot.logged_model else [])
    }

    def points() -> Iterator[Metric]:  # made one batch at a time, never all at once
        if snapshot.run is not None and snapshot.run.metric_history is not None:
            for point in read_points(snapshot.metrics_file, snapshot.run.metric_history):
                linked = _linked(model_points, point["key"], point)
                yield _metric(point["key"], point, model_id if linked else None, linked)
        for key, history in (snapshot.run.metrics if snapshot.run else {}).items():
            for point in history:
                linked = _linked(model_points, key, point)
                yield _metric(key, point, model_id if linked else None, linked)
        for (key, *_), point in model_points.items():
            yield _metric(key, point, model_id, point)

    pending = points()
    while batch := list(itertools.islice(pending, _MAX_METRICS_PER_BATCH)):
        client.log_batch(run_id, metrics=batch)


def _linked(model_points: dict, key: str, point: dict) -> dict | None:
    """The logged model's copy of a run's point, taken out of ``model_points``. MLflow
    reports a NaN on a LoggedModel as 0.0, so a NaN point also matches a 0.0 copy."""
    linked = model_points.pop(_identity(key, point), None)
    if linked is None and math.isnan(float(point["value"])):
        linked = model_points.pop(_identity(key, {**point, "value": 0.0}), None)
    return linked


def _identity(key: str, point: dict) -> tuple:
    """A point as a dictionary key; repr() makes a NaN equal to another NaN."""
    return key, repr(float(point["value"])), int(point["step"]), int(point["timestamp"])


def _metric(key: str, point: dict, model_id: str | None, linked: dict | None) -> Metric:
    extra = linked or {}
    return Metric(key, float(point["value"]), int(point["timestamp"]), int(point["step"]),
                  model_id=model_id, dataset_name=extra.get("dataset_name"),
                  dataset_digest=extra.get("dataset_digest"))


def _create_logged_model(client, created: _Created, snapshot: Snapshot, experiment_id: str,
                         run_id: str | None, digest: str) -> str:
    logged = snapshot.logged_model
    tags = {k: v for k, v in logged.tags.items() if k not in _MLFLOW_MANAGED_TAGS} if logged else {}
    if logged is not None:
        tags.update(_source_tags({"model_id": logged.model_id,
                                  "creation_timestamp": logged.creation_timestamp,
                                  "experiment_id": logged.experiment_id}))
    tags[INCOMPLETE_TAG] = digest
    model = client.create_logged_model(
        experiment_id=experiment_id,
        name=(logged.name if logged else None) or "model",
        source_run_id=run_id,
        tags=tags,
        params=(dict(logged.params) if logged else None) or None,
        model_type=logged.model_type if logged else None,
    )
    created.model_id = model.model_id
    if run_id is not None and logged is not None and logged.run_output_step is not None:
        client.log_outputs(run_id, [LoggedModelOutput(model.model_id, logged.run_output_step)])
    return model.model_id


def _check_unread_first(tracking_uri: str, extents: dict[Path, Extent]) -> None:
    """Without a server, MLflow writes the files itself and needs them on disk anyway: fill
    the placeholders in before the registry is even touched, each checked against
    checksum.txt and its CRC, so a damaged archive changes nothing. Through a server's
    artifact proxy they are checked as they upload, in one pass, and a mismatch rolls back
    the run and LoggedModel made so far."""
    if extents and not tracking_uri.startswith(("http:", "https:")):
        materialize(extents)


def _check_artifact_space(client, experiment: str, model_dir: Path) -> None:
    """Refuse, before the registry changes, model files that a local artifact store (the
    experiment's, or the store's default root for a new one) has no room for. A server's
    own store is out of sight: its room is not checked."""
    found = client.get_experiment_by_name(experiment)
    root = (found.artifact_location if found is not None
            else getattr(getattr(client._tracking_client, "store", None), "artifact_root_uri",
                         None))
    parsed = urllib.parse.urlparse(root or "")
    if not root or parsed.scheme not in ("", "file") or parsed.netloc not in ("", "localhost"):
        return
    folder = urllib.request.url2pathname(parsed.path) if parsed.scheme == "file" else root
    needed = sum(path.stat().st_size for path in model_dir.rglob("*") if path.is_file())
    check_free_space(resolve(folder), needed, "upload the model to",
                     "import into an experiment whose artifact location has room (--experiment)")


def _check_metric_history(snapshot: Snapshot) -> None:
    """Read the metric history file through once before the registry is touched: a bad
    line refused half way through the replay would leave a deleted run behind."""
    run = snapshot.run
    if run is not None and run.metric_history is not None:
        for _ in read_points(snapshot.metrics_file, run.metric_history):
            pass


def _finish_run(client, run_id: str | None, snapshot: Snapshot) -> None:
    """Close the run with its original status and end time (left running if it was)."""
    run = snapshot.run
    if run_id is not None and run is not None and run.status in _TERMINAL_STATUSES:
        client.set_terminated(run_id, status=run.status, end_time=run.end_time)


def _upload_files(client: MlflowClient, model_id: str, model_dir: Path,
                  extents: dict[Path, Extent]) -> None:
    inside = model_dir.resolve()
    mine = {path: extent for path, extent in extents.items() if inside in path.parents}
    repo = proxied_repository(client, model_id) if mine else None
    if repo is None:
        materialize(mine)  # a store MLflow writes itself: give it the files
        client.log_model_artifacts(model_id, str(model_dir))
    else:
        upload_through_proxy(repo, model_dir, mine)
    expected = {
        path.relative_to(model_dir).as_posix(): path.stat().st_size
        for path in model_dir.rglob("*") if path.is_file()
    }
    uploaded = dict(_listed_files(client, model_id, None))
    wrong = sorted(p for p, size in expected.items() if uploaded.get(p) not in (size, None))
    missing = sorted(set(expected) - set(uploaded))
    if wrong or missing:
        names = ", ".join((missing + wrong)[:5])
        raise TrackingServerError(
            f"the artifact store did not keep every model file intact ({names}); "
            "check the server's artifact storage and retry"
        )
    client.finalize_logged_model(model_id, "READY")


def _listed_files(client: MlflowClient, model_id: str, path: str | None) -> Iterator:
    for info in client.list_logged_model_artifacts(model_id, path):
        if info.is_dir:
            yield from _listed_files(client, model_id, info.path)
        else:
            yield info.path, info.file_size


def _ensure_registered_model(client, created: _Created, snapshot: Snapshot, name: str) -> None:
    source = snapshot.registered_model
    tags = dict(source.tags) if source else {}
    description = source.description if source else None
    try:
        existing = client.get_registered_model(name)
    except MlflowException as exc:
        if not is_missing(exc):
            raise
        client.create_registered_model(name, tags=tags or None, description=description)
        created.registered_model = name
        return
    # Merge: tags already on the target win, so an import never changes what others rely on.
    for key, value in tags.items():
        if key not in (existing.tags or {}):
            client.set_registered_model_tag(name, key, value)
    if description and not existing.description:
        client.update_registered_model(name, description=description)


def _version_tags(snapshot: Snapshot, digest: str) -> dict[str, str]:
    version = snapshot.model_version
    tags = dict(version.tags) if version else {}
    tags[DIGEST_TAG] = digest
    lineage = snapshot.lineage
    tags.update(_source_tags({
        "name": snapshot.registered_model.name if snapshot.registered_model else None,
        "version": version.version if version else None,
        "creation_timestamp": version.creation_timestamp if version else None,
        "last_updated_timestamp": version.last_updated_timestamp if version else None,
        "user_id": version.user_id if version else None,
        "stage": version.current_stage if version and version.current_stage != "None" else None,
        "run_id": snapshot.run.run_id if snapshot.run else (version.run_id if version else None),
        "model_id": snapshot.logged_model.model_id if snapshot.logged_model else None,
        "model_uri": lineage.model_uri,
        "tracking_uri": lineage.source_tracking_uri,
        "exported_at": lineage.exported_at,
    }))
    return tags
