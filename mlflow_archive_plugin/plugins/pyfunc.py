"""How an archive saved with the ``mlflow_archive`` flavor predicts as a ``python_function``.

Three ways, decided once when the model is saved and recorded in the flavor entry as
``predict_with``:

- ``model``: the archive holds an MLflow model (every archive this plugin writes, and BentoML's
  ``bentoml.mlflow`` exports); it is loaded with ``mlflow.pyfunc`` from the extracted archive.
- ``hooks``: an MLSteam package's ``hooks/load.py`` and ``hooks/predict.py``, called as
  MLSteam's SDK calls them (``load(env=...)``, ``predict(env=..., model=..., inputs=...)``).
- ``predict.py``: a portable package's ``load_model()`` and ``predict(payload)``.

Anything else (a TorchServe handler, a BentoML model of another framework) cannot predict in
this process, and the reason is recorded instead as ``pyfunc_unavailable``. Saving only reads
the archive; the archive's code (hooks, ``predict.py``, pickles) runs only when the model is
loaded. Loading extracts the stored archive afresh through the plugin's reader, checksums and
recorded digest verified, into a temporary folder that lives as long as the loaded model.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import shutil
import sys
import tempfile
import uuid
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow_archive_plugin.errors import (
    ArchiveError,
    CorruptArchiveError,
    UnsupportedError,
)
from mlflow_archive_plugin.snapshot import Snapshot

PREDICTORS = ("model", "hooks", "predict.py")
HOOKS_DIR = "hooks"
MODELS_DIR = "models"
PREDICT_SCRIPT = "predict.py"
MODEL_DIR_ENV = "MLSTEAM_MODEL_DIR"
# The ``model_config`` keys a hooks model takes at load time (``mlflow.pyfunc.load_model(...,
# model_config={...})``), passed to the hooks in ``env``: an encrypted package's key.
HOOK_CONFIG = {"MLSTEAM_MODEL_KEY": None, "MLSTEAM_MODEL_KEY_FILE": None}
# Each hook with the function MLSteam's SDK calls in it; predict.py with the portable pair.
_HOOK_FUNCTIONS = {"load.py": "load", "predict.py": "predict"}
_SCRIPT_FUNCTIONS = ("load_model", "predict")
# MLSteam manifest types (Python annotations) that name one MLflow column type.
_MLSTEAM_COLUMN_TYPES = {"float": "double", "int": "long", "str": "string", "bool": "boolean",
                         "bytes": "binary"}
_OPTIONAL = ("typing.Optional[", "Optional[")


@dataclass(frozen=True)
class Choice:
    """How the archive predicts (``mode``), or why it cannot (``reason``); ``inner`` is the
    folder of the MLflow model inside the archive, when there is one."""

    mode: str | None
    reason: str | None = None
    inner: str | None = None


# --------------------------------------------------------------------------- choosing


def choose(root: Path, layout: str, snapshot: Snapshot | None, asked: str | None = None,
           manifest: Any = None) -> Choice:
    """How the archive extracted at ``root`` predicts: ``asked`` if it can, else the first
    that works of the MLflow model inside, MLSteam hooks and a portable ``predict.py``.
    ``manifest`` is a foreign archive's own manifest (else the snapshot's), to say why it
    cannot predict."""
    if asked is not None and asked not in PREDICTORS:
        raise UnsupportedError(f"unknown predict_with {asked!r}; choose one of: "
                               f"{', '.join(PREDICTORS)} (or leave it out to choose by itself)")
    inner, inner_problem = _inner_model(root, snapshot)
    found = {
        "model": inner_problem,
        "hooks": _hooks_problem(root, layout),
        "predict.py": _script_problem(root, layout),
    }
    if asked is not None:
        if found[asked] is not None:
            raise UnsupportedError(f"the archive cannot predict with {asked}: {found[asked]}")
        return Choice(asked, inner=inner)
    for mode in PREDICTORS:
        if found[mode] is None:
            return Choice(mode, inner=inner)
    if manifest is None and snapshot is not None:
        manifest = snapshot.foreign_manifest
    return Choice(None, _unavailable_reason(layout, manifest, found), inner)


def _inner_model(root: Path, snapshot: Snapshot | None) -> tuple[str | None, str | None]:
    """The folder of the one MLflow model inside the archive, and why it cannot predict."""
    if snapshot is None or snapshot.is_foreign:
        return None, "it holds no MLflow model"
    if len(snapshot.members) > 1:
        return None, (f"it holds {len(snapshot.members)} MLflow models; choose one with "
                      "predict_with='hooks' (MLSteam's predict picks it by inputs['model'])")
    if snapshot.encryption is not None:
        return snapshot.model_path, ("its MLflow model is encrypted; predict_with='hooks' "
                                     "decrypts it with MLSTEAM_MODEL_KEY when it is loaded")
    mlmodel_path = root / snapshot.model_path / "MLmodel"
    if not mlmodel_path.is_file():
        return None, f"it has no {snapshot.model_path}/MLmodel"
    flavors = (read_mlmodel(mlmodel_path).get("flavors") or {})
    if "python_function" not in flavors:
        return snapshot.model_path, (f"the MLflow model in {snapshot.model_path}/ has no "
                                     "python_function flavor")
    return snapshot.model_path, None


def _hooks_problem(root: Path, layout: str) -> str | None:
    if layout != "mlarchive":
        return "it is no MLSteam package (only those carry hooks/)"
    for hook, function in _HOOK_FUNCTIONS.items():
        problem = _defines(root / HOOKS_DIR / hook, f"{HOOKS_DIR}/{hook}", (function,))
        if problem is not None:
            return problem
    return None


def _script_problem(root: Path, layout: str) -> str | None:
    if layout != "portable":
        return "it is no portable package (only those carry a predict.py this plugin runs)"
    return _defines(root / PREDICT_SCRIPT, PREDICT_SCRIPT, _SCRIPT_FUNCTIONS)


def _defines(path: Path, name: str, functions: tuple[str, ...]) -> str | None:
    """Why ``path`` is not a Python file defining ``functions`` at top level, found by parsing
    it (never by running it); None if it is."""
    if not path.is_file():
        return f"it has no {name}"
    try:
        tree = ast.parse(path.read_bytes(), filename=name)
    except (SyntaxError, ValueError) as exc:
        return f"{name} is not valid Python ({exc})"
    defined = {node.name for node in tree.body
               if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
    missing = [function for function in functions if function not in defined]
    return f"{name} defines no {missing[0]}()" if missing else None


def _unavailable_reason(layout: str, manifest: Any, found: dict[str, str | None]) -> str:
    """One line on why the archive cannot predict as a python_function, and what to do."""
    if layout == "mar" and isinstance(manifest, dict):
        handler = (manifest.get("model") or {}).get("handler") or "its handler"
        what = (f"a TorchServe archive whose predictions come from {handler}, which runs only "
                "inside TorchServe")
        serve = "serve it with TorchServe"
    elif layout == "bentoml" and isinstance(manifest, dict):
        module = manifest.get("module") or "no module"
        what = (f"a BentoML model of module {module!r}, not bentoml.mlflow, so it holds no "
                "MLflow model")
        serve = "load it with BentoML"
    else:
        what = f"a {layout} archive: {found['model']}"
        serve = "use it with the tool that made it"
    return (f"no python_function flavor: this is {what}, with no MLSteam hooks/ and no portable "
            f"predict.py; {serve}, or get its files with "
            "mlflow_archive_plugin.load_model(model_uri).extract(dst)")


def read_mlmodel(path: Path) -> dict[str, Any]:
    """An MLmodel file as a dict (empty if it cannot be read or is not a YAML mapping), parsed
    within the bounded loader's limits: one past them (a billion laughs, deep nesting) is
    refused with :class:`UnsafeArchiveError`, never parsed."""
    from mlflow_archive_plugin.mlflow_side.source import read_mlmodel_file

    try:
        return read_mlmodel_file(path, what=path.name)
    except (OSError, CorruptArchiveError):
        return {}


def mlsteam_signature(manifest: Any) -> Any:
    """An MLflow signature from an MLSteam manifest's one model's ``inputs`` and ``outputs``,
    when every input is a plain scalar column (``float``, ``int``, ``str``, ``bool``,
    ``bytes``); None otherwise."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    models = manifest.get("models") if isinstance(manifest, dict) else None
    if not isinstance(models, list) or len(models) != 1 or not isinstance(models[0], dict):
        return None

    def schema(fields: Any) -> Any:
        if not isinstance(fields, list) or not fields:
            return None
        specs = []
        for field in fields:
            if not isinstance(field, dict) or not isinstance(field.get("type"), str):
                return None
            kind, required = field["type"].strip(), True
            for prefix in _OPTIONAL:
                if kind.startswith(prefix) and kind.endswith("]"):
                    kind, required = kind[len(prefix):-1].strip(), False
            if kind not in _MLSTEAM_COLUMN_TYPES:
                return None
            specs.append(ColSpec(_MLSTEAM_COLUMN_TYPES[kind], str(field.get("name")),
                                 required=required))
        return Schema(specs)

    inputs = schema(models[0].get("inputs"))
    if inputs is None:
        return None
    return ModelSignature(inputs=inputs, outputs=schema(models[0].get("outputs")))


