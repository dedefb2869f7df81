"""Portable package: a folder ``<name>/<version>/`` that loads and predicts offline.

The package holds the MLflow model under ``model/``, a ``requirements.txt`` pinned to exact
versions, ``predict.py`` (``load_model()`` and ``predict(payload)`` through
``mlflow.pyfunc``), ``signature.json`` (inputs and outputs with name, type and shape, null
for any size), an ``example-payload.json`` conforming to it, a ``model-card.md``, and the
shared ``mlflow-archive.json`` and ``checksum.txt``, so ``sha256sum -c checksum.txt`` passes
inside the package folder and importing it back loses nothing. Every container holds the
same two folders; the folder container is the package already unpacked.
"""

from __future__ import annotations

import ast
import datetime
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement

from mlflow_archive_plugin.errors import CorruptArchiveError, IntegrityError, UnsupportedError
from mlflow_archive_plugin.formats.base import Entry, Layout
from mlflow_archive_plugin.formats.mlflow import MlflowLayout, model_files
from mlflow_archive_plugin.snapshot import METADATA_NAME, Snapshot
from mlflow_archive_plugin.trust.parsing import load_json, parse_python

MODEL_DIR = "model"
# Tags holding an MLSteam package's hook files (layouts/mlarchive.py keeps them).
HOOK_TAG_PREFIX = "mlsteam.hook."
REQUIREMENTS_FILE = "requirements.txt"
PREDICT_FILE = "predict.py"
SIGNATURE_FILE = "signature.json"
EXAMPLE_FILE = "example-payload.json"
CARD_FILE = "model-card.md"
PACKAGE_FILES = (REQUIREMENTS_FILE, PREDICT_FILE, SIGNATURE_FILE, EXAMPLE_FILE, CARD_FILE)
# The functions a user of the package calls, as the portable-package convention names them.
PREDICT_FUNCTIONS = ("load_model", "predict")
# Keys of a payload in MLflow's scoring-server form, rather than inputs by name.
SERVING_KEYS = ("dataframe_split", "dataframe_records", "inputs", "instances")
# How long ``verify --run`` lets predict.py take on the example, loading the model included.
RUN_TIMEOUT_SECONDS = 600

_PREDICT_SOURCE = Path(__file__).resolve().parent.parent / "portable_predict.py"
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
# Options that pull other files into a requirements file or install from a source tree:
# nothing a pinned, self-contained requirements.txt can hold.
_FILE_OPTIONS = ("-r", "--requirement", "-c", "--constraint", "-e", "--editable")
_INLINE_COMMENT = re.compile(r"\s+#.*$")
_PINNING_OPERATORS = ("==", "===")


def safe_part(value: str) -> str:
    """``value`` made a portable folder name (letters, digits, ``._-``)."""
    return _UNSAFE_CHARS.sub("_", value).strip("._-") or "model"


def package_path(snapshot: Snapshot) -> str:
    """``<name>/<version>/``: the registered model's name and version, made safe as folders.

    A model that is not registered takes its LoggedModel id as its version.
    """
    if snapshot.model_version is not None:
        version = snapshot.model_version.version
    elif snapshot.logged_model is not None and snapshot.logged_model.model_id:
        version = snapshot.logged_model.model_id
    else:
        version = "unregistered"
    return f"{safe_part(snapshot.display_name)}/{safe_part(str(version))}/"


