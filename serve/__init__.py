"""The scoring server: a TorchServe-style handler behind a Flask app, run by gunicorn."""
