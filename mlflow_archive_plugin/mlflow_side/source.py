"""Read a model URI, its files and its registry and run metadata into a Snapshot (export side)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
import shutil
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mlflow_archive_plugin.errors import (
    ArchiveError,
    CorruptArchiveError,
    ModelNotFoundError,
    UnsafeArchiveError,
)
from mlflow_archive_plugin.mlflow_side.served import stream_from_server
from mlflow_archive_plugin.mlflow_side.tracking import (
    MLFLOW_MODEL_VERSIONS,
    connect,
    environment,
    filter_value,
    is_missing,
    mlflow_errors,
    resolve_tracking_uri,
)
from mlflow_archive_plugin.snapshot import (
    METRICS_NAME,
    Lineage,
    LoggedModelInfo,
    ModelVersionInfo,
    RegisteredModelInfo,
    RunInfo,
    Snapshot,
)
from mlflow_archive_plugin.snapshot.metrics import MetricWriter
from mlflow_archive_plugin.storage.location import redact_data, redact_uri, secret_uris
from mlflow_archive_plugin.trust.parsing import load_mlmodel, load_yaml

_LOGGED_MODEL = re.compile(r"^models:/(m-[0-9a-f]+)/?$")
_BY_ALIAS = re.compile(r"^models:/([^/@]+)@([^/]+)/?$")
_BY_VERSION = re.compile(r"^models:/([^/@]+)/([^/]+)/?$")
_RUNS = re.compile(r"^runs:/([^/]+)/(.+?)/?$")
# Metric points fetched per request at export (MLflow's server pages its metric history).
_METRIC_PAGE = 25_000
PARENT_RUN_TAG = "mlflow.parentRunId"
# How many runs above a nested run are kept, and how many metric points of each, inline.
_MAX_PARENTS = 20
_MAX_PARENT_POINTS = 100_000


def read_model(
    model_uri: str,
    download_dir: Path,
    *,
    tracking_uri: str | None = None,
    registry_uri: str | None = None,
    stream: bool = True,
    follow_symlinks: bool = False,
) -> Snapshot:
    """Resolve ``model_uri``, download its files into ``download_dir`` and collect its metadata.

    Where the model's files already sit on this machine (a local artifact store), the snapshot
    points at them where they are, to be read once by the archive writer rather than copied
    first; nothing on the export path writes into ``model_dir``. Behind a server's artifact
    proxy, with ``stream``, large files are left to be streamed by the archive writer
    (``Snapshot.deferred``).

    Nothing that is not the model's is packed: a symbolic link in the model folder that leads
    outside it (or nowhere) is refused in one line unless ``follow_symlinks``, and then its
    target's bytes are packed as a regular file under the link's name, as are those of a link
    that stays inside. Every URI the snapshot records (lineage, registry and run metadata,
    ``MLmodel``) has its user name, password and secret query parameters removed; where the
    ``MLmodel`` file holds such a URI, the archive gets a rewritten copy (see
    :func:`redacted_mlmodel`), placed with the model's other files in ``download_dir``.
    """
    tracking_uri = resolve_tracking_uri(tracking_uri)
    registry_uri = registry_uri or tracking_uri
    client = connect(tracking_uri, registry_uri)
    with mlflow_errors(f"cannot read {model_uri}"):
        version, logged, files_uri = _resolve(client, model_uri)
        registered = _registered_model(client, version.name) if version is not None else None
        run_id = (
            (version.run_id if version is not None else None)
            or (logged.source_run_id if logged is not None else None)
            or ((match := _RUNS.match(model_uri)) and match.group(1))
        )
        metrics_file = download_dir.with_name(f"{download_dir.name}-{METRICS_NAME}")
        run = _run(client, run_id, metrics_file) if run_id else None
        if logged is not None and run is not None:
            logged_info = _logged_info(logged)
            logged_info.run_output_step = _output_step(client, run.run_id, logged.model_id)
        else:
            logged_info = _logged_info(logged) if logged is not None else None
        model_dir = _local_model_dir(_run_artifacts(client, files_uri))
        deferred: dict = {}
        if model_dir is None and stream:
            streamed = stream_from_server(files_uri, download_dir, tracking_uri, registry_uri)
            if streamed is not None:
                model_dir, deferred = _checked_model_dir(download_dir, files_uri), streamed
        if model_dir is None:
            model_dir = _download(files_uri, download_dir, tracking_uri, registry_uri)
    model_dir, mlmodel = _bounded_model(model_dir, download_dir, follow_symlinks=follow_symlinks,
                                        skip=set(deferred))
    return Snapshot(
        model_dir=model_dir,
        mlmodel=mlmodel,
        lineage=Lineage(
            model_uri=redact_uri(model_uri),
            source_tracking_uri=redact_uri(tracking_uri),
            source_registry_uri=redact_uri(registry_uri),
            artifact_uri=redact_uri(files_uri),
            exported_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            plugin_version=_plugin_version(),
            mlflow_version=mlflow.__version__,
        ),
        registered_model=_redacted(registered),
        model_version=_redacted(_version_info(version) if version is not None else None),
        logged_model=_redacted(logged_info),
        run=_redacted(run),
        deferred=deferred,
        metrics_file=metrics_file if run is not None and run.metric_history else None,
    )


def _resolve(client: MlflowClient, uri: str):
    """The model version (if any), logged model (if any) and a URI to download the files from.

    Files are fetched from the logged model's own artifact location (or the version's download
    URI), never through ``models:/``, which MLflow resolves with the *global* tracking URI.
    """
    if match := _LOGGED_MODEL.match(uri):
        logged = client.get_logged_model(match.group(1))
        return _registered_version(client, logged), logged, logged.artifact_location
    if match := _BY_ALIAS.match(uri):
        version = client.get_model_version_by_alias(match.group(1), match.group(2))
        return (version, *_logged_for_version(client, version))
    if match := _BY_VERSION.match(uri):
        name, number = match.groups()
        if number == "latest":
            number = _latest_version(client, name)
        version = client.get_model_version(name, number)
        return (version, *_logged_for_version(client, version))
    if match := _RUNS.match(uri):
        logged = _logged_in_run(client, *match.groups())
        if logged is None:
            return None, None, uri
        return _registered_version(client, logged), logged, logged.artifact_location
    if uri.startswith("models:/"):
        raise ModelNotFoundError(
            f"cannot parse model URI {uri!r}; use models:/<name>/<version>, "
            "models:/<name>@<alias> or models:/m-<id>"
        )
    return None, None, uri


def _registered_version(client: MlflowClient, logged):
    """The first version registered from ``logged``, found through the tag MLflow keeps on it."""
    try:
        entries = json.loads((logged.tags or {}).get(MLFLOW_MODEL_VERSIONS, "[]"))
    except json.JSONDecodeError:
        return None
    for entry in entries if isinstance(entries, list) else []:
        try:
            version = client.get_model_version(entry["name"], str(entry["version"]))
        except (MlflowException, KeyError, TypeError):
            continue
        if version.source == f"models:/{logged.model_id}":
            return version
    return None


def _latest_version(client: MlflowClient, name: str) -> str:
    versions = client.search_model_versions(f"name = {filter_value(name)}")
    if not versions:
        raise ModelNotFoundError(f"registered model {name!r} has no versions")
    return str(max(int(v.version) for v in versions))


def _logged_for_version(client: MlflowClient, version):
    model_id = getattr(version, "model_id", None)
    if not model_id and version.source and (match := _LOGGED_MODEL.match(version.source)):
        model_id = match.group(1)
    if model_id:
        try:
            logged = client.get_logged_model(model_id)
        except MlflowException as exc:
            if not is_missing(exc):
                raise
        else:
            return logged, logged.artifact_location
    return None, client.get_model_version_download_uri(version.name, version.version)


def _logged_in_run(client: MlflowClient, run_id: str, name: str):
    experiment_id = client.get_run(run_id).info.experiment_id
    token = None
    while True:
        page = client.search_logged_models(
            experiment_ids=[experiment_id], filter_string=f"name = {filter_value(name)}",
            page_token=token,
        )
        for logged in page:
            if logged.source_run_id == run_id:
                return logged
        token = page.token
        if not token:
            return None


def _registered_model(client: MlflowClient, name: str) -> RegisteredModelInfo:
    model = client.get_registered_model(name)
    return RegisteredModelInfo(
        name=model.name,
        description=model.description or None,
        tags=dict(model.tags or {}),
        aliases={alias: str(v) for alias, v in (model.aliases or {}).items()},
        creation_timestamp=model.creation_timestamp,
        last_updated_timestamp=model.last_updated_timestamp,
    )


def _version_info(version) -> ModelVersionInfo:
    return ModelVersionInfo(
        version=str(version.version),
        description=version.description or None,
        tags=dict(version.tags or {}),
        aliases=list(version.aliases or []),
        current_stage=version.current_stage,
        status=version.status,
        creation_timestamp=version.creation_timestamp,
        last_updated_timestamp=version.last_updated_timestamp,
        user_id=version.user_id or None,
        source=redact_uri(version.source),
        run_id=version.run_id or None,
        run_link=redact_uri(version.run_link) or None,
    )


def _logged_info(logged) -> LoggedModelInfo:
    return LoggedModelInfo(
        model_id=logged.model_id,
        name=logged.name,
        params=dict(logged.params or {}),
        tags=dict(logged.tags or {}),
        metrics=[_metric_point(m) for m in (logged.metrics or [])],
        model_type=logged.model_type,
        status=str(logged.status) if logged.status is not None else None,
        creation_timestamp=logged.creation_timestamp,
        last_updated_timestamp=logged.last_updated_timestamp,
        experiment_id=logged.experiment_id,
        source_run_id=logged.source_run_id,
    )


def _output_step(client: MlflowClient, run_id: str, model_id: str) -> int | None:
    """The step at which the run recorded the model as an output, if it did."""
    outputs = client.get_run(run_id).outputs
    for output in (outputs.model_outputs if outputs else None) or []:
        if output.model_id == model_id:
            return output.step
    return None


def _metric_point(metric) -> dict:
    point = {"key": metric.key, "value": metric.value, "step": metric.step,
             "timestamp": metric.timestamp}
    for extra in ("dataset_name", "dataset_digest", "run_id"):
        if getattr(metric, extra, None):
            point[extra] = getattr(metric, extra)
    return point


def _run(client: MlflowClient, run_id: str, metrics_file: Path) -> RunInfo | None:
    """The run, its metric history written to ``metrics_file`` one page at a time (a run
    may hold millions of points; none is kept in memory)."""
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        if is_missing(exc):
            return None  # the run was deleted; the model is still worth exporting
        raise
    experiment = client.get_experiment(run.info.experiment_id)
    with MetricWriter(metrics_file) as history:
        for key in sorted(run.data.metrics):
            for m in _metric_history(client, run_id, key):
                history.add(key, m.value, m.step, m.timestamp)
    return RunInfo(
        run_id=run.info.run_id,
        run_name=run.info.run_name,
        experiment_id=run.info.experiment_id,
        experiment_name=experiment.name if experiment is not None else None,
        experiment_tags=dict(experiment.tags or {}) if experiment is not None else {},
        lifecycle_stage=run.info.lifecycle_stage,
        datasets=[_dataset(item) for item in (run.inputs.dataset_inputs if run.inputs else [])],
        parents=_parents(client, run),
        model_inputs=[item.model_id for item in (run.inputs.model_inputs if run.inputs else [])],
        status=run.info.status,
        start_time=run.info.start_time,
        end_time=run.info.end_time,
        user_id=run.info.user_id or None,
        params=dict(run.data.params),
        tags=dict(run.data.tags),
        metric_history=history.summary() if history.points else None,
    )


def _parents(client: MlflowClient, run) -> list[RunInfo]:
    """The runs above a nested run, nearest first, as far as the source still has them."""
    parents: list[RunInfo] = []
    seen = {run.info.run_id}
    parent_id = run.data.tags.get(PARENT_RUN_TAG)
    while parent_id and parent_id not in seen and len(parents) < _MAX_PARENTS:
        seen.add(parent_id)
        try:
            parent = client.get_run(parent_id)
        except MlflowException as exc:
            if is_missing(exc):
                break  # removed by mlflow gc: the chain is kept as far as it goes
            raise
        parents.append(_parent_info(client, parent))
        parent_id = parent.data.tags.get(PARENT_RUN_TAG)
    return parents


def _parent_info(client: MlflowClient, run) -> RunInfo:
    """A parent run, its metric history inline: up to _MAX_PARENT_POINTS points, beyond
    which each metric keeps its latest value only."""
    history: dict[str, list[dict]] = {}
    count = 0
    for key in sorted(run.data.metrics):
        points = []
        for m in _metric_history(client, run.info.run_id, key):
            points.append({"value": m.value, "step": m.step, "timestamp": m.timestamp})
            count += 1
            if count > _MAX_PARENT_POINTS:
                break
        history[key] = points
        if count > _MAX_PARENT_POINTS:
            break
    if count > _MAX_PARENT_POINTS:
        history = {key: [{"value": value, "step": 0, "timestamp": run.info.start_time or 0}]
                   for key, value in run.data.metrics.items()}
    return RunInfo(
        run_id=run.info.run_id,
        run_name=run.info.run_name,
        experiment_id=run.info.experiment_id,
        status=run.info.status,
        start_time=run.info.start_time,
        end_time=run.info.end_time,
        user_id=run.info.user_id or None,
        params=dict(run.data.params),
        tags=dict(run.data.tags),
        metrics=history,
        lifecycle_stage=run.info.lifecycle_stage,
        datasets=[_dataset(item) for item in (run.inputs.dataset_inputs if run.inputs else [])],
    )


def _dataset(item) -> dict:
    """One dataset input of a run, as the document records it."""
    dataset = item.dataset
    return {"name": dataset.name, "digest": dataset.digest, "source_type": dataset.source_type,
            "source": dataset.source, "schema": dataset.schema or None,
            "profile": dataset.profile or None,
            "tags": {tag.key: tag.value for tag in (item.tags or [])}}


def _metric_history(client: MlflowClient, run_id: str, key: str):
    """A metric's points, fetched a page at a time where the store pages (MLflow's client
    returns the whole history as one list)."""
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    if store is None:
        yield from client.get_metric_history(run_id, key)
        return
    token = None
    while True:
        page = store.get_metric_history(run_id, key, max_results=_METRIC_PAGE,
                                        page_token=token)
        yield from page
        token = getattr(page, "token", None)
        if not token:
            return


def _local_model_dir(files_uri: str) -> Path | None:
    """The folder of a model whose artifact URI is a local path or ``file:`` URI, if it holds
    an MLflow model; None for anything MLflow must fetch."""
    path = _local_path(files_uri)
    if path is None:
        return None
    path = path.resolve()
    return path if (path / "MLmodel").is_file() else None


def _download(files_uri: str, download_dir: Path, tracking_uri: str, registry_uri: str) -> Path:
    # MLflow's own download bar would print on every export, terminal or not.
    with environment(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false"):
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=files_uri,
            dst_path=str(download_dir),
            tracking_uri=tracking_uri,
            registry_uri=registry_uri,
        )
    return _checked_model_dir(Path(local), files_uri)


def _checked_model_dir(path: Path, files_uri: str) -> Path:
    if not (path / "MLmodel").is_file():
        raise ModelNotFoundError(
            f"{redact_uri(files_uri)} holds no MLmodel file; point at an MLflow model"
        )
    return path


def _run_artifacts(client: MlflowClient, files_uri: str) -> str:
    """For ``runs:/<run>/<path>``, the run's own artifact location of ``path`` where that is
    a local folder (so its links are checked, not copied through by MLflow's download);
    ``files_uri`` otherwise."""
    match = _RUNS.match(files_uri)
    if match is None:
        return files_uri
    root = client.get_run(match.group(1)).info.artifact_uri or ""
    local = _local_path(root)
    return str(local / match.group(2)) if local is not None else files_uri


def _local_path(uri: str) -> Path | None:
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme == "file" and parts.netloc in ("", "localhost"):
        return Path(urllib.request.url2pathname(parts.path))
    if parts.scheme == "" and uri and not uri.startswith("//"):
        return Path(uri)  # a plain path: '%', '?' and '#' are part of the name
    return None


def _bounded_model(model_dir: Path, download_dir: Path, *, follow_symlinks: bool,
                   skip: set) -> tuple[Path, dict]:
    """The folder to pack and its parsed (redacted) MLmodel, after checking every entry.

    Returns ``model_dir`` itself when it holds no link and its MLmodel no secret; a model
    downloaded into ``download_dir`` gets its MLmodel rewritten where it is. Otherwise (a
    model read where it lies) the files go to a new folder under ``download_dir``, as hard
    links where the file system allows and copies elsewhere, each link as the regular file it
    leads to and MLmodel rewritten: the model's own folder is never written to.
    """
    files, linked = model_tree(model_dir, follow_symlinks=follow_symlinks)
    raw = files["MLmodel"].read_bytes() if "MLmodel" in files else b""
    rewritten = redacted_mlmodel(raw)
    mlmodel = _parse_mlmodel(rewritten if rewritten is not None else raw)
    if not linked and rewritten is None:
        return model_dir, mlmodel
    here = model_dir.resolve()
    if not linked and (here == download_dir.resolve() or download_dir.resolve() in here.parents):
        (model_dir / "MLmodel").write_bytes(rewritten)  # our own download: fixed in place
        return model_dir, mlmodel
    if skip:
        raise UnsafeArchiveError(f"refused model files {sorted(linked)[:1]!r}: symbolic links "
                                 "in a model streamed from a server; download it instead")
    target = Path(tempfile.mkdtemp(prefix="model-", dir=download_dir))
    for name, real in files.items():
        dest = target / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if name == "MLmodel" and rewritten is not None:
            dest.write_bytes(rewritten)
        else:
            _link_or_copy(real, dest)
    return target, mlmodel


def _link_or_copy(source: Path, dest: Path) -> None:
    try:
        os.link(source, dest)
    except OSError:
        shutil.copyfile(source, dest)


def model_tree(model_dir: Path, *, follow_symlinks: bool = False
               ) -> tuple[dict[str, Path], set[str]]:
    """Every file of the model folder by its POSIX name, with the real file holding its
    bytes, and the names that are (or lie under) symbolic links.

    A link is refused in one line when it leads outside ``model_dir`` (unless
    ``follow_symlinks``), nowhere (dangling), or to a folder that holds it (a loop); a special
    file (FIFO, socket, device) is refused always. A link to a folder brings that folder's
    files under the link's name.
    """
    root = model_dir.resolve()
    files: dict[str, Path] = {}
    linked: set[str] = set()

    def visit(folder: Path, prefix: str, ancestors: frozenset, via_link: bool) -> None:
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=lambda entry: entry.name)
        for entry in entries:
            name, path = prefix + entry.name, Path(entry.path)
            if entry.is_symlink():
                real = _link_target(path, name, root, follow_symlinks)
                if real.is_dir():
                    if real in ancestors or real == root:
                        _refuse_link(name, path, "a folder that contains the link (a loop)",
                                     "replace the link with the files it should hold")
                    visit(real, name + "/", ancestors | {real}, True)
                elif real.is_file():
                    files[name] = real
                    linked.add(name)
                else:
                    _refuse_special(name)
            elif entry.is_dir(follow_symlinks=False):
                visit(path, name + "/", ancestors | {path.resolve()}, via_link)
            elif entry.is_file(follow_symlinks=False):
                files[name] = path
                if via_link:
                    linked.add(name)
            else:
                _refuse_special(name)

    visit(root, "", frozenset({root}), False)
    return files, linked


def _link_target(path: Path, name: str, root: Path, follow_symlinks: bool) -> Path:
    real = path.resolve()
    if not real.exists():
        _refuse_link(name, path, "nothing (a dangling link)",
                     "remove the link or log the file it should point to")
    if not follow_symlinks and real != root and root not in real.parents:
        _refuse_link(name, path, "outside the model folder",
                     "log the file itself into the model, or pass --follow-symlinks "
                     "(follow_symlinks=True) to pack the target's bytes")
    return real


def _refuse_link(name: str, path: Path, where: str, fix: str) -> None:
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    raise UnsafeArchiveError(
        f"refused model file {name!r}: a symbolic link to {target!r}, which leads to {where}; "
        f"{fix}"
    )


def _refuse_special(name: str) -> None:
    raise UnsafeArchiveError(
        f"refused model file {name!r}: not a regular file (a FIFO, socket or device); "
        "remove it from the model folder"
    )


def redacted_mlmodel(raw: bytes) -> bytes | None:
    """The ``MLmodel`` file with the secrets of every URI in its string values removed, or
    None when it holds none (the file is then packed byte for byte).

    MLflow needs no credentials from ``MLmodel`` to load a model; the values that may hold
    such URIs are ``artifact_path`` (in MLflow 3 the logged model's artifact location),
    ``metadata`` and flavor settings that name a source. Only the URIs change: each is
    replaced where it is written, and the file is dumped again as MLflow writes it only if
    that does not give the same document.
    """
    data = _parse_mlmodel(raw)
    redacted = redact_data(data)
    if redacted == data:
        return None
    text = raw.decode("utf-8")
    for uri in sorted({uri for old in _strings(data) for uri in secret_uris(old)},
                      key=len, reverse=True):
        text = text.replace(uri, redact_uri(uri) or "")
    replaced = text.encode("utf-8")
    try:
        if load_yaml(replaced, what="the model's MLmodel") == redacted:
            return replaced
    except ArchiveError:
        pass
    return _dump_yaml(redacted)


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _dump_yaml(data) -> bytes:
    import yaml

    return yaml.safe_dump(data, default_flow_style=False).encode("utf-8")


def _parse_mlmodel(raw: bytes) -> dict:
    return load_mlmodel(raw, what="the model's MLmodel")


def read_mlmodel_file(path: Path, what: str = "MLmodel") -> dict:
    """The ``MLmodel`` file at ``path`` as a mapping, parsed within the bounded loader's
    limits (:class:`UnsafeArchiveError` past them, :class:`CorruptArchiveError` when it is
    not a YAML mapping); for the entry points, which do not parse archive documents
    themselves."""
    return load_mlmodel(path.read_bytes(), what=what)


def read_model_folder(model_dir: Path, destination: str, *, name: str) -> Snapshot:
    """A snapshot of a plain local MLflow model folder (one MLflow hands an artifact
    repository to store): no registry entry or run to read, so the metadata holds the
    MLmodel (parsed within the bounded loader's limits), the LoggedModel and run ids it names,
    and lineage."""
    path = model_dir / "MLmodel"
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CorruptArchiveError(f"{path} cannot be read ({exc.strerror or exc})") from exc
    mlmodel = load_mlmodel(raw, what=str(path))
    return Snapshot(
        model_dir=model_dir,
        mlmodel=mlmodel,
        lineage=Lineage(
            artifact_uri=redact_uri(destination),
            exported_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            plugin_version=_plugin_version(),
            mlflow_version=mlflow.__version__,
        ),
        logged_model=LoggedModelInfo(
            model_id=str(mlmodel.get("model_id") or ""),
            name=name,
            source_run_id=str(mlmodel["run_id"]) if mlmodel.get("run_id") else None,
        ),
    )


def _redacted(info):
    """A registry or run record with ``redact_text`` applied to every string it holds
    (descriptions, tags, params, sources and links), keys as they are."""
    if info is None:
        return None
    values = {item.name: redact_data(getattr(info, item.name))
              for item in dataclasses.fields(info)}
    if isinstance(info, RunInfo):
        values["parents"] = [_redacted(parent) for parent in info.parents]
    return dataclasses.replace(info, **values)


def _plugin_version() -> str:
    from mlflow_archive_plugin import __version__

    return __version__
