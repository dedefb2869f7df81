"""The ``mlflow_archive`` flavor: an MLflow model that holds an archive byte for byte.

Two ways make one. :func:`save_model` / :func:`log_model` take any archive the plugin reads
(native, ``.mar``, ``.bentomodel``, ``.mlarchive``, portable; a file or a folder, local or an
fsspec URL), verify it, and keep it as ``archive/<name>``; the MLmodel's flavor entry records
its layout, container, digest, file list and a summary of its manifest. Import of a foreign
archive (a ``.mar`` from torch-model-archiver) stores it the same way through
:func:`save_archive_model`, with its extracted files under ``files/`` for browsing; exporting
such a model in its own layout gives the stored archive back unchanged.

When the archive can predict (an MLflow model inside, MLSteam hooks, a portable
``predict.py``; see :mod:`mlflow_archive_plugin.plugins.pyfunc`) the model also gets a
``python_function`` flavor; otherwise the entry's ``pyfunc_unavailable`` says why.
:func:`load_model` returns an :class:`ArchiveModel` that exposes the archive and extracts it.

This module is imported with the package, so MLflow is imported inside functions only.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import os
import posixpath
import re
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow_archive_plugin.errors import (
    ArchiveError,
    DestinationExistsError,
)
from mlflow_archive_plugin.mlflow_side.archives import (
    Location,
    archive_location,
    archive_members,
    copy_archive,
    file_identity,
    open_verified,
)
from mlflow_archive_plugin.mlflow_side.archives import extract_verified as extract_verified

FLAVOR_NAME = "mlflow_archive"
ARCHIVE_DIR = "archive"
FILES_DIR = "files"
# The distribution a saved model's python_function needs to load (its loader module is here).
DISTRIBUTION = "mlflow-archive-plugin"
# Keys MLflow's Model.log forwards to save_model with the rest of log_model's arguments.
_FORWARDED_BY_MODEL_LOG = ("validate_serving_input",)
_REQUIREMENT_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
# The consumer's own manifest of each layout that has one, and how it is read.
_CONSUMER_MANIFESTS = {"mar": "MAR-INF/MANIFEST.json", "bentoml": "model.yaml",
                       "mlarchive": "manifest.json"}

_logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- import's model


def save_archive_model(
    location: Location,
    container: str,
    extracted: Path,
    path: Path,
    *,
    layout: str,
    manifest: dict[str, Any],
    digest: str,
) -> dict[str, Any]:
    """Write an MLflow model at ``path`` holding the archive at ``location`` (extracted at
    ``extracted``, whose files are moved) and return its MLmodel as a dict.

    A package whose MLSteam hooks or ``predict.py`` can predict gets a ``python_function``
    flavor too; nothing in it is run here.
    """
    from mlflow.models import Model

    from mlflow_archive_plugin import __version__
    from mlflow_archive_plugin.plugins.pyfunc import choose

    files = path / FILES_DIR
    files.mkdir(parents=True)
    for child in extracted.iterdir():
        shutil.move(child, files / child.name)
    name = os.path.basename(location.path.rstrip("/")) or "archive"
    if container == "folder":
        stored = FILES_DIR  # the folder is its files; keeping it twice would add nothing
    else:
        stored = f"{ARCHIVE_DIR}/{name}"
        (path / ARCHIVE_DIR).mkdir()
        copy_archive(location, path / stored)
    choice = choose(files, layout, None, manifest=manifest)
    model = Model()
    model.add_flavor(
        FLAVOR_NAME,
        layout=layout,
        container=container,
        archive=stored,
        file_name=name,
        files=FILES_DIR,
        digest=digest,
        manifest=_json_safe(manifest),
        members=sorted(p.relative_to(files).as_posix() for p in files.rglob("*") if p.is_file()),
        plugin_version=__version__,
        **_prediction_keys(choice),
    )
    if choice.mode is not None:
        from mlflow_archive_plugin.plugins.pyfunc import mlsteam_signature

        _add_pyfunc(model, path, _default_requirements(files, choice), None, None,
                    mode=choice.mode)
        model.signature = mlsteam_signature(manifest) if layout == "mlarchive" else None
    model.save(str(path / "MLmodel"))
    return model.to_dict()


def stored_archive(model_dir: Path, mlmodel: dict[str, Any]) -> tuple[dict[str, Any], Path] | None:
    """The flavor entry and the stored archive of a model saved by this flavor."""
    flavor = (mlmodel.get("flavors") or {}).get(FLAVOR_NAME)
    if not isinstance(flavor, dict) or not isinstance(flavor.get("archive"), str):
        return None
    stored = (model_dir / flavor["archive"]).resolve()
    if model_dir.resolve() not in stored.parents or not stored.exists():
        return None
    return flavor, stored


# --------------------------------------------------------------------------- reading an archive


@dataclass
class _Prepared:
    """An archive copied into a scratch folder and verified there: what is verified is what
    is kept. Single use: saving moves the copy out."""

    url: str
    scratch: Path
    copy: Path
    root: Path
    container: str
    layout: str
    digest: str
    members: list[str]
    snapshot: Any
    choice: Any
    has_document: bool


@contextlib.contextmanager
def _prepared(archive: str | os.PathLike, storage_options: dict | None,
              predict_with: str | None) -> Iterator[_Prepared]:
    """The archive at ``archive`` copied, extracted and verified in a scratch folder, removed
    afterwards; a damaged or unknown archive is a one-line :class:`ArchiveError`."""
    from mlflow_archive_plugin.plugins.pyfunc import choose

    location = archive_location(archive, storage_options)
    name = posixpath.basename(location.path.rstrip("/")) or "archive"
    scratch = Path(tempfile.mkdtemp(prefix="mlflow-archive-flavor-"))
    try:
        copy = scratch / ARCHIVE_DIR / name
        copy.parent.mkdir()
        copy_archive(location, copy)
        root = scratch / "extracted"
        root.mkdir()
        try:
            opened = open_verified(copy, root)
            snapshot = opened.snapshot
            choice = choose(root, snapshot.layout, snapshot, predict_with)
        except ArchiveError as exc:
            raise _refused(exc, location.url) from exc
        yield _Prepared(
            url=location.url,
            scratch=scratch,
            copy=copy,
            root=root,
            container=opened.container,
            layout=snapshot.layout,
            digest=opened.digest,
            members=opened.members,
            snapshot=snapshot,
            choice=choice,
            has_document=opened.has_document,
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _refused(exc: ArchiveError, url: str) -> ArchiveError:
    """``exc`` again, of the same type, its message naming the archive it is about."""
    refused = type(exc)(f"{url} cannot be saved as a model: {exc}")
    refused.__dict__.update(exc.__dict__)
    return refused


# --------------------------------------------------------------------------- save and log


def save_model(
    archive: str | os.PathLike,
    path: str | os.PathLike,
    *,
    signature: Any = None,
    input_example: Any = None,
    pip_requirements: Any = None,
    extra_pip_requirements: Any = None,
    metadata: dict[str, Any] | None = None,
    storage_options: dict | None = None,
    mlflow_model: Any = None,
    predict_with: str | None = None,
    _prepared_archive: _Prepared | None = None,
    **forwarded: Any,
) -> None:
    """Save the archive at ``archive`` as an MLflow model in the new folder ``path``.

    ``archive`` is a local path or fsspec URL (``storage_options`` for its file system) of an
    archive in any layout the plugin reads. It is copied, then verified (checksums, the
    metadata document's file list, the layout's own rules) before anything appears at
    ``path``; a failing archive raises :class:`~mlflow_archive_plugin.errors.ArchiveError`
    and leaves nothing there. The model keeps the archive byte for byte as
    ``archive/<name>`` (a folder archive file for file).

    ``signature`` and ``input_example`` default to those of the MLflow model inside the
    archive, or for an MLSteam package without one, to a signature read from its manifest;
    ``signature=False`` leaves it out. Requirements are pinned: this plugin, MLflow and what
    the inner model needs (``pip_requirements`` replaces them, ``extra_pip_requirements``
    adds to them, as in MLflow's flavors). ``predict_with`` (``model``, ``hooks`` or
    ``predict.py``) picks how the python_function predicts when the archive allows several;
    by default the MLflow model inside, then MLSteam hooks, then a portable ``predict.py``.
    Saving never runs the archive's code.
    """
    unexpected = sorted(set(forwarded) - set(_FORWARDED_BY_MODEL_LOG))
    if unexpected:
        raise TypeError(f"save_model() got an unexpected keyword argument {unexpected[0]!r}")
    from mlflow.utils.environment import _validate_env_arguments

    _validate_env_arguments(None, pip_requirements, extra_pip_requirements)
    target = Path(os.path.abspath(os.fspath(path)))
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise DestinationExistsError(f"{target} already exists and is not empty; save the "
                                     "model to a new folder")
    with contextlib.ExitStack() as stack:
        prepared = _prepared_archive or stack.enter_context(
            _prepared(archive, storage_options, predict_with))
        target.parent.mkdir(parents=True, exist_ok=True)
        # Built beside the target and renamed into place once complete: nothing is ever
        # left at ``path`` by a failure.
        staging = target.parent / f".{target.name}.saving-{uuid.uuid4().hex[:12]}"
        staging.mkdir()
        try:
            _write_model(prepared, staging, mlflow_model=mlflow_model, signature=signature,
                         input_example=input_example, pip_requirements=pip_requirements,
                         extra_pip_requirements=extra_pip_requirements, metadata=metadata)
            if target.exists():
                target.rmdir()
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


def log_model(
    archive: str | os.PathLike,
    name: str | None = None,
    *,
    registered_model_name: str | None = None,
    signature: Any = None,
    input_example: Any = None,
    pip_requirements: Any = None,
    extra_pip_requirements: Any = None,
    metadata: dict[str, Any] | None = None,
    storage_options: dict | None = None,
    predict_with: str | None = None,
    params: dict[str, Any] | None = None,
    tags: dict[str, Any] | None = None,
    model_type: str | None = None,
    step: int = 0,
    model_id: str | None = None,
    await_registration_for: int | None = None,
    **kwargs: Any,
) -> Any:
    """Log the archive at ``archive`` as an MLflow model (a LoggedModel, in the active run if
    there is one) and return its ``ModelInfo``; see :func:`save_model` for what the model
    holds. With ``registered_model_name`` it is also registered as a new version.

    The archive is verified before MLflow creates anything, so a damaged archive leaves no
    half-made LoggedModel behind. Unlike MLflow's own flavors, the input example is not
    checked by loading the model and predicting (that would run the archive's code at log
    time); pass ``validate_serving_input=True`` to check it.
    """
    from mlflow.models import Model
    from mlflow.tracking._model_registry import DEFAULT_AWAIT_MAX_SLEEP_SECONDS

    with _prepared(archive, storage_options, predict_with) as prepared:
        return Model.log(
            artifact_path=None,
            name=name,
            flavor=sys.modules[__name__],
            registered_model_name=registered_model_name,
            await_registration_for=(DEFAULT_AWAIT_MAX_SLEEP_SECONDS
                                    if await_registration_for is None
                                    else await_registration_for),
            metadata=metadata,
            params=params,
            tags=tags,
            model_type=model_type,
            step=step,
            model_id=model_id,
            archive=archive,
            signature=signature,
            input_example=input_example,
            pip_requirements=pip_requirements,
            extra_pip_requirements=extra_pip_requirements,
            storage_options=storage_options,
            predict_with=predict_with,
            _prepared_archive=prepared,
            validate_serving_input=kwargs.pop("validate_serving_input", False),
            **kwargs,
        )


def _write_model(prepared: _Prepared, path: Path, *, mlflow_model: Any, signature: Any,
                 input_example: Any, pip_requirements: Any, extra_pip_requirements: Any,
                 metadata: dict[str, Any] | None) -> None:
    """Everything of the saved model into the empty folder ``path``."""
    from mlflow.models import Model
    from mlflow.models.utils import _save_example
    from mlflow.utils.file_utils import get_total_file_size

    from mlflow_archive_plugin import __version__

    mlflow_model = mlflow_model if mlflow_model is not None else Model()
    stored = path / ARCHIVE_DIR / prepared.copy.name
    stored.parent.mkdir()
    shutil.move(prepared.copy, stored)
    choice = prepared.choice
    inner_dir = prepared.root / choice.inner if choice.inner else None
    if input_example is not None:
        _save_example(mlflow_model, input_example, str(path))
    elif inner_dir is not None and prepared.snapshot.encryption is None:
        _copy_input_example(inner_dir, path, mlflow_model)
    if signature is None:
        signature = _known_signature(prepared, input_example)
    if signature is not False and signature is not None:
        mlflow_model.signature = signature
    if metadata is not None:
        mlflow_model.metadata = metadata
    entry: dict[str, Any] = {
        "layout": prepared.layout,
        "container": prepared.container,
        "archive": stored.relative_to(path).as_posix(),
        "file_name": stored.name,
        "digest": prepared.digest,
        "manifest": _manifest_summary(prepared),
        "members": prepared.members,
        "plugin_version": __version__,
    }
    if stored.is_file():
        entry.update(file_identity(stored))
    if choice.inner is not None:
        entry["model_path"] = choice.inner
    if prepared.has_document:
        entry["document"] = _document_summary(prepared.snapshot)
    entry.update(_prediction_keys(choice))
    mlflow_model.add_flavor(FLAVOR_NAME, **entry)
    _add_pyfunc(mlflow_model, path, _default_requirements(prepared.root, choice, prepared),
                pip_requirements, extra_pip_requirements, pyfunc=choice.mode is not None,
                mode=choice.mode)
    if choice.mode is None:
        _logger.warning("The model of %s gets %s", prepared.url, choice.reason)
    if size := get_total_file_size(str(path)):
        mlflow_model.model_size_bytes = size
    mlflow_model.save(str(path / "MLmodel"))


def _prediction_keys(choice: Any) -> dict[str, Any]:
    if choice.mode is None:
        return {"pyfunc_unavailable": choice.reason}
    return {"predict_with": choice.mode}


def _add_pyfunc(model: Any, path: Path, default_requirements: list[str],
                pip_requirements: Any, extra_pip_requirements: Any, *,
                pyfunc: bool = True, mode: str | None = None) -> None:
    """Write the environment files (``requirements.txt``, ``conda.yaml``,
    ``python_env.yaml``) and, with ``pyfunc``, add the python_function flavor that loads the
    model through this module (taking an MLSteam package's key as ``model_config`` when it
    predicts through hooks)."""
    import yaml
    from mlflow.pyfunc import add_to_model
    from mlflow.utils.environment import (
        _CONDA_ENV_FILE_NAME,
        _CONSTRAINTS_FILE_NAME,
        _PYTHON_ENV_FILE_NAME,
        _REQUIREMENTS_FILE_NAME,
        _process_pip_requirements,
        _PythonEnv,
    )

    from mlflow_archive_plugin.plugins.pyfunc import HOOK_CONFIG

    conda_env, requirements, constraints = _process_pip_requirements(
        default_requirements, pip_requirements, extra_pip_requirements)
    (path / _CONDA_ENV_FILE_NAME).write_text(
        yaml.safe_dump(conda_env, default_flow_style=False), encoding="utf-8")
    if constraints:
        (path / _CONSTRAINTS_FILE_NAME).write_text("\n".join(constraints), encoding="utf-8")
    (path / _REQUIREMENTS_FILE_NAME).write_text("\n".join(requirements), encoding="utf-8")
    _PythonEnv.current().to_yaml(str(path / _PYTHON_ENV_FILE_NAME))
    if pyfunc:
        add_to_model(model, loader_module=__name__, conda_env=_CONDA_ENV_FILE_NAME,
                     python_env=_PYTHON_ENV_FILE_NAME,
                     model_config=dict(HOOK_CONFIG) if mode == "hooks" else None)


def _default_requirements(root: Path, choice: Any, prepared: _Prepared | None = None) -> list[str]:
    """Pinned requirements: those of the MLflow model inside (or of a portable package, for
    ``predict.py``), then this plugin and MLflow, and ``cryptography`` to decrypt a sealed
    package; the archive's own pin of a package wins over ours."""
    source = None
    if choice.mode == "predict.py":
        source = root / "requirements.txt"
    elif choice.inner is not None:
        source = root / choice.inner / "requirements.txt"
    lines: dict[str, str] = {}
    if source is not None and source.is_file():
        for raw in source.read_text(encoding="utf-8", errors="replace").splitlines():
            line = raw.split(" #", 1)[0].strip()
            match = _REQUIREMENT_NAME.match(line)
            if line and not line.startswith(("#", "-")) and match:
                lines.setdefault(_canonical(match.group(1)), line)
    from mlflow_archive_plugin import __version__

    ours = [(DISTRIBUTION, __version__), ("mlflow", _installed("mlflow"))]
    if prepared is not None and prepared.snapshot.encryption is not None:
        ours.append(("cryptography", _installed("cryptography")))
    for name, version in ours:
        if version is not None:
            lines.setdefault(_canonical(name), f"{name}=={version}")
    return list(lines.values())


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _known_signature(prepared: _Prepared, input_example: Any) -> Any:
    """The inner MLflow model's signature (from the metadata document when the model is
    encrypted), else one read from an MLSteam manifest, else one inferred from the input
    example's inputs; None if nothing says."""
    from mlflow.models import ModelSignature, infer_signature

    from mlflow_archive_plugin.plugins.pyfunc import mlsteam_signature, read_mlmodel

    snapshot, choice = prepared.snapshot, prepared.choice
    mlmodel: dict[str, Any] = {}
    if choice.inner is not None:
        mlmodel = (snapshot.mlmodel if snapshot.encryption is not None
                   else read_mlmodel(prepared.root / choice.inner / "MLmodel"))
    if isinstance(mlmodel.get("signature"), dict):
        return ModelSignature.from_dict(mlmodel["signature"])
    if prepared.layout == "mlarchive" and len(snapshot.members) == 1:
        found = mlsteam_signature(_read_consumer_manifest(prepared.root, "mlarchive"))
        if found is not None:
            return found
    if input_example is not None:
        return infer_signature(input_example)
    return None


