"""Fork safety and shutdown under gunicorn: the instrumentor runs in the master, the workers
fork from it. Each worker must detect abuse on its own (the detector's thread restarted in the
child), with sync workers (WSGI) and uvicorn workers (ASGI), and a worker that exits must
deliver what it still holds, even when the export interval has not come yet."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

from harness import (
    ROOT,
    OTLPReceiver,
    free_port,
    instrument_command,
    serve_flask,
    serve_subprocess,
    telemetry_env,
    wait_for,
)

pytest.importorskip("gunicorn")

pytestmark = pytest.mark.slow


def test_uvicorn_workers_forked_by_gunicorn_detect_abuse(otlp_receiver: OTLPReceiver) -> None:
    pytest.importorskip("uvicorn.workers")
    # memory:// store: each worker counts alone, so 5 violations put >= 3 in one of the two
    env = telemetry_env(otlp_receiver.http_endpoint, host_threshold="3")
    env["PYTHONPATH"] = str(ROOT)
    port = free_port()
    args = [
        instrument_command(), sys.executable, "-m", "gunicorn", "-w", "2",
        "-k", "uvicorn.workers.UvicornWorker", "-b", f"127.0.0.1:{port}",
        "tests.apps.secapp:app",
    ]  # fmt: skip
    served = serve_subprocess(args, port, env, cwd=str(ROOT))
    try:
        for _ in range(5):
            assert httpx.get(served.base_url + "/forbidden").status_code == 403
        abuse = wait_for(lambda: otlp_receiver.security_logs("abuse.host"), timeout=20)
        assert abuse[0].attributes["security.abuse.key"] == "127.0.0.1"
    finally:
        served.stop()


def test_sync_worker_delivers_its_records_when_it_exits(
    otlp_receiver: OTLPReceiver, tmp_path: Path
) -> None:
    pytest.importorskip("flask_login")
    spool = tmp_path / "spool"
    env = telemetry_env(otlp_receiver.http_endpoint, host_threshold="3", spool_dir=str(spool))
    # nothing would leave before a minute: only the exit path delivers
    env.update(
        OTEL_BLRP_SCHEDULE_DELAY="60000",
        OTEL_BSP_SCHEDULE_DELAY="60000",
        OTEL_METRIC_EXPORT_INTERVAL="60000",
    )
    served = serve_flask(env, workers=1)
    try:
        for _ in range(3):
            assert httpx.get(served.base_url + "/forbidden").status_code == 403
    finally:
        served.stop()  # SIGTERM: gunicorn's graceful worker exit
    assert len(otlp_receiver.security_logs("authz.permission_denied")) == 3
    assert len(otlp_receiver.security_logs("abuse.host")) == 1
    assert otlp_receiver.metric_points("security.violations")
