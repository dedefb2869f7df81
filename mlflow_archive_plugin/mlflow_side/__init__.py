"""The MLflow side: a model URI read into a Snapshot, a Snapshot written into a registry, the
artifact proxy, tracking helpers, whole-registry moves. Imports the verbs, shape and pipeline.
"""
