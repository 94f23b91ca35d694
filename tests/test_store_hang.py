"""No shared-store I/O on the request path: a Redis that hangs (SIGSTOP) slows detection only.

The test app runs under ``opentelemetry-instrument uvicorn`` with ``OTEL_SECAUDIT_STORE``
pointing at a real ``redis-server``; a login route (``OTEL_SECAUDIT_LOGIN_ROUTES``) records
``auth.login.succeeded``, and ``auth.login.succeeded_after_failures`` when the user name had
failures in the window: that count is read from Redis, by the detector's worker.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import httpx
import pytest

from harness import OTLPReceiver, RedisServer, Served, wait_for

from .apps.secapp import GOOD_PASSWORD
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
