"""Predictions from the MLflow model in this package, offline, with only its requirements.

    pip install -r requirements.txt
    python -c "from predict import load_model, predict; print(predict({...}))"
    python predict.py example-payload.json          # the same, printed as JSON

``predict(payload)`` takes the model's inputs by name, as ``signature.json`` lists them
(``{"<input>": [...], "params": {...}}``: a column's values row by row, or a tensor as
nested lists), or any body MLflow's scoring server takes (``dataframe_split``,
``dataframe_records``, ``inputs`` or ``instances``, with optional ``params``). It returns a
JSON-serializable dict, ``{"predictions": ...}``, exactly what ``mlflow models serve``
answers on ``/invocations``.

Written by mlflow-archive-plugin; the model itself is under ``model/``.
"""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL_DIR = os.path.join(HERE, "model")
SIGNATURE_FILE = os.path.join(HERE, "signature.json")
EXAMPLE_FILE = os.path.join(HERE, "example-payload.json")
SERVING_KEYS = ("dataframe_split", "dataframe_records", "inputs", "instances")

# Loading a model needs no network; MLflow's usage telemetry is off unless the user says so.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

_loaded = None


def load_model(path=None):
    """The model, loaded with ``mlflow.pyfunc`` from this package's ``model/`` folder (once),
    or from ``path``."""
    global _loaded
    import mlflow.pyfunc

    if path is not None:
        return mlflow.pyfunc.load_model(path)
    if _loaded is None:
        _loaded = mlflow.pyfunc.load_model(MODEL_DIR)
    return _loaded


def predict(payload, model=None):
    """Predictions for ``payload`` (a dict, or its JSON text) as ``{"predictions": ...}``."""
    body = json.dumps(serving_body(payload))  # a malformed payload fails before loading
    from mlflow.pyfunc import scoring_server

    model = model if model is not None else load_model()
    response = scoring_server.invocations(
        body, "application/json", model, model.metadata.get_input_schema()
    )
    if response.status != 200:
        raise ValueError(f"prediction refused ({response.status}): {response.response}")
    return json.loads(response.response)


def serving_body(payload):
    """``payload`` as the body MLflow's scoring server reads."""
    if isinstance(payload, (str, bytes, bytearray)):
        payload = json.loads(payload)
    if not isinstance(payload, dict):
        raise TypeError(f"the payload must be a JSON object, not {type(payload).__name__}")
    if any(key in payload for key in SERVING_KEYS):
        return payload
    with open(SIGNATURE_FILE, encoding="utf-8") as handle:
        inputs = json.load(handle)["inputs"]
    names = [spec["name"] for spec in inputs]
    given = {key: value for key, value in payload.items() if key != "params"}
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise ValueError(f"{unknown[0]!r} is not an input of this model; signature.json lists "
                         f"{', '.join(map(repr, names))}")
    if inputs and all(spec.get("kind") == "column" for spec in inputs):
        body = {"dataframe_split": _columns_to_split(given, names)}
    elif len(inputs) == 1 and names[0] in given:
        body = {"inputs": given[names[0]]}
    else:
        body = {"inputs": given}
    if payload.get("params") is not None:
        body["params"] = payload["params"]
    return body


def _columns_to_split(given, names):
    columns = [name for name in names if name in given]
    values = [given[name] for name in columns]
    if not all(isinstance(value, list) for value in values):
        raise ValueError("each input must be a list of its values, one per row")
    if len({len(value) for value in values}) > 1:
        raise ValueError("the inputs have different numbers of rows")
    return {"columns": columns, "data": [list(row) for row in zip(*values, strict=True)]}


def main(argv):
    """``python predict.py [PAYLOAD.json | -]``: print the predictions as JSON."""
    source = argv[1] if len(argv) > 1 else EXAMPLE_FILE
    if source == "-":
        payload = json.load(sys.stdin)
    else:
        with open(source, encoding="utf-8") as handle:
            payload = json.load(handle)
    json.dump(predict(payload), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