class PortableLayout(Layout):
    """``<name>/<version>/`` with model, pinned requirements, predict.py, signature and card."""

    name = "portable"
    default_container = "folder"
    containers = ("folder", "zip", "tar.gz")

    def entry_prefix(self, snapshot: Snapshot, container) -> str:
        return package_path(snapshot)

    def file_stem(self, snapshot: Snapshot) -> str:
        name, version = package_path(snapshot).rstrip("/").split("/")
        return f"{name}-v{version}-portable"

    def check_options(self, options: dict[str, Any] | None) -> None:
        if options:
            raise UnsupportedError(
                f"the portable format takes no options (got {', '.join(sorted(options))})"
            )

    def plan(self, snapshot: Snapshot, options: dict[str, Any] | None = None) -> list[Entry]:
        self.check_options(options)
        signature = signature_document(snapshot.mlmodel)
        if signature is None:
            raise UnsupportedError(
                f"{snapshot.display_name} has no signature, which a portable package needs "
                "for signature.json and its example payload; log the model with "
                "input_example= or signature= and export that version"
            )
        snapshot.layout = self.name
        snapshot.model_path = MODEL_DIR
        example = example_payload(snapshot.model_dir, snapshot.mlmodel, signature)
        generated = {
            REQUIREMENTS_FILE: pinned_requirements(snapshot),
            PREDICT_FILE: _PREDICT_SOURCE.read_text(encoding="utf-8"),
            SIGNATURE_FILE: _json_text(signature),
            EXAMPLE_FILE: _json_text(example),
            CARD_FILE: model_card(snapshot, signature),
        }
        return [
            *(Entry(f"{MODEL_DIR}/{path.relative_to(snapshot.model_dir).as_posix()}",
                    source=path) for path in model_files(snapshot.model_dir)),
            *(Entry(name, data=text.encode("utf-8")) for name, text in generated.items()),
        ]

    def detect(self, names: set[str], root: Path) -> bool:
        if METADATA_NAME not in names or not (root / METADATA_NAME).is_file():
            return False
        try:
            document = load_json((root / METADATA_NAME).read_bytes(), what=METADATA_NAME)
        except (CorruptArchiveError, OSError):
            return False  # the native layout reports the malformed document
        return isinstance(document, dict) and document.get("layout") == self.name

    def read(self, root: Path) -> Snapshot:
        """The package's model and registry entry; refused unless its own rules hold."""
        snapshot = MlflowLayout().read(root)
        problems = self.check(root, snapshot)
        if problems:
            more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
            raise IntegrityError(f"portable package failed verification: {problems[0]}{more}",
                                 problems)
        return snapshot

    def check(self, root: Path, snapshot: Snapshot, *, run: bool = False) -> list[str]:
        """Pinned requirements, predict.py's functions, signature.json matching the model,
        and the example payload conforming to it; with ``run``, predict.py on the example in
        a fresh Python process."""
        missing = [name for name in PACKAGE_FILES if not (root / name).is_file()]
        problems = [f"{name}: missing from the package" for name in missing]
        if REQUIREMENTS_FILE not in missing:
            problems += requirement_problems(_read_text(root / REQUIREMENTS_FILE))
        if PREDICT_FILE not in missing:
            problems += predict_source_problems(root / PREDICT_FILE)
        signature = None
        if SIGNATURE_FILE not in missing:
            signature, found = _load_signature(root / SIGNATURE_FILE, snapshot.mlmodel)
            problems += found
        if EXAMPLE_FILE not in missing and signature is not None:
            payload, found = _load_json(root / EXAMPLE_FILE)
            problems += found or [f"{EXAMPLE_FILE}: {problem}"
                                  for problem in payload_problems(payload, signature)]
        if run and not problems:
            problems += run_example(root)
        return problems


# --------------------------------------------------------------------------- requirements


def pinned_requirements(snapshot: Snapshot) -> str:
    """The model's ``requirements.txt`` with every requirement pinned with ``==``.

    A requirement the model left open is pinned to the version installed here, the one the
    export ran with; one that is not installed here, or installed at a version outside its
    range, is a one-line error naming it.
    """
    source = snapshot.model_dir / REQUIREMENTS_FILE
    if not source.is_file():
        mlflow_version = str(snapshot.mlmodel.get("mlflow_version") or "") or _installed("mlflow")
        return f"mlflow=={mlflow_version}\n"
    lines = []
    for number, raw in enumerate(_read_text(source).splitlines(), start=1):
        line = _INLINE_COMMENT.sub("", raw).strip()
        if not line or line.startswith("#"):
            continue
        where = f"the model's {REQUIREMENTS_FILE} line {number} ({line!r})"
        if line.startswith("-"):
            if line.split()[0].split("=")[0] in _FILE_OPTIONS:
                raise UnsupportedError(f"{where} refers to other files, which a portable "
                                       "package cannot pin; log the model with its "
                                       "requirements listed one by one")
            lines.append(line)  # an index option, not a requirement
            continue
        try:
            requirement = Requirement(line)
        except InvalidRequirement as exc:
            raise UnsupportedError(f"{where} is not a valid requirement ({exc})") from exc
        lines.append(line if _is_pinned(requirement) else _pin(requirement, where))
    return "".join(f"{line}\n" for line in lines)


