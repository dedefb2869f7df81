"""TorchServe handler written by mlflow-archive-plugin: serves the MLflow model under ``model/``.

The model is loaded once per worker with ``mlflow.pyfunc``. Each request body is read the
way MLflow's scoring server reads ``/invocations`` (``dataframe_split``,
``dataframe_records``, ``instances`` or ``inputs``, with optional ``params``) and answered
with the scoring server's own JSON (``{"predictions": ...}``).
"""

import json
import os

MODEL_SUBDIR = "model"
JSON = "application/json"


class MLflowPyfuncHandler:
    """Class-style TorchServe handler: ``initialize`` on worker start, ``handle`` per batch."""

    def __init__(self):
        self.model = None
        self.initialized = False

    def initialize(self, context):
        import mlflow.pyfunc

        model_dir = context.system_properties.get("model_dir")
        self.model = mlflow.pyfunc.load_model(os.path.join(model_dir, MODEL_SUBDIR))
        self.initialized = True

    def handle(self, data, context):
        return [self._answer(request, index, context) for index, request in
                enumerate(data or [])]

    def _answer(self, request, index, context):
        from mlflow.exceptions import MlflowException
        from mlflow.pyfunc import scoring_server

        body = request.get("body")
        if body is None:
            body = request.get("data")
        try:
            if isinstance(body, (bytes, bytearray)):
                body = bytes(body).decode("utf-8")
            elif not isinstance(body, str):
                body = json.dumps(body)
            result = scoring_server.invocations(
                body, JSON, self.model, self.model.metadata.get_input_schema()
            )
            status, response = result.status, result.response
        except MlflowException as exc:
            status = exc.get_http_status_code()
            response = json.dumps({"error_code": exc.error_code, "message": exc.message})
        except Exception as exc:  # noqa: BLE001 - a bad request must not kill the worker
            status = 400
            response = json.dumps({"error_code": "BAD_REQUEST", "message": str(exc)})
        context.set_response_content_type(index, JSON)
        if status != 200:
            context.set_response_status(status, "prediction failed", index)
        return response
