"""What a deployment target URI and its ``-C`` settings mean, checked before anything is
written: the store a URI names, the deployment's name, flavor and endpoint, and each setting's
value (format and container, signing key, port, host), and the export they ask for."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import click
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from mlflow_archive_plugin.errors import UnsupportedError
from mlflow_archive_plugin.mlflow_side.archives import (
    check_format,
    default_container,
    format_containers,
)

TARGET_NAME = "archive"
DEFAULT_STORE = "mlflow-archive-deployments"
# Every deployment is served and predicted through pyfunc, whatever the archive's layout.
FLAVOR = "python_function"
DEFAULT_FORMAT = "mlflow"
ARCHIVE_KEYS = ("format", "container", "sign_key")
SERVE_KEYS = ("port", "host")
# A name becomes a folder of the store, locally and in object stores alike.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class DeploymentError(MlflowException, click.ClickException):
    """A deployments call that cannot be done, in one line that says what to do instead.

    It is an :class:`~mlflow.exceptions.MlflowException` for callers of the Python API (with
    MLflow's error codes), and a click exception too, so ``mlflow deployments`` prints it as
    ``Error: <message>`` and exits 1 instead of showing a traceback.
    """

    def __init__(self, message: str, error_code: int = INVALID_PARAMETER_VALUE) -> None:
        super().__init__(message, error_code=error_code)


def _store_url(target_uri: str) -> str:
    """The store a target URI names: ``archive`` -> the default folder in the working
    directory, ``archive:/path`` -> /path, ``archive:rel`` -> rel, ``archive:/s3://b/p`` ->
    s3://b/p (MLflow may also hand over ``archive:///path``)."""
    scheme, _, rest = target_uri.partition(":")
    if scheme != TARGET_NAME:
        raise DeploymentError(f"{target_uri!r} is not an archive target URI; use archive or "
                              "archive:/<store path or URL>")
    if rest.strip() in ("", "/"):
        return os.path.abspath(DEFAULT_STORE)
    bare = rest.lstrip("/")
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", bare):
        return bare
    if rest.startswith("/"):
        return "/" + bare
    return os.path.abspath(rest)


def _storage_options(store: str) -> dict[str, Any]:
    """File system options for the store: for s3://, MLflow's own MLFLOW_S3_ENDPOINT_URL, so
    a store on a MinIO or other S3-compatible server works as MLflow's artifacts do."""
    endpoint = os.environ.get("MLFLOW_S3_ENDPOINT_URL")
    if store.startswith(("s3://", "s3a://")) and endpoint:
        return {"endpoint_url": endpoint}
    return {}


def _check_name(name: str | None) -> None:
    if not name or not NAME_PATTERN.fullmatch(name):
        raise DeploymentError(
            f"deployment name {name!r} is not usable as a folder name; use up to 128 letters, "
            "digits, '.', '_' or '-', starting with a letter or digit"
        )


def _check_flavor(flavor: str | None) -> None:
    if flavor not in (None, FLAVOR):
        raise DeploymentError(f"flavor {flavor!r} is not offered: the archive target loads "
                              f"and serves every model through {FLAVOR}; drop --flavor")


def _check_endpoint(endpoint: str | None) -> None:
    if endpoint is not None:
        raise DeploymentError("the archive target has no endpoints; drop --endpoint")


def _checked_config(config: dict[str, str] | None, *,
                    allowed: tuple[str, ...]) -> dict[str, str]:
    """``config`` (whose values MLflow's CLI gives as strings) with every key known."""
    settings = {str(key): str(value) for key, value in (config or {}).items()}
    unknown = sorted(set(settings) - set(allowed))
    if unknown:
        known = ", ".join(allowed) if allowed else "none"
        raise DeploymentError(f"unknown config key {unknown[0]!r}; known keys: {known} "
                              "(see `mlflow deployments help -t archive`)")
    return settings


def _checked_values(settings: dict[str, str]) -> dict[str, str]:
    """``settings`` once every value is valid, checked before anything is written."""
    for key, value in settings.items():
        _check_value(key, value, settings)
    return settings


def _check_value(key: str, value: str, settings: dict[str, str]) -> None:
    if key in ("format", "container"):
        format = settings.get("format") or DEFAULT_FORMAT
        try:
            check_format(format, settings.get("container") if key == "container" else None)
        except UnsupportedError as exc:
            raise DeploymentError(str(exc)) from None
    if key == "sign_key" and not Path(value).expanduser().is_file():
        raise DeploymentError(f"sign_key {value!r} is not a file; give the path of a PEM "
                              "elliptic-curve private key")
    if key == "port":
        _port(value)
    if key == "host" and not value.strip():
        raise DeploymentError("host is empty; give an address such as 127.0.0.1")


def _port(value: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise DeploymentError(f"port {value!r} is not a TCP port; give a number from 1 to 65535")
    return int(value)


def _export_options(settings: dict[str, str]) -> dict[str, Any]:
    """export_model's keyword arguments for a deployment's settings. A format whose default
    container is a folder is deployed as a zip: one file is what a store keeps, replaces
    and hashes in one piece."""
    format = settings.get("format") or DEFAULT_FORMAT
    kinds = format_containers()[format]
    container = settings.get("container") or default_container(format)
    if container == "folder" and "container" not in settings:
        container = "zip" if "zip" in kinds else kinds[0]
    sign_key = settings.get("sign_key")
    return {
        "format": format,
        "container": container,
        "sign_key": Path(sign_key).expanduser() if sign_key else None,
    }