def _is_pinned(requirement: Requirement) -> bool:
    specifiers = list(requirement.specifier)
    return (
        requirement.url is None
        and len(specifiers) == 1
        and specifiers[0].operator in _PINNING_OPERATORS
        and "*" not in specifiers[0].version
    )


def _pin(requirement: Requirement, where: str) -> str:
    if requirement.marker is not None and not requirement.marker.evaluate():
        raise UnsupportedError(f"{where} is not pinned and applies only where "
                               f"'{requirement.marker}' holds, not here, so it cannot be pinned "
                               "to an installed version; pin it when logging the model")
    try:
        version = importlib.metadata.version(requirement.name)
    except importlib.metadata.PackageNotFoundError:
        raise UnsupportedError(f"{where} is not pinned, and {requirement.name} is not installed "
                               "here to pin it to; install it, or log the model with "
                               f"{requirement.name}==<version>, and export again") from None
    if not requirement.specifier.contains(version, prereleases=True):
        raise UnsupportedError(f"{where} is not pinned, and the installed {requirement.name} "
                               f"{version} is outside its range; install a matching version "
                               "and export again")
    extras = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
    marker = f"; {requirement.marker}" if requirement.marker is not None else ""
    return f"{requirement.name}{extras}=={version}{marker}"


def _installed(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        raise UnsupportedError(f"the model has no {REQUIREMENTS_FILE} and {name} is not "
                               "installed here to pin it to; log the model again") from None


def requirement_problems(text: str) -> list[str]:
    """One line for every requirement in ``text`` that is not pinned to one version."""
    problems = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = _INLINE_COMMENT.sub("", raw).strip()
        if not line or line.startswith("#"):
            continue
        where = f"{REQUIREMENTS_FILE}: line {number} {line!r}"
        if line.startswith("-"):
            if line.split()[0].split("=")[0] in _FILE_OPTIONS:
                problems.append(f"{where} refers to other files; list pinned requirements "
                                "instead")
            continue
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            problems.append(f"{where} is not a valid requirement")
            continue
        if not _is_pinned(requirement):
            problems.append(f"{where} is not pinned to one version; write "
                            f"{requirement.name}==<version>")
    return problems


# --------------------------------------------------------------------------- predict.py


def predict_source_problems(path: Path) -> list[str]:
    """Whether ``predict.py`` parses and defines ``load_model`` and ``predict``, read without
    running it; one past the parser's limits is refused (:class:`UnsafeArchiveError`)."""
    try:
        tree = parse_python(path.read_bytes(), what=PREDICT_FILE)
    except CorruptArchiveError as exc:
        return [f"{PREDICT_FILE}: {exc}"]
    defined = {node.name for node in tree.body
               if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
    return [f"{PREDICT_FILE}: defines no {name}() function" for name in PREDICT_FUNCTIONS
            if name not in defined]


# The child's program: predict.py on the example, the verdict written as JSON to argv[1].
_RUNNER = """
import json, sys
def verdict(problem):
    with open(sys.argv[1], "w", encoding="utf-8") as handle:
        json.dump({"problem": problem}, handle)
def first_line(exc):
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__
try:
    from predict import predict
except BaseException as exc:
    verdict(f"importing it failed ({first_line(exc)})")
    raise SystemExit(0)
try:
    with open(sys.argv[2], encoding="utf-8") as handle:
        result = predict(json.load(handle))
except BaseException as exc:
    verdict(f"predict() on {sys.argv[2]} raised {first_line(exc)}")
    raise SystemExit(0)
if not isinstance(result, dict):
    verdict(f"predict() on {sys.argv[2]} returned a {type(result).__name__}, not a dict")
    raise SystemExit(0)
try:
    json.dumps(result)
except (TypeError, ValueError) as exc:
    verdict(f"predict() returned a dict that is not JSON-serializable ({first_line(exc)})")
    raise SystemExit(0)
verdict(None)
"""


def run_example(root: Path) -> list[str]:
    """Run ``predict.py`` on the example payload in a fresh ``sys.executable``, the package
    folder as working directory, as a user would; one line if it fails."""
    with tempfile.TemporaryDirectory(prefix="mlflow-archive-run-") as scratch:
        verdict_path = Path(scratch, "verdict.json")
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        try:
            child = subprocess.run(
                [sys.executable, "-c", _RUNNER, str(verdict_path), EXAMPLE_FILE],
                cwd=root, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_SECONDS,
            )
        except subprocess.TimeoutExpired:
            return [f"{PREDICT_FILE}: predict() on {EXAMPLE_FILE} took longer than "
                    f"{RUN_TIMEOUT_SECONDS} s"]
        if not verdict_path.is_file():
            tail = (child.stderr.strip().splitlines() or ["no output"])[-1][:300]
            return [f"{PREDICT_FILE}: the Python process running it exited with code "
                    f"{child.returncode} before answering ({tail})"]
        problem = json.loads(verdict_path.read_text(encoding="utf-8"))["problem"]
    return [] if problem is None else [f"{PREDICT_FILE}: {problem}"]


# --------------------------------------------------------------------------- signature.json


def signature_document(mlmodel: dict[str, Any]) -> dict[str, Any] | None:
    """``signature.json`` from the MLmodel's signature, or None if the model has none.

    Each input and output has ``name``, ``type``, ``shape`` (null for any size) and ``kind``:
    ``tensor`` (type is the numpy dtype; shape the tensor's) or ``column`` (type is MLflow's
    column type; shape ``[null]``, one value per row; ``required`` says whether it may be
    left out). Parameters, where the model takes any, are listed with their defaults.
    """
    signature = mlmodel.get("signature")
    if not isinstance(signature, dict):
        return None
    inputs = _schema(signature.get("inputs"))
    if not inputs:
        return None
    document: dict[str, Any] = {
        "inputs": _specs(inputs, "input"),
        "outputs": _specs(_schema(signature.get("outputs")), "output"),
    }
    params = _schema(signature.get("params"))
    if params:
        document["params"] = [
            {"name": param.get("name"), "type": param.get("type"),
             "shape": _shape(param.get("shape")) if param.get("shape") is not None else None,
             "default": param.get("default")}
            for param in params
        ]
    return document


def _schema(value: Any) -> list[dict[str, Any]]:
    """An MLmodel signature part: JSON text of a list of specs (None when absent)."""
    if isinstance(value, str):
        try:
            value = load_json(value, what="the MLmodel's signature")
        except CorruptArchiveError:
            return []
    return [spec for spec in value if isinstance(spec, dict)] if isinstance(value, list) else []


def _specs(specs: list[dict[str, Any]], default_name: str) -> list[dict[str, Any]]:
    described = []
    for index, spec in enumerate(specs):
        name = spec.get("name")
        if spec.get("type") == "tensor":
            tensor = spec.get("tensor-spec") or {}
            if name is None:
                name = default_name if len(specs) == 1 else f"{default_name}_{index}"
            entry = {"name": name, "type": str(tensor.get("dtype")),
                     "shape": _shape(tensor.get("shape")), "kind": "tensor"}
        else:
            entry = {"name": name, "type": str(spec.get("type")), "shape": [None],
                     "kind": "column", "required": bool(spec.get("required", True))}
            entry.update({key: spec[key] for key in ("items", "properties", "values")
                          if key in spec})
        described.append(entry)
    return described


def _shape(shape: Any) -> list[int | None]:
    dims = shape if isinstance(shape, (list, tuple)) else [shape]
    return [None if dim is None or dim == -1 else int(dim) for dim in dims]


def _load_signature(path: Path, mlmodel: dict[str, Any]):
    document, problems = _load_json(path)
    if problems:
        return None, problems
    if not isinstance(document, dict) or not isinstance(document.get("inputs"), list):
        return None, [f"{SIGNATURE_FILE}: has no list of inputs"]
    if document != signature_document(mlmodel):
        return document, [f"{SIGNATURE_FILE}: differs from the signature in "
                          f"{MODEL_DIR}/MLmodel; export the package again"]
    return document, []


# --------------------------------------------------------------------------- example payload


def example_payload(model_dir: Path, mlmodel: dict[str, Any],
                    signature: dict[str, Any]) -> dict[str, Any]:
    """The payload ``verify`` runs: the model's logged input example with inputs by name where
    they have names (its serving form otherwise), or, without one, a row generated from the
    signature."""
    logged = _logged_example(model_dir, mlmodel)
    if logged is not None:
        named = _by_name(logged, signature)
        return named if named is not None else logged
    return _generated_example(signature)


def _logged_example(model_dir: Path, mlmodel: dict[str, Any]) -> dict[str, Any] | None:
    info = mlmodel.get("saved_input_example_info")
    relative = info.get("serving_input_path") if isinstance(info, dict) else None
    path = model_dir / str(relative or "serving_input_example.json")
    if not path.is_file() or not path.resolve().is_relative_to(model_dir.resolve()):
        return None
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        return None
    return payload if isinstance(payload, dict) else None


def _by_name(payload: dict[str, Any], signature: dict[str, Any]) -> dict[str, Any] | None:
    """A scoring-server payload with the inputs by name, or None if it cannot say them so."""
    inputs = signature["inputs"]
    names = [spec["name"] for spec in inputs]
    if any(not isinstance(name, str) or name in (*SERVING_KEYS, "params") for name in names):
        return None
    named = _as_named(payload, inputs)
    if named is None or not set(named) <= set(names):
        return None
    if payload.get("params") is not None:
        named["params"] = payload["params"]
    return named


def _as_named(payload: dict[str, Any], inputs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Any payload form (by name, or MLflow's four) as ``{input name: value}``; None if its
    form cannot be read against ``inputs``."""
    names = _input_keys(inputs)
    forms = [key for key in SERVING_KEYS if key in payload]
    if not forms:
        return {key: value for key, value in payload.items() if key != "params"}
    if len(forms) > 1:
        return None
    data = payload[forms[0]]
    columns = bool(inputs) and all(spec["kind"] == "column" for spec in inputs)
    if forms[0] == "dataframe_split":
        if not isinstance(data, dict) or not isinstance(data.get("data"), list):
            return None
        header = data.get("columns", names)
        rows = data["data"]
        if not isinstance(header, list) or not all(isinstance(row, list) for row in rows):
            return None
        return {str(col): [row[i] if i < len(row) else None for row in rows]
                for i, col in enumerate(header)}
    if forms[0] == "dataframe_records" or (columns and _is_records(data)):
        return _records_to_columns(data) if _is_records(data) else None
    if isinstance(data, dict) and (len(inputs) != 1 or set(data) <= set(names)):
        return dict(data)
    if len(inputs) == 1:
        return {names[0]: data}
    return None


def _input_keys(inputs: list[dict[str, Any]]) -> list[str]:
    """Each input's name, or for unnamed columns their position (``"0"``, ``"1"`` ...)."""
    return [spec["name"] if isinstance(spec.get("name"), str) else str(index)
            for index, spec in enumerate(inputs)]


def _is_records(data: Any) -> bool:
    return isinstance(data, list) and all(isinstance(row, dict) for row in data)


def _records_to_columns(records: list[dict[str, Any]]) -> dict[str, Any]:
    keys = list(dict.fromkeys(key for record in records for key in record))
    return {key: [record.get(key) for record in records] for key in keys}


_SAMPLE_BY_TYPE = {"boolean": False, "integer": 0, "long": 0, "float": 0.0, "double": 0.0,
                   "string": "", "binary": "", "datetime": "1970-01-01T00:00:00"}


def _generated_example(signature: dict[str, Any]) -> dict[str, Any]:
    """One row of neutral values (zeros, empty text) in the signature's shapes."""
    inputs = signature["inputs"]
    if any(not isinstance(spec["name"], str) for spec in inputs):
        return {"dataframe_split": {"data": [[_sample_value(spec) for spec in inputs]]}}
    return {spec["name"]: _sample(spec) for spec in inputs}


def _sample(spec: dict[str, Any]) -> Any:
    if spec["kind"] == "column":
        return [_sample_value(spec)]
    value = _sample_value(spec)
    for dim in reversed(spec["shape"]):
        value = [value for _ in range(1 if dim is None else dim)]
    return value


def _sample_value(spec: dict[str, Any]) -> Any:
    kind = spec["type"]
    if spec["kind"] == "tensor":
        family = _tensor_family(kind)
        return {"float": 0.0, "int": 0, "bool": False, "str": ""}.get(family, 0)
    if kind == "array":
        return [_sample_value({"kind": "column", **spec["items"]})] if "items" in spec else []
    if kind == "object":
        return {key: _sample_value({"kind": "column", **value})
                for key, value in (spec.get("properties") or {}).items()}
    if kind == "map":
        return {}
    return _SAMPLE_BY_TYPE.get(kind)


# --------------------------------------------------------------------------- conformance


def payload_problems(payload: Any, signature: dict[str, Any]) -> list[str]:
    """How ``payload`` fails to conform to ``signature`` (a ``signature.json``), one line each."""
    if not isinstance(payload, dict):
        return [f"is a JSON {type(payload).__name__}, not an object"]
    inputs = [spec for spec in signature.get("inputs") or [] if isinstance(spec, dict)]
    named = _as_named(payload, inputs)
    if named is None:
        return ["is in no payload form signature.json's inputs can be read from (inputs by "
                f"name, or one of {', '.join(SERVING_KEYS)})"]
    specs = dict(zip(_input_keys(inputs), inputs, strict=True))
    problems = [f"{key!r} is not an input in {SIGNATURE_FILE}" for key in named
                if key not in specs]
    problems += [f"lacks the required input {name!r}" for name, spec in specs.items()
                 if name not in named and spec.get("required", True)]
    rows = set()
    for name, value in named.items():
        if name in specs:
            problems += _value_problems(name, value, specs[name])
            if specs[name].get("kind") == "column" and isinstance(value, list):
                rows.add(len(value))
    if len(rows) > 1:
        problems.append(f"its columns have different numbers of rows ({sorted(rows)})")
    return problems + _param_problems(payload.get("params"), signature.get("params") or [])


def _value_problems(name: str, value: Any, spec: dict[str, Any]) -> list[str]:
    expected = spec.get("shape") or []
    if spec.get("kind") == "column":
        if not isinstance(value, list):
            return [f"input {name!r} is not a list of values, one per row"]
        leaves = value
    else:
        shape = _nested_shape(value)
        if shape is None:
            return [f"input {name!r} is a ragged nested list, not a tensor"]
        if len(shape) != len(expected) or any(
            want is not None and want != got for want, got in zip(expected, shape, strict=False)
        ):
            return [f"input {name!r} has shape {_shape_text(shape)}, but {SIGNATURE_FILE} "
                    f"says {_shape_text(expected)}"]
        leaves = _leaves(value)
    for leaf in leaves:
        if not _conforms(leaf, spec):
            return [f"input {name!r} holds {json.dumps(leaf)[:60]}, not of type "
                    f"{spec.get('type')!r}"]
    return []


def _param_problems(params: Any, specs: list[dict[str, Any]]) -> list[str]:
    if params is None:
        return []
    if not isinstance(params, dict):
        return ["'params' is not an object"]
    known = {spec.get("name"): spec for spec in specs}
    problems = []
    for key, value in params.items():
        if key not in known:
            problems.append(f"param {key!r} is not in {SIGNATURE_FILE}")
        elif known[key].get("shape") is None and not _conforms(
                value, {"kind": "column", "type": known[key].get("type"), "required": False}):
            problems.append(f"param {key!r} is {json.dumps(value)[:60]}, not of type "
                            f"{known[key].get('type')!r}")
    return problems


def _nested_shape(value: Any) -> list[int] | None:
    if not isinstance(value, list):
        return []
    inner = [_nested_shape(item) for item in value]
    if any(shape is None for shape in inner) or any(shape != inner[0] for shape in inner[1:]):
        return None
    return [len(value), *(inner[0] if inner else [])]


def _leaves(value: Any) -> list[Any]:
    if not isinstance(value, list):
        return [value]
    return [leaf for item in value for leaf in _leaves(item)]


def _tensor_family(dtype: str) -> str:
    if dtype.startswith("float"):
        return "float"
    if dtype.startswith(("int", "uint")):
        return "int"
    if dtype.startswith("bool"):
        return "bool"
    if dtype.startswith(("str", "bytes", "datetime", "<U")):
        return "str"
    return "any"


_COLUMN_FAMILIES = {"boolean": "bool", "integer": "int", "long": "int", "float": "float",
                    "double": "float", "string": "str", "binary": "str", "datetime": "str",
                    "array": "list", "object": "dict", "map": "dict"}


def _conforms(value: Any, spec: dict[str, Any]) -> bool:
    kind = str(spec.get("type"))
    family = (_tensor_family(kind) if spec.get("kind") == "tensor"
              else _COLUMN_FAMILIES.get(kind, "any"))
    if value is None:
        return family == "any" or (spec.get("kind") == "column" and not spec.get("required"))
    if family == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if family == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    checks = {"bool": bool, "str": str, "list": list, "dict": dict}
    return family not in checks or isinstance(value, checks[family])


def _shape_text(shape: list[int | None]) -> str:
    return "[" + ", ".join("null" if dim is None else str(dim) for dim in shape) + "]"


# --------------------------------------------------------------------------- model-card.md


def model_card(snapshot: Snapshot, signature: dict[str, Any]) -> str:
    """``model-card.md``: description, intended use, inputs and outputs, tags, parameters,
    metrics and lineage, from the registry as it was at export."""
    registered, version = snapshot.registered_model, snapshot.model_version
    logged, run = snapshot.logged_model, snapshot.run
    title = snapshot.display_name + (f" version {version.version}" if version else "")
    lines = [f"# {title}", ""]
    descriptions = [text for text in (version.description if version else None,
                                      registered.description if registered else None) if text]
    lines += [*(descriptions or ["No description was recorded in the registry."]), ""]
    lines += ["## Intended use", "", _intended_use(snapshot), ""]
    lines += ["## Model", ""]
    lines += _bullets([
        ("Registered model", registered.name if registered else None),
        ("Version", version.version if version else None),
        ("Aliases", ", ".join(version.aliases) if version and version.aliases else None),
        ("Stage", version.current_stage if version and version.current_stage != "None"
         else None),
        ("Flavors", ", ".join(sorted(snapshot.mlmodel.get("flavors") or {})) or None),
        ("Model type", logged.model_type if logged else None),
        ("MLflow version", snapshot.mlmodel.get("mlflow_version")),
        ("Created", _when(version.creation_timestamp if version else None)),
    ])
    lines += ["", "## Inputs and outputs", "",
              f"From `{SIGNATURE_FILE}` (null in a shape: any size); an example payload is in "
              f"`{EXAMPLE_FILE}`.", ""]
    lines += _table(["", "name", "type", "shape"], [
        [side[:-1], spec["name"] or "-", str(spec["type"]), _shape_text(spec["shape"])]
        for side in ("inputs", "outputs") for spec in signature.get(side) or []
    ])
    lines += ["", "## Tags", ""]
    # MLflow's own bookkeeping tags (mlflow.user, mlflow.source.*) say nothing about the model.
    tag_rows = [[where, key, value] for where, tags in (
        ("registered model", registered.tags if registered else {}),
        ("version", version.tags if version else {}),
        ("logged model", logged.tags if logged else {}),
        ("run", run.tags if run else {}),
    ) for key, value in sorted(tags.items()) if not key.startswith("mlflow.")]
    # An MLSteam package's kept hooks are whole source files: the card names them only.
    tag_rows = [[where, key, f"({len(value)} characters of hook source)"]
                if key.startswith(HOOK_TAG_PREFIX) else [where, key, value]
                for where, key, value in tag_rows]
    lines += _table(["on", "tag", "value"], tag_rows) if tag_rows else ["None."]
    lines += ["", "## Parameters", ""]
    param_rows = _merged([("run", sorted((run.params if run else {}).items())),
                          ("logged model", sorted((logged.params if logged else {}).items()))])
    lines += _table(["parameter", "value", "of"], param_rows) if param_rows else ["None."]
    lines += ["", "## Metrics", "", "The last value of each (at its highest step).", ""]
    metric_rows = _metric_rows(snapshot)
    lines += (_table(["metric", "value", "step", "of"], metric_rows) if metric_rows
              else ["None."])
    lines += ["", "## Lineage", ""]
    lines += _bullets(_lineage(snapshot))
    lines += ["", "## Use", "", "```",
              "sha256sum -c checksum.txt",
              "pip install -r requirements.txt",
              f"python predict.py {EXAMPLE_FILE}",
              "```", "",
              f"`{PREDICT_FILE}` exposes `load_model()` and `predict(payload)`, which returns "
              "`{\"predictions\": ...}` as `mlflow models serve` does. Import the package into "
              "an MLflow registry with `mlflow-archive import`.", ""]
    return "\n".join(lines)


def _intended_use(snapshot: Snapshot) -> str:
    for section in (snapshot.model_version, snapshot.registered_model):
        for key, value in (section.tags if section else {}).items():
            if key.lower().replace("-", "_").replace(" ", "_") == "intended_use" and value:
                return value
    return ("Not recorded in the registry. Set an `intended_use` tag on the model version "
            "(or the registered model) to state it here.")


def _lineage(snapshot: Snapshot) -> list[tuple[str, str | None]]:
    run, logged, version, lineage = (snapshot.run, snapshot.logged_model,
                                     snapshot.model_version, snapshot.lineage)
    run_text = None
    if run is not None:
        run_text = f"{run.run_name or '-'} (`{run.run_id}`), {run.status or 'status unknown'}"
        if run.start_time:
            run_text += f", {_when(run.start_time)} to {_when(run.end_time) or 'unfinished'}"
    experiment = None
    if run is not None and (run.experiment_name or run.experiment_id):
        experiment = f"{run.experiment_name or '-'} (`{run.experiment_id}`)"
    return [
        ("Run", run_text),
        ("Experiment", experiment),
        ("Logged model", f"`{logged.model_id}`" if logged and logged.model_id else None),
        ("Source", f"`{version.source}`" if version and version.source else None),
        ("Exported from", f"`{lineage.model_uri}`" if lineage.model_uri else None),
        ("Tracking server", f"`{lineage.source_tracking_uri}`"
         if lineage.source_tracking_uri else None),
        ("Exported at", lineage.exported_at),
        ("Exported by", f"mlflow-archive-plugin {lineage.plugin_version}"
         if lineage.plugin_version else None),
    ]


def _metric_rows(snapshot: Snapshot) -> list[list[str]]:
    run_rows = []
    if snapshot.run is not None:
        for key, history in sorted(snapshot.run.metrics.items()):
            if history:
                point = max(history, key=lambda p: (p["step"], p["timestamp"]))
                run_rows.append((key, _number(point["value"]), str(point["step"])))
    latest: dict[str, dict[str, Any]] = {}
    for point in snapshot.logged_model.metrics if snapshot.logged_model else []:
        known = latest.get(point["key"])
        if known is None or (point["step"], point["timestamp"]) >= (known["step"],
                                                                    known["timestamp"]):
            latest[point["key"]] = point
    model_rows = [(key, _number(point["value"]), str(point["step"]))
                  for key, point in sorted(latest.items())]
    return _merged([("run", run_rows), ("logged model", model_rows)])


def _merged(sources: list[tuple[str, list[tuple[str, ...]]]]) -> list[list[str]]:
    """One row per distinct entry, naming every source it comes from (MLflow copies a run's
    params and metrics onto the model it logs)."""
    origins: dict[tuple[str, ...], list[str]] = {}
    for origin, rows in sources:
        for row in rows:
            origins.setdefault(row, []).append(origin)
    return [[*row, " and ".join(names)] for row, names in origins.items()]


def _bullets(items: list[tuple[str, Any]]) -> list[str]:
    lines = [f"- {label}: {value}" for label, value in items if value not in (None, "")]
    return lines or ["Not recorded."]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    def cell(text: Any) -> str:
        return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")

    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(cell(value) for value in row) + " |" for row in rows),
    ]


def _number(value: float) -> str:
    return f"{value:.6g}"


def _when(millis: int | None) -> str | None:
    if not millis:
        return None
    moment = datetime.datetime.fromtimestamp(millis / 1000, datetime.UTC)
    return moment.isoformat(timespec="seconds")


# --------------------------------------------------------------------------- helpers


def _json_text(document: Any) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def _read_text(path: Path) -> str:
    return path.read_bytes().decode("utf-8", errors="replace")


def _load_json(path: Path) -> tuple[Any, list[str]]:
    try:
        return load_json(path.read_bytes(), what=path.name), []
    except CorruptArchiveError as exc:
        return None, [f"{path.name}: {exc}"]


__all__ = ["PortableLayout", "package_path", "payload_problems", "pinned_requirements",
           "requirement_problems", "signature_document"]