def _copy_input_example(inner: Path, path: Path, mlflow_model: Any) -> None:
    """Take over the inner model's saved input example (its files and their MLmodel entry)."""
    from mlflow_archive_plugin.plugins.pyfunc import read_mlmodel

    info = read_mlmodel(inner / "MLmodel").get("saved_input_example_info")
    if not isinstance(info, dict):
        return
    names = [info.get(key) for key in ("artifact_path", "serving_input_path")]
    files = [name for name in names if isinstance(name, str)]
    if not files or any(posixpath.basename(name) != name or name in ("", ".", "..")
                        or not (inner / name).is_file() for name in files):
        return  # only plain file names next to MLmodel are examples; anything else is ignored
    for name in files:
        shutil.copyfile(inner / name, path / name)
    mlflow_model.saved_input_example_info = dict(info)


def _read_consumer_manifest(root: Path, layout: str) -> Any:
    name = _CONSUMER_MANIFESTS.get(layout)
    if name is None or not (root / name).is_file():
        return None
    text = (root / name).read_text(encoding="utf-8", errors="replace")
    try:
        if name.endswith(".yaml"):
            import yaml

            return yaml.safe_load(text)
        return json.loads(text)
    except ValueError:
        return None


def _manifest_summary(prepared: _Prepared) -> Any:
    """The consumer's manifest (``MAR-INF/MANIFEST.json``, ``model.yaml``, ``manifest.json``),
    or for the native and portable layouts a summary of ``mlflow-archive.json``."""
    snapshot = prepared.snapshot
    if snapshot.foreign_manifest is not None:
        return _json_safe(snapshot.foreign_manifest)
    consumer = _read_consumer_manifest(prepared.root, prepared.layout)
    if consumer is not None:
        return _json_safe(consumer)
    return _document_summary(snapshot) if prepared.has_document else {}


