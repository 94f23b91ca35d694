"""16 threads and an asyncio app recording at once: exact counts, no deadlock (timeouts)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

import otel_secaudit
from otel_secaudit import SecurityRecorder, Settings, runtime
from otel_secaudit.delivery import LOG_RECORD_UID
from otel_secaudit.web.asgi import SecAuditMiddleware

from .conftest import SDK
from .test_spool import FlakyExporter

THREADS = 16
PER_THREAD = 400
REQUESTS = 600


async def denied(request: Request) -> Response:
    otel_secaudit.record("data.sensitive.accessed", resource_id=request.path_params["item"])
    return PlainTextResponse("no", status_code=403)


def run_load(recorder_holder: Any) -> None:
    """16 recording threads plus an asyncio app serving REQUESTS requests, concurrently."""
    barrier = threading.Barrier(THREADS + 1)
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            barrier.wait(10)
            for i in range(PER_THREAD):
                otel_secaudit.record(
                    "auth.login.failed" if i % 2 else "admin.action",
                    user_name=f"t{index}",
                    attributes={"thread": index, "seq": i},
                )
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    app = Starlette(routes=[Route("/items/{item}", denied)])
    app.add_middleware(SecAuditMiddleware)

    async def serve() -> None:
        transport = httpx.ASGITransport(app=app, client=("10.1.2.3", 1000))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:

            async def one(i: int) -> None:
                response = await http.get(f"/items/{i}")
                assert response.status_code == 403

            await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(REQUESTS))), timeout=60)

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    barrier.wait(10)
    asyncio.run(serve())
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive(), "deadlock: a recording thread did not finish"
    assert not errors, errors


# Per request: the app's data.sensitive.accessed + the middleware's 403 status event.
EXPECTED_LOGS = THREADS * PER_THREAD + 2 * REQUESTS
EXPECTED_VIOLATIONS = THREADS * PER_THREAD // 2 + REQUESTS


def test_threads_and_asyncio_counts_exact(make_sdk: Any) -> None:
    sdk: SDK = make_sdk(strict=False)
    run_load(sdk)
    assert len(sdk.logs()) == EXPECTED_LOGS
    assert sdk.total("security.events") == EXPECTED_LOGS
    assert sdk.total("security.violations") == EXPECTED_VIOLATIONS
    seen = {
        (log.log_record.attributes["thread"], log.log_record.attributes["seq"])
        for log in sdk.logs()
        if "thread" in (log.log_record.attributes or {})
    }
    assert len(seen) == THREADS * PER_THREAD


def test_threads_and_asyncio_with_the_spool(tmp_path: Path, make_sdk: Any) -> None:
    sdk: SDK = make_sdk(strict=False)  # for the meter provider and the previous recorder
    exporter = FlakyExporter(failures=3)
    from otel_secaudit.delivery import create_spool_logger_provider

    provider, processor = create_spool_logger_provider(
        tmp_path / "spool",
        exporter=exporter,
        meter_provider=sdk.meter_provider,
        segment_bytes=256 * 1024,
    )
    processor._backoff_initial = processor._backoff_max = 0.02
    recorder = SecurityRecorder(
        Settings.load(environ={}), logger_provider=provider, meter_provider=sdk.meter_provider
    )
    runtime.swap(runtime.Runtime(recorder))
    try:
        run_load(recorder)
        assert processor.force_flush(30_000), processor.spool.stats
        uids = exporter.uids()
        assert len(uids) == EXPECTED_LOGS
        assert len(set(uids)) == EXPECTED_LOGS
        assert processor.spool.stats.appended == EXPECTED_LOGS
        assert processor.spool.stats.refused == 0
        assert sdk.total("security.events") == EXPECTED_LOGS
        assert all(LOG_RECORD_UID in r.log_record.attributes for r in exporter.records)
    finally:
        processor.shutdown(0)
