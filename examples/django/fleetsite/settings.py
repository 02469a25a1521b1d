"""Settings of the example Django project: only what it needs, read from the environment."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from sensormeter import Settings


def database_from_url(url: str) -> dict[str, Any]:
    """Django's DATABASES entry for the same DATABASE_URL sensormeter reads."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": unquote(parts.path[1:])}
    if parts.scheme in ("postgres", "postgresql"):
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": unquote(parts.path[1:]),
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname or "",
            "PORT": str(parts.port or ""),
            "OPTIONS": dict(parse_qsl(parts.query)),  # e.g. ?sslmode=require
        }
    raise ValueError(f"DATABASE_URL: unsupported scheme {parts.scheme!r}")


SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1").split(",")

INSTALLED_APPS = ["fleet.apps.FleetConfig"]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
]
ROOT_URLCONF = "fleetsite.urls"
WSGI_APPLICATION = "fleetsite.wsgi.application"

# One database for the host's tables and sensormeter's ledger: the same DATABASE_URL for the
# web process (here) and for `sensormeter worker` / `scheduler` (which read it themselves).
DATABASE_URL = os.environ.get("DATABASE_URL", "sqlite:///fleet.db")
DATABASES = {"default": database_from_url(DATABASE_URL)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"

# sensormeter's settings for this process (REDIS_URL, SENSORMETER_QUEUE, STRIPE_API_KEY and
# STRIPE_WEBHOOK_SECRET for the webhook view), read once at start: a bad variable stops the
# process here with one line naming it, not at the first sensor change.
SENSORMETER = Settings.from_env({**os.environ, "DATABASE_URL": DATABASE_URL})
