"""What the package promises about its inputs: ``signature.json`` from the MLmodel's
signature, the ``example-payload.json`` written beside it, and whether a payload conforms to
the signature (``verify`` checks the example; the same check serves any caller's payload)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mlflow_archive_plugin.errors import CorruptArchiveError
from mlflow_archive_plugin.formats.portable.files import MODEL_DIR, SIGNATURE_FILE, load_json_file
from mlflow_archive_plugin.trust.parsing import load_json

# Keys of a payload in MLflow's scoring-server form, rather than inputs by name.
SERVING_KEYS = ("dataframe_split", "dataframe_records", "inputs", "instances")


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


def load_signature(path: Path, mlmodel: dict[str, Any]):
    document, problems = load_json_file(path)
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
            return [f"input {name!r} has shape {shape_text(shape)}, but {SIGNATURE_FILE} "
                    f"says {shape_text(expected)}"]
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


def shape_text(shape: list[int | None]) -> str:
    return "[" + ", ".join("null" if dim is None else str(dim) for dim in shape) + "]"
