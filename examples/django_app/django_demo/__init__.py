"""A small Django project whose processes keep no state: sessions, cache, uploads and
the users count live in Redis and S3 through django_statekit.

Run it (from examples/django_app)::

    statekit dev -- sh -c 'python manage.py migrate && exec statekit serve \
        django_demo.wsgi:application --workers 4 --broadcaster django_demo.jobs:broadcaster'

(``exec``: ``statekit dev`` stops its command on SIGTERM; without it, the signal stops
the shell and ``statekit serve`` keeps running on a Redis that is gone.)
"""
