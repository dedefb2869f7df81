"""Files copied verbatim into archives (a portable package's ``predict.py``); never imported."""
