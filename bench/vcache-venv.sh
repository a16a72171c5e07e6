#!/bin/sh
# Build the Python >= 3.12 venv that bench/cache_async.py and bench/django_asgi.py use
# with --python to measure django-vcache (issue 18's Django anchor; it needs 3.12+):
# statekit and django-statekit as wheels built from this checkout, django-vcache, and
# every other contestant at the version this checkout's .venv has. Outside the
# repository; nothing here is committed.
#
#   sh bench/vcache-venv.sh [VENV] [PYTHON3.12]
#       VENV defaults to /tmp/vcache-venv, PYTHON3.12 to the first Python >= 3.12 found
#   .venv/bin/python bench/cache_async.py --python /tmp/vcache-venv/bin/python
#   .venv/bin/python bench/django_asgi.py --python /tmp/vcache-venv/bin/python
set -eu
cd "$(dirname "$0")/.."
venv=${1:-/tmp/vcache-venv}
python=${2:-}
if [ -z "$python" ]; then  # the first that runs and is >= 3.12 (a pyenv shim may not run)
    for candidate in python3.12 python3.13 python3.14 /root/.pyenv/versions/3.1[234]*/bin/python3; do
        if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
            python=$candidate
            break
        fi
    done
fi
[ -n "$python" ] || { echo "no Python >= 3.12 found: pass its path as the second argument" >&2; exit 1; }
vcache=${VCACHE_VERSION:-3.2.0}
wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT

"$python" -m venv "$venv"
.venv/bin/pip wheel --quiet --no-deps --no-build-isolation -w "$wheels" . adapters/django-statekit
# the contestants' versions in this checkout's venv
.venv/bin/pip freeze 2>/dev/null \
    | grep -iE '^(django|redis|hiredis|uvicorn|asgiref|django-redis|cashews|aiocache|msgpack|itsdangerous)==' \
    > "$wheels/constraints.txt"
"$venv/bin/pip" install --quiet -c "$wheels/constraints.txt" "$wheels"/*.whl \
    django "redis[hiredis]" uvicorn asgiref django-redis cashews aiocache msgpack "django-vcache==$vcache"
"$venv/bin/python" -c 'import sys, django_vcache; print(sys.version.split()[0])'
"$venv/bin/pip" freeze 2>/dev/null \
    | grep -iE '^(django|redis|hiredis|uvicorn|asgiref|django-redis|cashews|aiocache|msgpack|django-vcache|ormsgpack|statekit|django-statekit)[=@ ]'
