"""MLSteam's hooks for MLflow models: ``load.py`` and ``predict.py``, copied into every
exported ``.mlarchive`` under ``hooks/``.

They run where MLSteam runs them, without this plugin, so they import nothing from it; the
plugin reuses ``load.py``'s key handling and decryption rather than keeping a second copy.
"""