def _document_summary(snapshot: Any) -> dict[str, Any]:
    """Who the archived model was and where it came from, from ``mlflow-archive.json``."""
    registered, version = snapshot.registered_model, snapshot.model_version
    logged, run, lineage = snapshot.logged_model, snapshot.run, snapshot.lineage
    summary = {
        "format": "mlflow-archive",
        "layout": snapshot.layout,
        "model_path": snapshot.model_path,
        "registered_model": registered.name if registered else None,
        "model_version": version.version if version else None,
        "logged_model": logged.model_id if logged and logged.model_id else None,
        "run_id": run.run_id if run else None,
        "flavors": sorted(snapshot.mlmodel.get("flavors") or {}),
        "models": len(snapshot.members),
        "files": len(snapshot.files),
        "encrypted": snapshot.encryption is not None,
        "model_uri": lineage.model_uri,
        "exported_at": lineage.exported_at,
        "exported_by": (f"mlflow-archive-plugin {lineage.plugin_version}"
                        if lineage.plugin_version else None),
        "mlflow_version": lineage.mlflow_version,
    }
    return {key: value for key, value in summary.items() if value is not None}


def _json_safe(value: Any) -> Any:
    """``value`` with anything JSON cannot hold (a YAML date) as text, as MLflow writes the
    MLmodel both as YAML and as JSON."""
    return json.loads(json.dumps(value, default=str))


