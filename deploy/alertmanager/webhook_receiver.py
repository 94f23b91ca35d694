"""Example Alertmanager webhook receiver: prints one line per alert and answers 200.

Stands in for a paging or chat integration in the compose stack (service ``alert-webhook``);
the path says which receiver sent it (``/on-call``, ``/security-team``). Standard library
only. Run: ``python webhook_receiver.py [PORT]`` (default 8080).
"""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 1 << 20


class AlertHandler(BaseHTTPRequestHandler):
    """POST: an Alertmanager webhook payload (version 4)."""

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        length = min(int(self.headers.get("Content-Length") or 0), MAX_BODY)
        try:
            payload = json.loads(self.rfile.read(length) or b"{}")
            alerts = payload.get("alerts") or []
        except (ValueError, AttributeError):
            self.send_error(400, "expected an Alertmanager webhook payload")
            return
        for alert in alerts:
            labels = alert.get("labels") or {}
            summary = (alert.get("annotations") or {}).get("summary", "")
            line = (
                f"{self.path.strip('/') or 'webhook'} {alert.get('status', '?')} "
                f"{labels.get('severity', '-')} {labels.get('alertname', '?')}: {summary}"
            )
            # One line per alert, control characters escaped (no log injection).
            print(line.encode("unicode_escape").decode("ascii"), flush=True)
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass  # the alert lines above are the log


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8080
    server = ThreadingHTTPServer(("0.0.0.0", port), AlertHandler)
    print(f"alert webhook receiver listening on :{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
