"""The `serve` front end: a Starlette app (app.py) with its templates/ and static/ files."""
