"""The ``archive`` deployments target: ``mlflow deployments ... -t archive[:/<store>]``.

A deployment is an archive kept in a *store* (a local folder or any writable fsspec URL),
next to a small record of what it is::

    <store>/<name>/deployment.json           format, container, digest, size, source, times
    <store>/<name>/<revision>/<archive file>  the archive itself

Each create or update writes the archive under a fresh revision folder and only then
replaces the record (one atomic rename or object upload), so a reader always sees a complete
archive: the old one until the new one is finished, never a half-written one. ``predict``
and ``run-local`` read the archive through the plugin's verifying reader, so what is served
is what its checksums say, and ``predict`` also checks the file against the record.

Nothing in a store is trusted, since anyone who can write to it can plant things there.
A record is read (at most 1 MiB) and checked before anything is done with it: its name,
its revision folder (``r<n>-<8 hex digits>``, as :meth:`ArchiveDeploymentClient._publish`
names them, never ``../../x``), its archive's file name (one plain name) and its location,
which must be that file in that revision folder of this store; the archive is only ever
read from there. In a local store no symbolic link is followed: a deployment folder, record,
revision folder or archive that is a link is refused, so nothing outside the store is read,
written or deleted through one. Each refusal is one line naming the record.

MLflow finds this module through the ``mlflow.deployments`` entry point named ``archive``
and calls :func:`target_help`, :func:`run_local` and :class:`ArchiveDeploymentClient`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import json
import os
import re
import signal
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
from mlflow.deployments import BaseDeploymentClient, PredictionsResponse
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    INVALID_PARAMETER_VALUE,
    RESOURCE_ALREADY_EXISTS,
    RESOURCE_DOES_NOT_EXIST,
)

from mlflow_archive_plugin.errors import ArchiveError
from mlflow_archive_plugin.mlflow_side.archives import (
    FORMATS,
    format_containers,
)
from mlflow_archive_plugin.plugins.deployment_config import (
    ARCHIVE_KEYS,
    DEFAULT_FORMAT,
    DEFAULT_STORE,
    FLAVOR,
    NAME_PATTERN,
    SERVE_KEYS,
    DeploymentError,
    _check_endpoint,
    _check_flavor,
    _check_name,
    _checked_config,
    _checked_values,
    _export_options,
    _port,
    _storage_options,
    _store_url,
)
from mlflow_archive_plugin.plugins.deployment_config import (
    TARGET_NAME as TARGET_NAME,
)
from mlflow_archive_plugin.storage.location import Location, fetched, remote_errors, resolve

RECORD_NAME = "deployment.json"
RECORD_SCHEMA = 1
DEFAULT_PORT = 5000
DEFAULT_HOST = "127.0.0.1"


# The revision folders _publish makes, and the archive file names export writes.
_REVISION_DIR = re.compile(r"r[0-9]{1,9}-[0-9a-f]{8}")
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
# A record is a few hundred bytes; anything past this is no record of this plugin's.
MAX_RECORD_BYTES = 1024 * 1024
_HASH_BLOCK = 1024 * 1024


@contextlib.contextmanager
def _as_deployment_error(what: str | None) -> Iterator[None]:
    """Turn the plugin's and MLflow's own failures inside the block into one
    :class:`DeploymentError` line, starting with ``what`` when given."""
    prefix = f"{what}: " if what else ""
    try:
        yield
    except DeploymentError:
        raise
    except ArchiveError as exc:
        raise DeploymentError(prefix + _first_line(str(exc))) from exc
    except MlflowException as exc:
        raise DeploymentError(prefix + _first_line(exc.message),
                              _error_number(exc.get_error_code())) from exc


def _reported(method: Callable[..., Any]) -> Callable[..., Any]:
    """A client verb whose failures on the way (an unreachable store, a refused write) are
    reported as a :class:`DeploymentError`, which is what MLflow expects of a plugin; the
    messages already name the location."""
    @functools.wraps(method)
    def verb(self, *args, **kwargs):
        with _as_deployment_error(None):
            return method(self, *args, **kwargs)

    return verb


def target_help() -> str:
    """What ``mlflow deployments help -t archive`` prints: the URI forms and every -C key."""
    formats = ", ".join(FORMATS)
    containers = "\n".join(
        f"                       {name:10} {', '.join(kinds)}"
        for name, kinds in format_containers().items()
    )
    return f"""\
Target "archive": deploy a model by writing it as a verified archive into a store.

