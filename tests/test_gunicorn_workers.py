"""Fork safety and shutdown under gunicorn: the instrumentor runs in the master, the workers
fork from it. Each worker must detect abuse on its own (the detector's thread restarted in the
child), with sync workers (WSGI) and uvicorn workers (ASGI), and a worker that exits must
deliver what it still holds, even when the export interval has not come yet."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import httpx
import pytest

from harness import (
    ROOT,
    OTLPReceiver,
    RedisServer,
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
        "harness.apps.secapp:app",
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


def test_request_blocked_is_written_once_across_two_workers_sharing_redis(
    otlp_receiver: OTLPReceiver, redis_server: RedisServer
) -> None:
    """request.blocked at most once per key per 60 s, across every instance that
    shares the store, not once per process: two gunicorn workers both refuse the attacker,
    many times, and one record (one span event) is written, whose security.block.count is at
    least every refusal made before it; every refusal is counted in security.requests.blocked."""
    pytest.importorskip("flask_login")
    attacker = "198.51.100.77"
    env = telemetry_env(
        otlp_receiver.http_endpoint,
        store=redis_server.database_url(9),
        host_threshold="3",
        block_seconds="60",
        trusted_proxies="127.0.0.1/32",
    )
    served = serve_flask(env, workers=2)
    headers = {"x-forwarded-for": attacker, "connection": "close"}
    refused = 0
    try:
        for _ in range(3):
            assert httpx.get(served.base_url + "/forbidden", headers=headers).status_code == 403
        wait_for(lambda: otlp_receiver.security_logs("abuse.block.started"), 20)

        def refusing_workers() -> set[str]:
            nonlocal refused
            if httpx.get(served.base_url + "/forbidden", headers=headers).status_code == 429:
                refused += 1
            return set(re.findall(r"access pid=<?(\d+)>? 429 ", served.output()))

        wait_for(lambda: len(refusing_workers()) >= 2, timeout=20, interval=0.05)
        started = time.monotonic()
        while time.monotonic() - started < 1.5:  # both workers keep refusing
            refusing_workers()
        blocked = wait_for(lambda: otlp_receiver.security_logs("request.blocked"), 20)
        time.sleep(1.5)  # anything a second worker wrote would be exported by now
        blocked = otlp_receiver.security_logs("request.blocked")
        assert len(blocked) == 1, [log.attributes for log in blocked]
        assert blocked[0].attributes["client.address"] == attacker
        assert 1 <= blocked[0].attributes["security.block.count"] <= refused
        events = [
            name for span in otlp_receiver.spans() for name, _ in span.events
            if name == "request.blocked"
        ]  # fmt: skip
        assert events == ["request.blocked"]

        def counted() -> float:
            return sum(p.value for p in otlp_receiver.metric_points("security.requests.blocked"))

        wait_for(lambda: counted() >= refused, timeout=20)
    finally:
        served.stop()
