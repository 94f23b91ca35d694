"""SecAuditInstrumentor: class patches, load orders with the contrib FastAPI instrumentation,
FastAPI's own telemetry, restoration, and never raising."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from importlib.metadata import entry_points
from typing import Any

import fastapi
import fastapi.applications
import httpx
import pytest
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from otel_secaudit import SecAuditInstrumentor, runtime
from otel_secaudit.web.asgi import SecAuditMiddleware

from .conftest import SDK

ORIGINAL_FASTAPI = fastapi.FastAPI
ORIGINAL_STARLETTE_BUILD = Starlette.__dict__["build_middleware_stack"]
ORIGINAL_STARLETTE_CALL = Starlette.__dict__["__call__"]
ORIGINAL_FASTAPI_BUILD = fastapi.applications.FastAPI.__dict__["build_middleware_stack"]


@pytest.fixture(autouse=True)
def clean_instrumentation() -> Iterator[None]:
    yield
    SecAuditInstrumentor().uninstrument()
    FastAPIInstrumentor().uninstrument()
    assert fastapi.FastAPI is ORIGINAL_FASTAPI


def get(app: Any, path: str) -> httpx.Response:
    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 4000))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            return await http.get(path)

    return asyncio.run(run())


def add_routes(app: Any) -> Any:
    @app.get("/denied/{thing}")
    async def denied(thing: str) -> None:
        raise fastapi.HTTPException(403)

    @app.get("/fine")
    async def fine() -> dict[str, bool]:
        return {"ok": True}

    return app


def stack_types(app: Any) -> list[str]:
    names = []
    layer = app.middleware_stack
    while layer is not None and len(names) < 30:
        names.append(type(layer).__name__)
        layer = getattr(layer, "app", None)
    return names


def assert_event_on_server_span(sdk: SDK, event: str = "authz.permission_denied") -> None:
    (record,) = sdk.security_logs()
    assert record.event_name == event
    assert record.attributes["http.route"] == "/denied/{thing}"
    servers = [s for s in sdk.spans() if s.kind.name == "SERVER"]
    assert len(servers) == 1
    assert record.trace_id == servers[0].context.trace_id
    assert record.span_id == servers[0].context.span_id
    assert [e.name for e in servers[0].events] == [event]


def test_entry_point_is_registered() -> None:
    group = entry_points(group="opentelemetry_instrumentor")
    (ep,) = [e for e in group if e.name == "otel_secaudit"]
    assert ep.load() is SecAuditInstrumentor
    # one instrumentor for every framework: none is required (a missing one must not make
    # opentelemetry-instrument skip the others)
    assert SecAuditInstrumentor().instrumentation_dependencies() == ()


def test_uninstrument_restores_the_original_classes_exactly(sdk: SDK) -> None:
    instrumentor = SecAuditInstrumentor()
    instrumentor.instrument(tracer_provider=sdk.tracer_provider)
    assert Starlette.__dict__["build_middleware_stack"] is not ORIGINAL_STARLETTE_BUILD
    assert fastapi.applications.FastAPI.__dict__["build_middleware_stack"] is not (
        ORIGINAL_FASTAPI_BUILD
    )
    app = add_routes(fastapi.FastAPI())
    get(app, "/fine")
    assert "SecAuditMiddleware" in stack_types(app)

    instrumentor.uninstrument()
    assert Starlette.__dict__["build_middleware_stack"] is ORIGINAL_STARLETTE_BUILD
    assert Starlette.__dict__["__call__"] is ORIGINAL_STARLETTE_CALL
    assert fastapi.applications.FastAPI.__dict__["build_middleware_stack"] is (
        ORIGINAL_FASTAPI_BUILD
    )
    # an app that already built its stack rebuilds it without the middleware
    get(app, "/denied/x")
    assert "SecAuditMiddleware" not in stack_types(app)
    assert sdk.security_logs() == []
    assert runtime.current().detector is None  # detection disabled


@pytest.mark.parametrize("contrib_first", [True, False], ids=["contrib-first", "secaudit-first"])
def test_contrib_fastapi_instrumentation_either_load_order(sdk: SDK, contrib_first: bool) -> None:
    contrib = FastAPIInstrumentor()
    ours = SecAuditInstrumentor()
    providers = {"tracer_provider": sdk.tracer_provider}
    if contrib_first:
        contrib.instrument(**providers, meter_provider=sdk.meter_provider)
        ours.instrument(**providers)
    else:
        ours.instrument(**providers)
        contrib.instrument(**providers, meter_provider=sdk.meter_provider)
    app = add_routes(fastapi.FastAPI())  # contrib's subclass, as in `opentelemetry-instrument`
    assert get(app, "/denied/a").status_code == 403
    assert_event_on_server_span(sdk)
    names = stack_types(app)
    # the OTel server span middleware is outside ours; ours appears exactly once
    assert names.index("OpenTelemetryMiddleware") < names.index("SecAuditMiddleware")
    assert names.count("SecAuditMiddleware") == 1

    if contrib_first:
        ours.uninstrument()
        contrib.uninstrument()
    else:
        contrib.uninstrument()
        ours.uninstrument()
    assert fastapi.FastAPI is ORIGINAL_FASTAPI
    assert Starlette.__dict__["build_middleware_stack"] is ORIGINAL_STARLETTE_BUILD
    assert fastapi.applications.FastAPI.__dict__["build_middleware_stack"] is (
        ORIGINAL_FASTAPI_BUILD
    )


# FastAPI's own telemetry (``FastAPI(telemetry=...)``) emits no server span against the lowest
# OpenTelemetry releases we support (checked: FastAPI 0.141 on SDK 1.39 exports nothing, with or
# without otel_secaudit), so the lowest-versions job of .ci/run leaves this test out.
@pytest.mark.newest_sdk
def test_fastapi_native_telemetry_alone(sdk: SDK) -> None:
    SecAuditInstrumentor().instrument(tracer_provider=sdk.tracer_provider)
    app = add_routes(
        fastapi.FastAPI(
            telemetry={
                "tracer_provider": sdk.tracer_provider,
                "meter_provider": sdk.meter_provider,
                "logger_provider": sdk.logger_provider,
                "operation_spans": False,
            }
        )
    )
    assert get(app, "/denied/b").status_code == 403
    assert_event_on_server_span(sdk)
    # FastAPI's own server span exports url.query; the middleware scrubs secrets from it
    assert get(app, "/fine?token=TOPSECRET42&page=1").status_code == 200
    (span,) = [s for s in sdk.spans() if s.attributes.get("url.path") == "/fine"]
    assert span.attributes["url.query"] == "token=[REDACTED]&page=1"


def test_plain_starlette_and_mounted_subapp_record_once(sdk: SDK) -> None:
    SecAuditInstrumentor().instrument(tracer_provider=sdk.tracer_provider)

    async def denied(request: Any) -> PlainTextResponse:
        return PlainTextResponse("no", status_code=403)

    inner = Starlette(routes=[Route("/denied/{thing}", denied)])
    outer = Starlette(routes=[Mount("/sub", app=inner), Route("/denied/{thing}", denied)])
    assert get(outer, "/denied/x").status_code == 403
    assert get(outer, "/sub/denied/y").status_code == 403
    records = sdk.security_logs()
    assert len(records) == 2  # the mounted app's middleware does not record a second time
    assert [r.attributes["http.route"] for r in records] == [
        "/denied/{thing}",
        "/sub/denied/{thing}",  # the mount's template prefixes the mounted app's route
    ]
    assert get(outer, "/sub/nothing/here").status_code == 404


def test_instrument_app_explicit_and_idempotent(sdk: SDK) -> None:
    app = add_routes(fastapi.FastAPI())
    SecAuditInstrumentor().instrument_app(app)
    SecAuditInstrumentor().instrument_app(app)
    assert get(app, "/denied/c").status_code == 403
    assert stack_types(app).count("SecAuditMiddleware") == 1
    assert [r.event_name for r in sdk.security_logs()] == ["authz.permission_denied"]
    SecAuditInstrumentor.uninstrument_app(app)
    get(app, "/denied/c")
    assert len(sdk.security_logs()) == 1


def test_hand_added_middleware_is_not_doubled_by_the_class_patch(sdk: SDK) -> None:
    SecAuditInstrumentor().instrument(tracer_provider=sdk.tracer_provider)
    app = add_routes(fastapi.FastAPI())
    app.add_middleware(SecAuditMiddleware)
    get(app, "/denied/d")
    assert stack_types(app).count("SecAuditMiddleware") == 1
    assert len(sdk.security_logs()) == 1


def test_broken_environment_does_not_raise(make_sdk: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    sdk = make_sdk()
    monkeypatch.setenv("OTEL_SECAUDIT_HOST_THRESHOLD", "lots")
    monkeypatch.setenv("OTEL_SECAUDIT_STORE", "bogus://nowhere")
    monkeypatch.setenv("OTEL_SECAUDIT_STATUS_EVENTS", "403:not an event")
    runtime.swap(None)  # as in a fresh process under opentelemetry-instrument
    SecAuditInstrumentor().instrument(tracer_provider=sdk.tracer_provider)
    recorder = runtime.current().recorder
    assert recorder.settings.host_threshold == 10
    assert recorder.settings.store == "memory://"
    assert recorder.settings.status_events[403] == "authz.permission_denied"
    assert Starlette.__dict__["build_middleware_stack"] is not ORIGINAL_STARLETTE_BUILD


def test_bad_arguments_and_internal_failures_do_not_raise(
    sdk: SDK, monkeypatch: pytest.MonkeyPatch
) -> None:
    SecAuditInstrumentor().instrument(
        tracer_provider=sdk.tracer_provider, host_threshold="x", user_threshold=2
    )
    settings = runtime.current().settings
    assert settings.host_threshold == 10  # the bad argument is left out...
    assert settings.user_threshold == 2  # ...and the good one kept
    assert runtime.current().detector is not None
    SecAuditInstrumentor().uninstrument()

    def explode(**options: Any) -> None:
        raise RuntimeError("patching failed")

    from otel_secaudit.web import starlette as adapter

    monkeypatch.setattr(adapter, "patch", explode)
    SecAuditInstrumentor().instrument(tracer_provider=sdk.tracer_provider)  # no exception
    app = add_routes(fastapi.FastAPI())
    assert get(app, "/fine").status_code == 200


def test_unreachable_redis_store_does_not_break_startup_or_requests(sdk: SDK) -> None:
    from harness import free_port

    SecAuditInstrumentor().instrument(
        tracer_provider=sdk.tracer_provider,
        store=f"redis://127.0.0.1:{free_port()}/0",
        block_seconds=60,
    )
    app = add_routes(fastapi.FastAPI())
    assert get(app, "/fine").status_code == 200
    assert get(app, "/denied/e").status_code == 403
    # a new runtime (settings given) on the same providers
    assert [r.event_name for r in sdk.security_logs()] == ["authz.permission_denied"]
    recorder = runtime.current().recorder
    assert recorder is not sdk.recorder
    assert recorder.stats.snapshot()["recorded"] == 1


def test_instrument_app_settings_are_honoured(sdk: SDK) -> None:
    """instrument_app(app, host_threshold=3) builds the runtime with that threshold, also when
    detection is already running."""
    SecAuditInstrumentor().instrument(tracer_provider=sdk.tracer_provider)
    assert runtime.current().settings.host_threshold == 10
    app = add_routes(fastapi.FastAPI())
    SecAuditInstrumentor().instrument_app(app, host_threshold=3)
    rt = runtime.current()
    assert rt.settings.host_threshold == 3 and rt.detector is not None
    for letter in "abc":
        assert get(app, f"/denied/{letter}").status_code == 403
    assert rt.detector.flush(5.0)
    abuse = [r for r in sdk.security_logs() if r.event_name == "abuse.host"]
    assert len(abuse) == 1
    assert stack_types(app).count("SecAuditMiddleware") == 1
