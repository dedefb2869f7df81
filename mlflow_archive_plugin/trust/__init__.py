"""Trust: signatures (model-signing), MLSteam payload encryption, pickle scanning, bounded parsing.

Uses the shared shape, checksums and extents; never imports the MLflow side.
"""
