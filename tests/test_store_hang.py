"""No shared-store I/O on the request path: a Redis that hangs (SIGSTOP) slows detection only.

The test app runs under ``opentelemetry-instrument uvicorn`` with ``OTEL_SECAUDIT_STORE``
pointing at a real ``redis-server``; a login route (``OTEL_SECAUDIT_LOGIN_ROUTES``) records
``auth.login.succeeded``, and ``auth.login.succeeded_after_failures`` when the user name had
failures in the window: that count is read from Redis, by the detector's worker.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from harness import OTLPReceiver, RedisServer, Served, wait_for
from harness.apps.secapp import GOOD_PASSWORD
from harness.asgi import body_once
from otel_secaudit import SecAuditSpanProcessor
from otel_secaudit.detection.stores import MemoryStore
from otel_secaudit.detection.stores.base import DEFAULT_MAX_BLOCKS

from .test_web_e2e import start_app

pytestmark = pytest.mark.slow

LOGIN = "/auth/jwt/login"
FORM = {"content-type": "application/x-www-form-urlencoded"}


def _login(http: httpx.Client, user: str, password: str) -> tuple[int, float]:
    started = time.perf_counter()
    response = http.post(LOGIN, content=f"username={user}&password={password}", headers=FORM)
    return response.status_code, time.perf_counter() - started


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    server = RedisServer().start()  # our own: this test stops it
    yield server
    if server.process is not None and server.process.poll() is None:
        server.process.send_signal(signal.SIGCONT)
    server.close()


@pytest.fixture
def app(otlp_receiver: OTLPReceiver, redis: RedisServer) -> Iterator[Served]:
    served = start_app(
        otlp_receiver,
        store=redis.url,
        login_routes=f"POST {LOGIN}",
        host_threshold="1000",
        user_threshold="1000",
    )
    yield served
    served.stop()


def test_succeeded_after_failures_arrives_with_the_count_and_the_logins_trace(
    app: Served, otlp_receiver: OTLPReceiver
) -> None:
    with httpx.Client(base_url=app.base_url, timeout=10) as http:
        assert _login(http, "alice", "wrong")[0] == 400
        assert _login(http, "alice", "also-wrong")[0] == 400
        time.sleep(0.3)  # the worker applies the failures to Redis in its next batch
        assert _login(http, "alice", GOOD_PASSWORD.replace(" ", "+"))[0] == 200
        assert _login(http, "bob", GOOD_PASSWORD.replace(" ", "+"))[0] == 200  # no failures

    [after] = wait_for(
        lambda: otlp_receiver.security_logs("auth.login.succeeded_after_failures"), timeout=20
    )
    assert after.attributes["security.abuse.count"] == 2
    [alice_success] = [
        log
        for log in wait_for(lambda: otlp_receiver.security_logs("auth.login.succeeded"), 20)
        if log.attributes["user.hash"] == after.attributes["user.hash"]
    ]
    # emitted off the request thread, but in the login's trace, with the request attributes
    assert after.trace_id == alice_success.trace_id
    assert after.attributes["url.path"] == LOGIN
    assert after.attributes["client.address"] == "127.0.0.1"
    time.sleep(1.0)
    assert len(otlp_receiver.security_logs("auth.login.succeeded_after_failures")) == 1


def test_no_request_waits_for_a_hanging_redis(
    app: Served, otlp_receiver: OTLPReceiver, redis: RedisServer
) -> None:
    password = GOOD_PASSWORD.replace(" ", "+")
    with httpx.Client(base_url=app.base_url, timeout=10) as http:
        assert _login(http, "carol", "wrong")[0] == 400
        assert _login(http, "carol", password)[0] == 200  # Redis up: warm connections
        assert redis.process is not None
        redis.process.send_signal(signal.SIGSTOP)  # accepts nothing, answers nothing
        try:
            timings = []
            for i in range(6):
                timings.append(_login(http, "carol", "wrong"))
                timings.append(_login(http, "carol", password))
                timings.append(_login(http, f"user{i}", password))
                response = http.get("/forbidden")
                assert response.status_code == 403
        finally:
            redis.process.send_signal(signal.SIGCONT)
    statuses = [status for status, _ in timings]
    assert statuses == [400, 200, 200] * 6
    slowest = max(seconds for _, seconds in timings)
    assert slowest < 0.5, f"a request waited {slowest:.2f} s for the store"
    # every success was recorded while the store hung (detection is what waits)
    successes = wait_for(
        lambda: (
            (found := otlp_receiver.security_logs("auth.login.succeeded"))
            and len(found) >= 13
            and found
        ),
        timeout=20,
    )
    assert len(successes) == 13


class _ThreadNotingStore(MemoryStore):
    """A memory store that says it is shared (``in_process = False``), so the detector treats
    it as Redis, and notes the thread of every call a shared store would answer over the
    network."""

    in_process = False

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[tuple[str, int]] = []

    def apply(self, hits: Any, policy: Any) -> Any:
        self.threads.append(("apply", threading.get_ident()))
        return super().apply(hits, policy)

    def recent(self, scope: str, key: str, now: float, window: float) -> int:
        self.threads.append(("recent", threading.get_ident()))
        return super().recent(scope, key, now, window)

    def housekeeping(self, now: float, limit: int = DEFAULT_MAX_BLOCKS) -> Any:
        self.threads.append(("housekeeping", threading.get_ident()))
        return super().housekeeping(now, limit)


def test_no_shared_store_call_on_the_request_thread_by_construction(make_sdk: Any) -> None:
    """Every path a request takes (status events, login failures and a success after them,
    refusals of a blocked client, the span processor's hand-off at span end) with a shared
    store: the store is called from the detector's worker only, never from the thread that
    serves the requests."""
    from opentelemetry.trace import SpanKind

    from harness.apps.secapp import create_app
    from otel_secaudit import runtime
    from otel_secaudit.detection import AbuseDetector
    from otel_secaudit.web.asgi import SecAuditMiddleware

    from .conftest import http_scope

    sdk = make_sdk(
        strict=False,
        host_threshold=3,
        user_threshold=100,
        block_seconds=60,
        trusted_proxies="127.0.0.1/32",
        login_routes=f"POST {LOGIN}",
    )
    sdk.tracer_provider.add_span_processor(SecAuditSpanProcessor())
    store = _ThreadNotingStore()
    detector = AbuseDetector(sdk.recorder, store=store)
    sdk.recorder.violation_sink = detector.submit
    runtime.swap(
        runtime.Runtime(
            sdk.recorder,
            detector,
            tracer_provider=sdk.tracer_provider,
            meter_provider=sdk.meter_provider,
            logger_provider=sdk.logger_provider,
        )
    )
    app = SecAuditMiddleware(create_app())

    async def request(path: str, client: str, body: bytes = b"") -> int:
        headers = [(b"host", b"t"), (b"x-forwarded-for", client.encode())]
        scope = http_scope(path, headers=headers)
        if body:
            scope["method"] = "POST"
            headers += [(b"content-type", FORM["content-type"].encode())]
            headers += [(b"content-length", str(len(body)).encode())]
        statuses = []

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        with sdk.tracer.start_as_current_span(f"{path}", kind=SpanKind.SERVER):
            await app(scope, body_once(body), send)
        return statuses[0]

    wrong = b"username=alice&password=wrong"
    right = f"username=alice&password={GOOD_PASSWORD}".replace(" ", "+").encode()

    async def scenario() -> list[int]:
        statuses = [await request(LOGIN, "198.51.100.1", wrong) for _ in range(2)]
        await asyncio.sleep(0.3)  # the worker applies the failures
        statuses.append(await request(LOGIN, "198.51.100.1", right))
        for _ in range(3):
            statuses.append(await request("/forbidden", "203.0.113.7"))
        for _ in range(50):  # until the worker's block reaches the request path
            await asyncio.sleep(0.05)
            status = await request("/forbidden", "203.0.113.7")
            statuses.append(status)
            if status == 429:
                break
        statuses.append(await request("/forbidden", "203.0.113.7"))
        return statuses

    try:
        statuses = asyncio.run(scenario())
        assert statuses[:6] == [400, 400, 200, 403, 403, 403]
        assert statuses[-2:] == [429, 429]
        assert detector.flush(5)
    finally:
        detector.shutdown()
    request_thread = threading.get_ident()
    kinds = {kind for kind, _ in store.threads}
    assert {"apply", "recent", "housekeeping"} <= kinds  # the store did serve detection
    on_request_thread = [kind for kind, thread in store.threads if thread == request_thread]
    assert on_request_thread == []
    [after] = [
        r.log_record
        for r in sdk.logs()
        if r.log_record.event_name == "auth.login.succeeded_after_failures"
    ]
    assert after.attributes["security.abuse.count"] == 2
