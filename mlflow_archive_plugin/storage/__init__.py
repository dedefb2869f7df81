"""Bytes: containers (zip, tar, folder), checksums, the read/write pipeline, extents, locations.

Uses the shared shape and the formats (which use it back); never imports the MLflow side.
"""
