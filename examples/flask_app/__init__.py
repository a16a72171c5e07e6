"""The statekit demo: one page, many disposable workers, one consistent state.

``make demo`` (or ``statekit dev -- python -m examples.flask_app``) runs it with four
workers under ``statekit serve``. The app factory is :func:`examples.flask_app.app.create_app`
and the WSGI entry point ``examples.flask_app.wsgi:app``; ``before/`` holds the same app
written the stateful way.
"""