# --------------------------------------------------------------------------- load


class ArchiveModel:
    """A model saved with the ``mlflow_archive`` flavor: its stored archive and what the
    MLmodel records about it. Nothing is extracted until :meth:`extract`."""

    def __init__(self, model_dir: Path, flavor: dict[str, Any], stored: Path) -> None:
        self.model_dir = model_dir
        self.flavor = flavor
        self.archive_path = stored

    @property
    def layout(self) -> str:
        """The archive's layout: ``mlflow``, ``mar``, ``bentoml``, ``mlarchive`` or
        ``portable``."""
        return str(self.flavor.get("layout"))

    @property
    def container(self) -> str:
        """How its bytes are packed: ``zip``, ``tar.gz``, ``folder`` ..."""
        return str(self.flavor.get("container"))

    @property
    def manifest(self) -> Any:
        """The consumer's manifest, or a summary of ``mlflow-archive.json``."""
        return self.flavor.get("manifest")

    @property
    def digest(self) -> str:
        """The content digest (SHA-256 of ``checksum.txt``, or of the checksum list its files
        would have for an archive another tool made)."""
        return str(self.flavor.get("digest") or "")

    @property
    def files(self) -> list[str]:
        """The archive's member names, as :meth:`extract` lays them out."""
        members = self.flavor.get("members")
        if isinstance(members, list):
            return [str(member) for member in members]
        return archive_members(self.archive_path)

    @property
    def predict_with(self) -> str | None:
        """How the python_function flavor predicts, or None if the model has none."""
        mode = self.flavor.get("predict_with")
        return str(mode) if mode else None

    @property
    def pyfunc_unavailable(self) -> str | None:
        """Why the model has no python_function flavor, when it has none."""
        reason = self.flavor.get("pyfunc_unavailable")
        return str(reason) if reason else None

    def extract(self, dst: str | os.PathLike) -> Path:
        """Extract the archive into the new or empty folder ``dst`` through the plugin's
        reader (unsafe entries refused), every file checked against its checksum and the
        recorded digest; on failure ``dst`` is left as it was. Returns ``dst``."""
        target = Path(os.path.abspath(os.fspath(dst)))
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise DestinationExistsError(f"{target} already exists and is not empty; extract "
                                         "into a new folder")
        created = not target.exists()
        target.mkdir(parents=True, exist_ok=True)
        work = target / f".extracting-{uuid.uuid4().hex[:12]}"
        work.mkdir()
        try:
            extract_verified(self.archive_path, self.digest, work)
            for child in work.iterdir():
                child.rename(target / child.name)
        except BaseException:
            shutil.rmtree(target if created else work, ignore_errors=True)
            raise
        shutil.rmtree(work, ignore_errors=True)
        return target

    def __repr__(self) -> str:
        return (f"ArchiveModel(layout={self.layout!r}, container={self.container!r}, "
                f"archive={str(self.archive_path)!r}, digest={self.digest!r})")


