"""The statekit demo: one page, many disposable workers, one consistent state.

``make demo`` (or ``statekit dev --blobs-dir examples/flask_app/instance/blobs --
python -m examples.flask_app``, from the repository's root) runs it with four workers
under ``statekit serve``; ``statekit reload`` from the same directory reloads it. The
app factory is :func:`examples.flask_app.app.create_app` and the WSGI entry point
``examples.flask_app.wsgi:app``; ``before/`` holds the same app written the stateful way.
"""