# --------------------------------------------------------------------------- loading


def load(model_dir: Path, flavor: dict[str, Any], stored: Path,
         model_config: dict[str, Any] | None = None) -> Any:
    """The python_function implementation of a saved archive model: the stored archive is
    extracted (verified) into a temporary folder kept as long as the returned object.

    ``model_config`` entries are added to the ``env`` MLSteam hooks get (a decryption key as
    ``MLSTEAM_MODEL_KEY``, say).
    """
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_STATE


    mode = flavor.get("predict_with")
    if mode not in PREDICTORS:
        raise MlflowException(str(flavor.get("pyfunc_unavailable")
                                  or "the archive model records no way to predict"),
                              INVALID_STATE)
    from mlflow_archive_plugin.mlflow_side.archives import extract_verified

    scratch = Path(tempfile.mkdtemp(prefix="mlflow-archive-pyfunc-"))
    try:
        extract_verified(stored, str(flavor.get("digest") or ""), scratch)
        if mode == "model":
            implementation: Any = _InnerModel(scratch / str(flavor.get("model_path")))
        else:
            implementation = _archive_code(mode, scratch, model_config)
    except ArchiveError as exc:
        shutil.rmtree(scratch, ignore_errors=True)
        raise MlflowException(f"cannot load the archive in {model_dir}: {exc}",
                              INVALID_STATE) from exc
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    # The extracted files stay while the model lives: a model may read them lazily.
    weakref.finalize(implementation, shutil.rmtree, str(scratch), True)
    return implementation


