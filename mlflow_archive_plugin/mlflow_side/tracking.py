"""Talking to a tracking server or registry: one client, a fast reachability check, one-line errors.

MLflow's REST client retries a dead server for minutes; a short probe first lets a wrong
``--tracking-uri`` fail in seconds with a message that says what to check.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import mlflow
import requests
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    RESOURCE_DOES_NOT_EXIST,
    ErrorCode,
)

from mlflow_archive_plugin.errors import ModelNotFoundError, TrackingServerError, UnsupportedError

# The one redaction of URIs (storage.location's), also imported from here by the MLflow side.
from mlflow_archive_plugin.storage.location import redact_uri

# The tag MLflow keeps on a LoggedModel listing the registered versions made from it.
MLFLOW_MODEL_VERSIONS = "mlflow.modelVersions"

_PROBE_TIMEOUT_SECONDS = 10


def resolve_tracking_uri(tracking_uri: str | None) -> str:
    """The tracking URI to use: the one given, else MLflow's own default resolution."""
    return tracking_uri or mlflow.get_tracking_uri()


def connect(tracking_uri: str | None, registry_uri: str | None = None) -> MlflowClient:
    """A client for the given (or default) tracking URI, after checking the server answers."""
    uri = resolve_tracking_uri(tracking_uri)
    probe(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=registry_uri or uri)


def probe(uri: str) -> None:
    """Fail fast with one line if an HTTP tracking server cannot be reached at all."""
    if not uri.startswith(("http://", "https://")):
        return
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    # A dropped or refused connection may pass: tried up to four more times, 0.2 s, 0.4 s ...
    # apart (MLflow's own client then retries every request it makes the same way).
    session = requests.Session()
    session.mount(uri, HTTPAdapter(max_retries=Retry(total=4, backoff_factor=0.2,
                                                     status=0, allowed_methods=None)))
    try:
        with session:
            session.get(uri.rstrip("/") + "/health", timeout=_PROBE_TIMEOUT_SECONDS)
    except requests.RequestException as exc:
        reason = type(exc).__name__
        raise TrackingServerError(
            f"cannot reach the tracking server at {redact_uri(uri)} ({reason}); "
            "check --tracking-uri and that the server is running"
        ) from exc


def error_code(exc: MlflowException) -> str:
    """The symbolic error code of an MLflow exception (``RESOURCE_DOES_NOT_EXIST``, ...)."""
    return exc.error_code if isinstance(exc.error_code, str) else ErrorCode.Name(exc.error_code)


def is_missing(exc: MlflowException) -> bool:
    """Whether MLflow said the thing asked for does not exist."""
    return error_code(exc) == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextlib.contextmanager
def mlflow_errors(action: str) -> Iterator[None]:
    """Turn MLflow and HTTP failures during ``action`` into one-line plugin errors."""
    try:
        yield
    except MlflowException as exc:
        if is_missing(exc):
            raise ModelNotFoundError(f"{action}: {first_line(exc)}") from exc
        raise TrackingServerError(f"{action}: {first_line(exc)}") from exc
    except requests.RequestException as exc:
        raise TrackingServerError(f"{action}: {first_line(exc)}") from exc


def filter_value(value: str) -> str:
    """``value`` quoted for an MLflow search filter (which knows no backslash escapes)."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise UnsupportedError(f"cannot search MLflow for {value!r}: it holds both quote characters")


@contextlib.contextmanager
def global_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's global tracking URI at ``uri``, then restore it exactly as it was.

    MLflow's own ``_use_tracking_uri`` restores an unset URI by deleting the caller's
    ``MLFLOW_TRACKING_URI`` environment variable; this keeps it.
    """
    from mlflow.tracking._tracking_service import utils

    saved_uri = utils._tracking_uri
    saved_env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved_uri)
        if saved_env is not None:
            os.environ["MLFLOW_TRACKING_URI"] = saved_env


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    """Set environment variables MLflow reads at call time, restoring them afterwards."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
