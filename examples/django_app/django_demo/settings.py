"""Settings of the statekit Django example: every piece of state is shared.

``STATEKIT_REDIS_URL`` and ``STATEKIT_BLOBS_URL`` come from the environment
(``statekit dev`` sets both).
"""

from __future__ import annotations

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("SECRET_KEY", "django-statekit-example-not-a-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django_statekit",
    "board",
]

MIDDLEWARE = [
    "django_statekit.middleware.SessionOutageMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]

ROOT_URLCONF = "django_demo.urls"
WSGI_APPLICATION = "django_demo.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django_statekit.context_processors.shared_values",
            ],
        },
    },
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJANGO_DATABASE", str(BASE_DIR / "db.sqlite3")),
        # several worker processes write to one file: wait for locks, take them up front
        "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE",
                    "init_command": "PRAGMA journal_mode=WAL;"},
    }
}

REDIS_URL = os.environ.get("STATEKIT_REDIS_URL", "redis://127.0.0.1:6379/0")

# The cache every worker shares (the slow report, anything else you cache).
CACHES = {
    "default": {
        "BACKEND": "django_statekit.cache.StatekitCache",
        "LOCATION": REDIS_URL,
        "TIMEOUT": 300,
    }
}

# Server-side sessions in Redis: any worker, any machine, any restart.
SESSION_ENGINE = "django_statekit.sessions"
# The example is served over plain http on localhost; set it to 1 behind TLS.
STATEKIT_SESSION_COOKIE_SECURE = os.environ.get("STATEKIT_SESSION_COOKIE_SECURE", "0")

# Uploads in the blob store (STATEKIT_BLOBS_URL), served through presigned URLs.
STORAGES = {
    "default": {
        "BACKEND": "django_statekit.storage.BlobStorage",
        "OPTIONS": {"max_size": 8 * 1024 * 1024, "allowed_types": ["image/*"]},
    },
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

# A value every worker shows, computed once per interval for the cluster.
STATEKIT_BROADCASTER = "django_demo.jobs:broadcaster"
STATEKIT_BROADCAST_DEFAULTS = {"users_count": 0}

USE_TZ = True
# Django's default is America/Chicago, and Django sets the process's TZ to it: the
# workers' (and the broadcaster's master's) log lines would show -0600 beside UTC
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