def _archive_code(mode: str, root: Path, model_config: dict[str, Any] | None) -> Any:
    """The hooks or ``predict.py`` model; what their own code raises while loading becomes
    one MlflowException naming the file, as MLflow reports a model that fails to load."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_STATE

    where = f"{HOOKS_DIR}/load.py" if mode == "hooks" else PREDICT_SCRIPT
    try:
        if mode == "hooks":
            env = {key: value for key, value in (model_config or {}).items() if value is not None}
            return _HooksModel(root, env)
        return _ScriptModel(root)
    except MlflowException:
        raise
    except Exception as exc:
        lines = str(exc).strip().splitlines()
        detail = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
        raise MlflowException(f"the archive's {where} failed to load the model ({detail})",
                              INVALID_STATE) from exc


def _import_file(path: Path) -> Any:
    """The module at ``path``, imported under a fresh name (two archives' ``predict.py`` must
    not be one module)."""
    name = f"mlflow_archive_{path.stem}_{uuid.uuid4().hex[:12]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UnsupportedError(f"{path.name} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # pickles and dataclasses look their module up here
    # As when the file is run as a script: modules beside it (hooks/util.py) import by name.
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


class _InnerModel:
    """Predicts with the MLflow model the archive holds, loaded with ``mlflow.pyfunc``."""

    def __init__(self, path: Path) -> None:
        import mlflow.pyfunc

        self._model = mlflow.pyfunc.load_model(str(path))

    def get_raw_model(self) -> Any:
        """The loaded inner ``PyFuncModel``."""
        return self._model

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        """The inner model's predictions for ``data``."""
        if params is None:
            return self._model.predict(data)
        return self._model.predict(data, params=params)


class _HooksModel:
    """Predicts through an MLSteam package's hooks, called as MLSteam's SDK calls them."""

    def __init__(self, root: Path, env: dict[str, Any]) -> None:
        self._env = {MODEL_DIR_ENV: str(root / MODELS_DIR), **env}
        load_hook = _import_file(root / HOOKS_DIR / "load.py")
        self._predict_hook = _import_file(root / HOOKS_DIR / "predict.py")
        self._model = load_hook.load(env=self._env)

    def get_raw_model(self) -> Any:
        """What ``load()`` returned."""
        return self._model

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        """``hooks/predict.py``'s ``predict`` on ``data`` (``params`` passed when given)."""
        extra = {} if params is None else {"params": params}
        return self._predict_hook.predict(env=self._env, model=self._model, inputs=data,
                                          **extra)


class _ScriptModel:
    """Predicts through a portable package's ``predict.py``: ``load_model()`` once, then
    ``predict(payload)`` with the input as a scoring-server body."""

    def __init__(self, root: Path) -> None:
        self._script = _import_file(root / PREDICT_SCRIPT)
        self._model = self._script.load_model()

    def get_raw_model(self) -> Any:
        """What ``load_model()`` returned."""
        return self._model

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        """``predict(payload)``'s ``predictions``: an array, or a DataFrame for records."""
        result = self._script.predict(serving_payload(data, params))
        if isinstance(result, dict) and "predictions" in result:
            return _as_output(result["predictions"])
        return result


def serving_payload(data: Any, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """``data`` (a DataFrame, an array, a dict of arrays, a list, or JSON text) as the body
    MLflow's scoring server reads."""
    import numpy as np
    import pandas as pd

    if isinstance(data, (str, bytes, bytearray)):
        payload = json.loads(data)
    elif isinstance(data, pd.DataFrame):
        payload = {"dataframe_split": json.loads(data.to_json(orient="split", index=False))}
    elif isinstance(data, np.ndarray):
        payload = {"inputs": data.tolist()}
    elif isinstance(data, dict) and not any(key in data for key in (
            "dataframe_split", "dataframe_records", "inputs", "instances")):
        payload = {"inputs": {key: np.asarray(value).tolist() for key, value in data.items()}}
    elif isinstance(data, list):
        payload = {"inputs": data}
    else:
        payload = dict(data)
    if not isinstance(payload, dict):
        raise TypeError(f"the input must be a JSON object, not {type(payload).__name__}")
    if params is not None:
        payload["params"] = params
    return payload


def _as_output(predictions: Any) -> Any:
    import numpy as np
    import pandas as pd

    if isinstance(predictions, list) and predictions and all(
            isinstance(row, dict) for row in predictions):
        return pd.DataFrame(predictions)
    if isinstance(predictions, list):
        return np.asarray(predictions)
    return predictions