def load_model(model_uri: str, dst_path: str | None = None) -> ArchiveModel:
    """The archive model at ``model_uri`` (any URI MLflow resolves: ``models:/``,
    ``runs:/``, a local path ...), downloaded to ``dst_path`` (a new temporary folder by
    default)."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST
    from mlflow.tracking.artifact_utils import _download_artifact_from_uri
    from mlflow.utils.model_utils import _get_flavor_configuration

    local = Path(_download_artifact_from_uri(artifact_uri=model_uri, output_path=dst_path))
    flavor = _get_flavor_configuration(model_path=str(local), flavor_name=FLAVOR_NAME)
    found = stored_archive(local, {"flavors": {FLAVOR_NAME: flavor}})
    if found is None:
        raise MlflowException(f"the {FLAVOR_NAME} model at {model_uri} has no stored archive "
                              f"at {flavor.get('archive')!r}; log the archive again",
                              RESOURCE_DOES_NOT_EXIST)
    return ArchiveModel(local, flavor, found[1])


def _load_pyfunc(path: str, model_config: dict[str, Any] | None = None) -> Any:
    """Called by ``mlflow.pyfunc.load_model``: the python_function implementation of the
    archive model at ``path``."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST
    from mlflow.utils.model_utils import _get_flavor_configuration

    from mlflow_archive_plugin.plugins.pyfunc import load

    model_dir = Path(path)
    flavor = _get_flavor_configuration(model_path=str(model_dir), flavor_name=FLAVOR_NAME)
    found = stored_archive(model_dir, {"flavors": {FLAVOR_NAME: flavor}})
    if found is None:
        raise MlflowException(f"the {FLAVOR_NAME} model in {model_dir} has no stored archive "
                              f"at {flavor.get('archive')!r}; log the archive again",
                              RESOURCE_DOES_NOT_EXIST)
    return load(model_dir, flavor, found[1], model_config)


__all__ = ["ARCHIVE_DIR", "FILES_DIR", "FLAVOR_NAME", "ArchiveModel", "extract_verified",
           "load_model", "log_model", "save_archive_model", "save_model", "stored_archive"]
