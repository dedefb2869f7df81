"""MLSteam predict hook written by mlflow-archive-plugin: predictions of the loaded model.

MLSteam's SDK calls ``predict(env=env, model=model, inputs=inputs)`` with the object
``load()`` returned. ``inputs`` may be anything the model's ``predict`` takes (a pandas
DataFrame, a numpy array, a dict of columns), a list (read as MLflow's ``inputs`` body
reads it), or a body MLflow's scoring server reads (``dataframe_split``,
``dataframe_records``, ``instances`` or ``inputs``, with optional ``params``), as a dict or
as JSON text. The result is what ``mlflow.pyfunc``'s ``predict`` returns. When the package
holds several models, ``inputs['model']`` names the one to use (the rest of ``inputs`` is
its input: ``{"model": "m", "inputs": ...}``); without it, the first model answers.

This file must run without mlflow-archive-plugin installed: it needs ``mlflow``.
"""

import json

SERVING_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs")
MODEL_KEY = "model"


def predict(*args, env=None, model=None, inputs=None, **kwargs):
    """The predictions of ``model`` (what ``load()`` returned) for ``inputs``."""
    if inputs is None and args:
        inputs = args[0]
    if model is None:
        raise ValueError("predict() needs the model load() returned: "
                         "predict(env=env, model=load(env=env), inputs=...)")
    if isinstance(inputs, (str, bytes, bytearray)):
        try:
            inputs = json.loads(inputs)
        except ValueError as exc:
            raise ValueError(f"inputs given as text must be JSON ({exc})") from exc
    chosen, inputs = choose_model(model, inputs)
    if isinstance(inputs, list):
        inputs = {"inputs": inputs}  # JSON's array, read as MLflow's "inputs" body reads it
    data, params = parse_inputs(chosen, inputs)
    if params is None:
        return chosen.predict(data)
    return chosen.predict(data, params=params)


def choose_model(model, inputs):
    """The model to answer and its input: one of several by ``inputs['model']``, else the
    first."""
    if not isinstance(model, dict):
        return model, inputs
    if not model:
        raise ValueError("load() returned no models")
    if not isinstance(inputs, dict) or MODEL_KEY not in inputs:
        return next(iter(model.values())), inputs
    name = inputs[MODEL_KEY]
    if name not in model:
        raise ValueError(f"no model named {name!r} in this package; it holds "
                         f"{', '.join(map(repr, model))}")
    rest = {key: value for key, value in inputs.items() if key != MODEL_KEY}
    if set(rest) == {"inputs"} and not isinstance(rest["inputs"], (list, dict)):
        return model[name], rest["inputs"]  # a DataFrame or an array, not a JSON body
    return model[name], rest


def parse_inputs(model, inputs):
    """``(data, params)``: a scoring-server body parsed as ``mlflow models serve`` would
    parse it, anything else passed through as it is."""
    if not isinstance(inputs, dict) or not any(key in inputs for key in SERVING_KEYS):
        return inputs, None
    from mlflow.pyfunc import scoring_server

    body = {key: value for key, value in inputs.items() if key in SERVING_KEYS}
    schema = model.metadata.get_input_schema()
    return scoring_server.infer_and_parse_data(body, schema), inputs.get("params")
