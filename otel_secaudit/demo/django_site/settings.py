"""Settings of the Django demo project (``startproject``'s defaults, trimmed). Demo only: the
secret key is public and passwords use a fast hasher."""

from __future__ import annotations

import os

SECRET_KEY = "otel-secaudit-django-demo-only-not-a-secret-0123456789abcdef"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
ROOT_URLCONF = "otel_secaudit.demo.django_site.urls"
_LOGIN_PAGE = (
    '<form method="post">{% csrf_token %}{{ form.as_p }}'
    '<button type="submit">Log in</button></form>'
)
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": False,
        "OPTIONS": {
            "context_processors": ["django.template.context_processors.request"],
            "loaders": [
                (
                    "django.template.loaders.locmem.Loader",
                    {"registration/login.html": _LOGIN_PAGE},
                )
            ],
        },
    }
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("OTEL_SECAUDIT_DEMO_DJANGO_DB", ":memory:"),
    }
}
# Fast hashing: the scenario logs in many times (demo only).
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
LOGIN_REDIRECT_URL = "/documents/"
LOGOUT_REDIRECT_URL = "/accounts/login/"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
# Django's own request/security warnings (403s, CSRF failures, tracebacks of PermissionDenied)
# would interleave with the demo's progress bar: the report shows them as security events.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"null": {"class": "logging.NullHandler"}},
    "loggers": {
        "django.request": {"handlers": ["null"], "propagate": False},
        "django.security": {"handlers": ["null"], "propagate": False},
        "django.server": {"handlers": ["null"], "propagate": False},
    },
}
