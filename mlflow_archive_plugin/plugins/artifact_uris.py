"""What an ``archive+`` URI means before any byte is read: the fsspec URL it wraps, whether a
tracking server may reach the host it names (MLflow's host policy), and the storage options
its file system gets from the environment."""

from __future__ import annotations

import json
import os
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

PREFIX = "archive+"
# fsspec URLs take storage options; MLflow's users already set this for S3-compatible stores.
S3_ENDPOINT_VARIABLE = "MLFLOW_S3_ENDPOINT_URL"
# A JSON object of fsspec storage options for every archive+ URI (credentials, endpoints ...).
STORAGE_OPTIONS_VARIABLE = "MLFLOW_ARCHIVE_STORAGE_OPTIONS"


def inner_url(artifact_uri: str) -> str:
    """The fsspec URL an ``archive+`` URI wraps; MLflow's rewriting of ``x:///p`` to ``x:/p``
    is undone, and ``archive+file`` gives a plain local path."""
    if not artifact_uri.startswith(PREFIX):
        raise MlflowException(
            f"{artifact_uri!r} is not an archive+ URI; write archive+<fsspec URL>, e.g. "
            "archive+file:///abs/model.zip or archive+s3://bucket/models",
            INVALID_PARAMETER_VALUE,
        )
    inner = artifact_uri[len(PREFIX):]
    scheme, sep, rest = inner.partition(":")
    if not sep or not scheme or "/" in scheme:
        raise MlflowException(f"{artifact_uri!r} names no scheme after archive+; write e.g. "
                              "archive+file:///abs/model.zip", INVALID_PARAMETER_VALUE)
    if scheme == "file":
        path = rest[2:] if rest.startswith("//") else rest
        if path.startswith("localhost/"):
            path = path[len("localhost"):]
        if not path.startswith("/"):
            raise MlflowException(f"{artifact_uri!r} is not an absolute path; write "
                                  "archive+file:///abs/path", INVALID_PARAMETER_VALUE)
        return path
    if rest.startswith("/") and not rest.startswith("//"):
        rest = "//" + rest  # memory:/x -> memory:///x, as the file system expects
    return f"{scheme}:{rest}"


def enforce_host_policy(inner: str) -> None:
    """MLflow's guard against a tracking server connecting to any host a client names
    (GHSA-mr9f-g8qf-4w4j), applied to the wrapped URL: MLflow checks the scheme
    ``archive+ftp``, which it does not know to address a host. Inside a server process an
    ``ftp``/``http(s)`` inner URL must name the host of the server's own artifact root or
    destination (``archive+`` prefixes removed), or its scheme be allowed by
    ``MLFLOW_ALLOWED_HOST_ADDRESSED_ARTIFACT_SCHEMES`` (as ``ftp`` or ``archive+ftp``)."""
    from mlflow.environment_variables import MLFLOW_ALLOWED_HOST_ADDRESSED_ARTIFACT_SCHEMES
    from mlflow.store.artifact import host_policy

    if not host_policy.is_tracking_server_process():
        return
    targets = host_policy.host_addressed_uri_targets(inner)
    if targets is None:
        return
    scheme = inner.split(":", 1)[0].lower()
    allowed = {name.lower() for name in MLFLOW_ALLOWED_HOST_ADDRESSED_ARTIFACT_SCHEMES.get()}
    if scheme in allowed or PREFIX + scheme in allowed:
        return
    trusted: set = set()
    for variable in (host_policy._SERVER_ARTIFACT_ROOT_ENV_VAR,
                     host_policy._SERVER_ARTIFACTS_DESTINATION_ENV_VAR):
        configured = os.environ.get(variable, "")
        if configured.startswith(PREFIX):
            trusted |= host_policy.host_addressed_uri_targets(configured[len(PREFIX):]) or set()
    if not targets & trusted:
        from mlflow_archive_plugin.mlflow_side.tracking import redact_uri

        raise MlflowException(
            host_policy.host_addressed_rejection_message(PREFIX + scheme,
                                                         uri=redact_uri(PREFIX + inner)),
            INVALID_PARAMETER_VALUE,
        )


def storage_options(url: str) -> dict[str, Any]:
    """fsspec storage options for ``url``: ``MLFLOW_ARCHIVE_STORAGE_OPTIONS`` (a JSON
    object), and for S3 MLflow's own ``MLFLOW_S3_ENDPOINT_URL``."""
    options: dict[str, Any] = {}
    raw = os.environ.get(STORAGE_OPTIONS_VARIABLE)
    if raw:
        try:
            parsed = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise MlflowException(f"{STORAGE_OPTIONS_VARIABLE} is not valid JSON ({exc}); set "
                                  'it to an object such as {"anon": false}',
                                  INVALID_PARAMETER_VALUE) from exc
        if not isinstance(parsed, dict):
            raise MlflowException(f"{STORAGE_OPTIONS_VARIABLE} must be a JSON object",
                                  INVALID_PARAMETER_VALUE)
        options.update(parsed)
    if url.startswith(("s3://", "s3a://")) and os.environ.get(S3_ENDPOINT_VARIABLE):
        options.setdefault("endpoint_url", os.environ[S3_ENDPOINT_VARIABLE])
    return options