Target URI
  archive                  the store ./{DEFAULT_STORE} in the working directory
  archive:/<path>          a local folder, e.g. archive:/srv/models
  archive:<relative path>  a folder relative to the working directory
  archive:/<fsspec URL>    any writable fsspec URL, e.g. archive:/s3://bucket/deployments
                           (credentials and endpoint as the file system reads them from the
                           environment; for s3://, MLFLOW_S3_ENDPOINT_URL is honoured)

Each deployment NAME is kept as <store>/NAME/deployment.json (format, container, file,
digest, sha256, size, source model URI, created/updated times) beside the archive in a
revision folder. Names: letters, digits, '.', '_' and '-', starting with a letter or digit.

Config (-C KEY=VALUE) for create, update and run-local
  format=FORMAT      archive layout: {formats} (default: {DEFAULT_FORMAT})
  container=NAME     how the files are packed (default: the format's own, but zip where
                     that would be a folder); each format allows:
{containers}
  sign_key=PATH      PEM elliptic-curve private key: sign the model files (OpenSSF
                     model-signing); the signature travels in the archive as model.sig
Config for run-local only
  port=N             port of the scoring server (default: {DEFAULT_PORT})
  host=ADDRESS       interface to listen on (default: {DEFAULT_HOST})

Commands
  create    export -m MODEL_URI as an archive into the store; refuses an existing NAME
  update    re-export with a new -m MODEL_URI and/or -C keys merged into the old ones
            (-C key= with no value drops a key); without -m the deployment's own source
            URI is exported again (an alias such as models:/iris@champion moves with it).
            The old archive stays in place until the new one is complete.
  get       location, format, container, digest, sha256, size, source, times
  list      every deployment in the store
  delete    remove the record, then the archive; deleting a missing NAME only warns
  predict   download and verify the archive, load it with mlflow.pyfunc and predict
  run-local export -m MODEL_URI to a temporary archive (same -C keys), verify it and serve
            it with MLflow's scoring server (POST /invocations), like `mlflow models serve
            --env-manager local`; stop it with Ctrl+C
  explain   not supported

Only --flavor python_function (or no --flavor) is accepted: every archive is loaded and
served through pyfunc. --endpoint is not supported.

Example
  mlflow deployments create -t archive:/srv/models --name iris -m models:/iris/1 \\
      -C format=mar
  mlflow deployments predict -t archive:/srv/models --name iris -I input.json
"""


def run_local(name: str, model_uri: str, flavor: str | None = None,
              config: dict[str, str] | None = None) -> None:
    """Serve ``model_uri`` locally as the archive a deployment would hold, until stopped.

    MLflow calls this without the target URI (``plugin.run_local(name, model_uri, flavor,
    config)``), so no store is involved: the model is exported to a temporary archive with
    the same ``format``/``container``/``sign_key`` keys as ``create``, read back through the
    verifying reader, and served by MLflow's scoring server with the local environment.
    """
    from mlflow.models.flavor_backend_registry import get_flavor_backend

    from mlflow_archive_plugin.api import export_model
    from mlflow_archive_plugin.mlflow_side.materialize import materialize

    _check_name(name)
    _check_flavor(flavor)
    settings = _checked_values(_checked_config(config, allowed=ARCHIVE_KEYS + SERVE_KEYS))
    port = _port(settings.get("port", str(DEFAULT_PORT)))
    host = settings.get("host") or DEFAULT_HOST
    with tempfile.TemporaryDirectory(prefix="mlflow-archive-run-local-") as scratch, \
            _stopped_by_sigterm():
        with _as_deployment_error(f"cannot run {name!r} locally"):
            result = export_model(model_uri, os.path.join(scratch, "archive", ""), progress=False,
                                  **_export_options(settings))
            model_dir = materialize(result.location, Path(scratch, "model"))
        click.echo(f"Serving {model_uri} as {Path(result.location).name} ({result.format}, "
                   f"digest {result.digest}) on http://{host}:{port}/invocations; "
                   "press Ctrl+C to stop", err=True)
        _put_interpreter_on_path()
        # The model is local already; MLflow's copy of it needs no progress bar.
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        backend = get_flavor_backend(str(model_dir), env_manager="local", workers=1,
                                     install_mlflow=False)
        server = backend.serve(model_uri=str(model_dir), port=port, host=host, timeout=None,
                               synchronous=False)
        try:
            code = server.wait()
        finally:
            if server.poll() is None:
                server.terminate()
                server.wait()
        if code not in (0, -signal.SIGTERM):
            raise DeploymentError(f"the scoring server for {name!r} exited with code {code}; "
                                  "see its output above")


class ArchiveDeploymentClient(BaseDeploymentClient):
    """Deployments kept as archives in one store (see the module docstring)."""

    def __init__(self, target_uri: str) -> None:
        super().__init__(target_uri)
        store = _store_url(target_uri)
        self.storage_options = _storage_options(store)
        with _as_deployment_error(f"cannot use the store of {target_uri!r}"):
            self.store: Location = resolve(store, self.storage_options)
        # name -> (sha256 or digest of the archive, loaded pyfunc model, its folder)
        self._loaded: dict[str, tuple[str, Any, tempfile.TemporaryDirectory]] = {}

    # ------------------------------------------------------------------ MLflow's verbs

    @_reported
    def create_deployment(self, name: str, model_uri: str, flavor: str | None = None,
                          config: dict[str, str] | None = None,
                          endpoint: str | None = None) -> dict[str, Any]:
        """Export ``model_uri`` into the store as deployment ``name``; an existing name is
        refused (use update). Returns the deployment's record."""
        _check_name(name)
        _check_flavor(flavor)
        _check_endpoint(endpoint)
        settings = _checked_values(_checked_config(config, allowed=ARCHIVE_KEYS))
        if self._read_record(name) is not None:
            raise DeploymentError(
                f"deployment {name!r} already exists in {self.store.url}; update it with "
                "`mlflow deployments update` or choose another name",
                RESOURCE_ALREADY_EXISTS,
            )
        now = _now()
        record = self._publish(name, model_uri, settings, revision=1, created=now, updated=now)
        try:
            self._write_record(name, record, replace=False)
        except BaseException:
            self._remove(self._folder(name).child(record["revision_dir"]))
            raise
        return _described(record)

    @_reported
    def update_deployment(self, name: str, model_uri: str | None = None,
                          flavor: str | None = None, config: dict[str, str] | None = None,
                          endpoint: str | None = None) -> dict[str, Any]:
        """Re-export deployment ``name`` from ``model_uri`` (default: its own source URI)
        with ``config`` merged into its settings; the previous archive is removed only once
        the new one and its record are in place."""
        _check_flavor(flavor)
        _check_endpoint(endpoint)
        old = self._existing_record(name)
        settings = dict(old.get("config") or {})
        for key, value in _checked_config(config, allowed=ARCHIVE_KEYS).items():
            if value:
                settings[key] = value
            else:
                settings.pop(key, None)
        _checked_values(settings)
        record = self._publish(name, model_uri or old["source"], settings,
                               revision=int(old.get("revision", 0)) + 1,
                               created=old.get("created") or _now(), updated=_now())
        try:
            self._write_record(name, record, replace=True)
        except BaseException:
            self._remove(self._folder(name).child(record["revision_dir"]))
            raise
        if old.get("revision_dir") and old["revision_dir"] != record["revision_dir"]:
            self._remove(self._folder(name).child(old["revision_dir"]), best_effort=True)
        self._loaded.pop(name, None)
        return _described(record)

    @_reported
    def delete_deployment(self, name: str, config: dict[str, str] | None = None,
                          endpoint: str | None = None) -> None:
        """Remove deployment ``name``: its record first (so it disappears at once), then its
        folder. Deleting a name that is not there only warns, as MLflow asks deletion to be
        safe to retry."""
        _check_name(name)
        _check_endpoint(endpoint)
        _checked_config(config, allowed=())
        folder = self._folder(name)
        record = self._record_location(name)
        # A damaged or untrustworthy record is deleted too (that is the way out the messages
        # point to); only what lies in the store is removed, never anything a link leads to.
        self._refuse_links(record)
        if not self._exists(record) and not self._exists(folder):
            click.echo(f"warning: no deployment {name!r} in {self.store.url}; nothing to delete",
                       err=True)
            return
        if self._exists(record):
            self._remove(record)
        self._remove(folder)
        self._loaded.pop(name, None)

    @_reported
    def list_deployments(self, endpoint: str | None = None) -> list[dict[str, Any]]:
        """Every deployment in the store, sorted by name, each as :meth:`get_deployment`
        describes it."""
        _check_endpoint(endpoint)
        with remote_errors(self.store, "read"):
            with contextlib.suppress(Exception):
                self.store.fs.invalidate_cache(self.store.path)
            try:
                entries = self.store.fs.ls(self.store.path, detail=False)
            except FileNotFoundError:
                return []
        names = sorted({str(entry).rstrip("/").rsplit("/", 1)[-1] for entry in entries})
        records = [self._read_record(name) for name in names if NAME_PATTERN.fullmatch(name)]
        return [_described(record) for record in records if record is not None]

    @_reported
    def get_deployment(self, name: str, endpoint: str | None = None) -> dict[str, Any]:
        """Where deployment ``name``'s archive is and what it holds: location, format,
        container, digest, sha256, size, source model URI, revision and times."""
        _check_endpoint(endpoint)
        return _described(self._existing_record(name))

    @_reported
    def predict(self, deployment_name: str | None = None, inputs: Any = None,
                endpoint: str | None = None) -> PredictionsResponse:
        """Predict ``inputs`` with the deployment's archive, loaded locally through pyfunc.

        The archive is checked against its record and its own checksums before it is
        loaded; the loaded model is kept for further calls until the record changes."""
        _check_endpoint(endpoint)
        if deployment_name is None:
            raise DeploymentError("give the deployment to predict with (--name)")
        record = self._existing_record(deployment_name)
        identity = str(record.get("sha256") or record.get("digest"))
        cached = self._loaded.get(deployment_name)
        if cached is None or cached[0] != identity:
            self._loaded[deployment_name] = (identity, *self._load(record))
        model = self._loaded[deployment_name][1]
        try:
            raw = model.predict(inputs)
        except MlflowException as exc:
            raise DeploymentError(f"deployment {deployment_name!r} cannot predict these "
                                  f"inputs: {_first_line(exc.message)}") from exc
        return PredictionsResponse(_jsonable({"predictions": raw}))

    def explain(self, deployment_name: str | None = None, df: Any = None,
                endpoint: str | None = None) -> Any:
        """Not offered: an archive carries no explainer."""
        raise DeploymentError("the archive target does not explain predictions; load the "
                              "model with mlflow.pyfunc and use an explainer such as SHAP")

    # ------------------------------------------------------------------ the store

    def _folder(self, name: str) -> Location:
        return self.store.child(name)

    def _publish(self, name: str, model_uri: str, settings: dict[str, str], *, revision: int,
                 created: str, updated: str) -> dict[str, Any]:
        """Export ``model_uri`` into a fresh revision folder of ``name``; the record to keep.

        A failed export leaves nothing behind: the archive appears only when complete, and
        the revision folder (which only this call uses) is removed."""
        from mlflow_archive_plugin.api import export_model

        revision_dir = f"r{revision}-{uuid.uuid4().hex[:8]}"
        target = self._folder(name).child(revision_dir)
        self._refuse_links(target)
        folder_url = target.url.rstrip("/") + ("/" if not target.is_local else os.sep)
        try:
            with _as_deployment_error(f"cannot deploy {model_uri} as {name!r}"):
                result = export_model(model_uri, folder_url, progress=False,
                                      storage_options=self.storage_options,
                                      **_export_options(settings))
        except BaseException:
            self._remove(target, best_effort=True)
            with contextlib.suppress(Exception):
                if self._read_record(name) is None:
                    self._remove(self._folder(name), best_effort=True)
            raise
        return {
            "schema_version": RECORD_SCHEMA,
            "name": name,
            "flavor": FLAVOR,
            "format": result.format,
            "container": result.container,
            "location": result.location,
            "file": Path(result.location).name,
            "revision": revision,
            "revision_dir": revision_dir,
            "digest": result.digest,
            "sha256": result.sha256,
            "size": result.size,
            "source": model_uri,
            "model_name": result.model_name,
            "model_version": result.model_version,
            "config": dict(settings),
            "warnings": list(result.warnings),
            "created": created,
            "updated": updated,
        }

    def _record_location(self, name: str) -> Location:
        return self._folder(name).child(RECORD_NAME)

    def _read_record(self, name: str) -> dict[str, Any] | None:
        """The record of ``name``, checked (see the module); None if there is none."""
        where = self._record_location(name)
        self._refuse_links(where)
        with remote_errors(where, "read"):
            try:
                with where.fs.open(where.path, "rb") as handle:
                    raw = handle.read(MAX_RECORD_BYTES + 1)
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                return None
        if len(raw) > MAX_RECORD_BYTES:
            raise DeploymentError(f"the record {where.url} is larger than "
                                  f"{MAX_RECORD_BYTES} bytes, so it is no deployment record; "
                                  f"delete deployment {name!r} and create it again")
        try:
            record = json.loads(raw)
        except (ValueError, RecursionError):
            record = None
        if not isinstance(record, dict) or record.get("name") != name:
            raise DeploymentError(f"the record {where.url} is damaged; delete deployment "
                                  f"{name!r} and create it again")
        problem = self._untrusted(record)
        if problem:
            raise DeploymentError(f"the record {where.url} is refused: {problem}; nothing "
                                  f"was read or changed; delete deployment {name!r} and "
                                  "create it again")
        return record

    def _untrusted(self, record: dict[str, Any]) -> str | None:
        """What in ``record`` cannot be trusted, or None: every field that decides what is
        read, written or deleted must name something inside this deployment's folder."""
        revision_dir, file = record.get("revision_dir"), record.get("file")
        if not isinstance(revision_dir, str) or not _REVISION_DIR.fullmatch(revision_dir):
            return (f"its revision folder {revision_dir!r} is not one this store makes "
                    "(r<n>-<8 hex digits>)")
        if not isinstance(file, str) or not _FILE_NAME.fullmatch(file) or ".." in file:
            return f"its archive file name {file!r} is not one plain file name"
        archive = self._archive_location(record)
        location = record.get("location")
        same = location == archive.url or (
            archive.is_local and isinstance(location, str)
            and os.path.abspath(location) == os.path.abspath(archive.path))
        if not same:
            return (f"its location {location!r} is not the archive's place in this store "
                    f"({archive.url})")
        revision = record.get("revision")
        if isinstance(revision, bool) or not isinstance(revision, int) or revision < 1:
            return f"its revision {revision!r} is not a positive number"
        if not isinstance(record.get("source"), str) or not record["source"]:
            return "it names no source model URI"
        config = record.get("config") or {}
        if not isinstance(config, dict) or any(
                key not in ARCHIVE_KEYS or not isinstance(value, str)
                for key, value in config.items()):
            return f"its config holds keys other than {', '.join(ARCHIVE_KEYS)}"
        sha256 = record.get("sha256")
        if sha256 is not None and not (isinstance(sha256, str)
                                       and re.fullmatch(r"[0-9a-f]{64}", sha256)):
            return "its sha256 is not a SHA-256 digest"
        return None

    def _archive_location(self, record: dict[str, Any]) -> Location:
        """Where a (checked) record's archive is: always inside the deployment's folder."""
        return (self._folder(record["name"]).child(record["revision_dir"])
                .child(record["file"]))

    def _refuse_links(self, where: Location) -> None:
        """In a local store, refuse ``where`` if it, or any folder between the store and it,
        is a symbolic link: one planted there could lead anywhere."""
        if not where.is_local:
            return
        root = os.path.abspath(self.store.path)
        path = os.path.abspath(where.path)
        relative = os.path.relpath(path, root)
        if relative == os.curdir:
            return
        if relative.startswith(os.pardir):
            raise DeploymentError(f"{where.url} is outside the store {self.store.url}; "
                                  "nothing there is read or changed")
        current = root
        for part in relative.split(os.sep):
            current = os.path.join(current, part)
            if os.path.islink(current):
                raise DeploymentError(
                    f"{current} is a symbolic link planted in the store {self.store.url}; "
                    "the store follows none (it could lead outside); remove the link"
                )

    def _existing_record(self, name: str) -> dict[str, Any]:
        _check_name(name)
        record = self._read_record(name)
        if record is None:
            raise DeploymentError(
                f"no deployment {name!r} in {self.store.url}; see `mlflow deployments list "
                f"-t {self.target_uri}` for the names there",
                RESOURCE_DOES_NOT_EXIST,
            )
        return record

    def _write_record(self, name: str, record: dict[str, Any], *, replace: bool) -> None:
        """Write the record in one step: a rename over the old one locally, a single upload
        (which object stores make visible only when complete) elsewhere."""
        from mlflow_archive_plugin.storage.location import publish_file

        where = self._record_location(name)
        self._refuse_links(where)
        data = (json.dumps(record, indent=2) + "\n").encode()
        if not replace and self._exists(where):
            raise DeploymentError(f"deployment {name!r} was created meanwhile in "
                                  f"{self.store.url}; update it instead",
                                  RESOURCE_ALREADY_EXISTS)
        if where.is_local:
            tmp = Path(where.path).with_name(f".{RECORD_NAME}.partial-{uuid.uuid4().hex[:12]}")
            try:
                with open(tmp, "xb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, where.path)
            finally:
                tmp.unlink(missing_ok=True)
            return
        with (_as_deployment_error(f"cannot write the record of {name!r}"),
              publish_file(where, force=True) as handle):
            handle.write(data)

    def _exists(self, where: Location) -> bool:
        with remote_errors(where, "reach"):
            with contextlib.suppress(Exception):
                where.fs.invalidate_cache(where.path)
            return bool(where.fs.exists(where.path))

    def _remove(self, where: Location, *, best_effort: bool = False) -> None:
        try:
            self._refuse_links(where)
        except DeploymentError as exc:
            if not best_effort:
                raise
            click.echo(f"warning: {exc.message}; it was left in place", err=True)
            return
        try:
            with remote_errors(where, "write"):
                if where.fs.exists(where.path):
                    where.fs.rm(where.path, recursive=True)
        except ArchiveError as exc:
            if not best_effort:
                raise DeploymentError(str(exc)) from exc
            click.echo(f"warning: {exc}", err=True)

    def _load(self, record: dict[str, Any]) -> tuple[Any, tempfile.TemporaryDirectory]:
        """The record's archive, checked against its sha256, verified and loaded by pyfunc."""
        import mlflow.pyfunc

        from mlflow_archive_plugin.mlflow_side.materialize import materialize

        name = record["name"]
        folder = tempfile.TemporaryDirectory(prefix="mlflow-archive-deployment-")
        try:
            with _as_deployment_error(f"cannot load deployment {name!r}"):
                source = self._archive_location(record)
                self._refuse_links(source)
                with fetched(source) as local:
                    expected = record.get("sha256")
                    if expected and _sha256(Path(local.path)) != expected:
                        raise DeploymentError(
                            f"the archive {record['location']} no longer matches deployment "
                            f"{name!r} (sha256 differs); update or re-create the deployment"
                        )
                    model_dir = materialize(local.path, Path(folder.name, "model"))
            try:
                model = mlflow.pyfunc.load_model(str(model_dir))
            except MlflowException as exc:
                raise DeploymentError(f"deployment {name!r} cannot be loaded by pyfunc: "
                                      f"{_first_line(exc.message)}") from exc
        except BaseException:
            folder.cleanup()
            raise
        return model, folder


# ---------------------------------------------------------------------- helpers


def _error_number(code: str) -> int:
    from mlflow.protos.databricks_pb2 import ErrorCode

    try:
        return ErrorCode.Value(code)
    except ValueError:
        return INVALID_PARAMETER_VALUE


def _described(record: dict[str, Any]) -> dict[str, Any]:
    """What get/list/create/update return: the record without its internal bookkeeping."""
    return {key: value for key, value in record.items()
            if key not in ("schema_version", "revision_dir")}


def _jsonable(response: dict[str, Any]) -> dict[str, Any]:
    """``response`` as plain JSON data, as MLflow's scoring server would send it."""
    from mlflow.utils.proto_json_utils import NumpyEncoder, _get_jsonable_obj

    plain = {key: _get_jsonable_obj(value, pandas_orient="records")
             for key, value in response.items()}
    return json.loads(json.dumps(plain, cls=NumpyEncoder))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(_HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _first_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else "unknown error"


def _put_interpreter_on_path() -> None:
    """MLflow starts the scoring server as ``uvicorn`` through a shell; put this
    interpreter's scripts folder first on PATH so that the uvicorn of this environment is
    found even when it was not activated."""
    scripts = os.path.dirname(sys.executable)
    parts = os.environ.get("PATH", "").split(os.pathsep)
    if scripts not in parts:
        os.environ["PATH"] = os.pathsep.join([scripts, *parts])


@contextlib.contextmanager
def _stopped_by_sigterm():
    """Treat SIGTERM like Ctrl+C while serving, so the scoring server is stopped and the
    temporary archive removed on either."""
    def stop(signum, frame):
        raise KeyboardInterrupt

    # Handlers can only be set from the main thread; elsewhere the caller owns the signals.
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, stop) if main else None
    try:
        yield
    except KeyboardInterrupt:
        click.echo("stopped", err=True)
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
