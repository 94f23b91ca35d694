"""A small Django project for the end-to-end tests and ``benchmarks/wsgi_overhead.py``.

django.contrib.auth on SQLite (``SECSITE_DB``, default a file in the temp dir), Django's own
LoginView and LogoutView, a permission-protected view, CSRF on. Nothing in it mentions
otel_secaudit: under ``opentelemetry-instrument`` the plugin adds everything.
"""
