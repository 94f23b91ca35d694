"""The ``otel-secaudit demo`` and ``otel-secaudit report`` machinery.

* :mod:`.app`: the demo FastAPI application (login + TOTP, JWT with revocation, RBAC, tenants,
  CSRF, admin area);
* :mod:`.scenario`: the scripted attack, played over real HTTP;
* :mod:`.telemetry`: SDK providers and instrumentors, set up as ``opentelemetry-instrument``
  does, exporting to OTLP/JSON files (:mod:`otel_secaudit.exporters`, the ``otlp_json_dir``
  exporters) and optionally a collector;
* :mod:`.report` and :mod:`.render`: reading such files back, summarizing, printing;
* :mod:`.html_report`: the same report as one self-contained HTML page (``--html``, and
  ``/report`` on ``otel-secaudit demo --serve``).

Needs the ``demo`` extra: ``pip install 'otel-secaudit[demo]'``.
"""
