"""The entry points MLflow loads: the ``mlflow_archive`` flavor (and its pyfunc wrapper), the
``archive+`` artifact repository, the deployments target. Imports the face and the MLflow side.
"""
