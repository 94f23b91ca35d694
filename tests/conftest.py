"""Shared fixtures: an SDK with in-memory exporters per test, and the real servers."""

from __future__ import annotations

import re
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Sampler

from harness import (
    IN_CI,
    MissingBinary,
    OTLPReceiver,
    RedisClusterServers,
    RedisSentinelServers,
    RedisServer,
    RedisTLSServer,
)
from otel_secaudit import SecurityRecorder, Settings, runtime


class FakeClock:
    """An injectable clock for window and block tests: ``clock.advance(seconds)``."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Point:
    metric: str
    value: float
    attributes: dict[str, Any]
    exemplars: list[Any]


class SDK:
    """An OpenTelemetry SDK wired to in-memory exporters, and a strict recorder bound to it."""

    def __init__(self, sampler: Sampler | None = None, **settings: Any) -> None:
        self.span_exporter = InMemorySpanExporter()
        kwargs = {"sampler": sampler} if sampler is not None else {}
        self.tracer_provider = TracerProvider(**kwargs)
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.span_exporter))
        self.tracer = self.tracer_provider.get_tracer("tests")
        self.log_exporter = InMemoryLogRecordExporter()
        self.logger_provider = LoggerProvider()
        self.logger_provider.add_log_record_processor(SimpleLogRecordProcessor(self.log_exporter))
        self.metric_reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.metric_reader])
        settings.setdefault("strict", True)
        self.settings = Settings.load(environ={}, **settings)
        self.recorder = SecurityRecorder(
            self.settings,
            logger_provider=self.logger_provider,
            meter_provider=self.meter_provider,
        )
        #: The recorder as the process-wide runtime (detection off; tests turn it on).
        self.runtime = runtime.Runtime(
            self.recorder,
            tracer_provider=self.tracer_provider,
            meter_provider=self.meter_provider,
            logger_provider=self.logger_provider,
        )

    def logs(self) -> list[ReadableLogRecord]:
        return list(self.log_exporter.get_finished_logs())

    def spans(self) -> list[ReadableSpan]:
        return list(self.span_exporter.get_finished_spans())

    def server_spans(self) -> list[ReadableSpan]:
        """The finished spans of kind SERVER (contrib's, or otel_secaudit's refusals)."""
        return [span for span in self.spans() if span.kind.name == "SERVER"]

    def security_logs(self, name: str | None = None) -> list[Any]:
        """The log records of the ``otel_secaudit`` scope (named ``name``, if given)."""
        return [
            log.log_record
            for log in self.logs()
            if log.instrumentation_scope.name == "otel_secaudit"
            and (name is None or log.log_record.event_name == name)
        ]

    def points(self, name: str) -> list[Point]:
        data = self.metric_reader.get_metrics_data()
        out: list[Point] = []
        if data is None:
            return out
        for resource_metrics in data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    if metric.name != name:
                        continue
                    for point in metric.data.data_points:
                        out.append(
                            Point(
                                name,
                                point.value,
                                dict(point.attributes or {}),
                                list(getattr(point, "exemplars", None) or []),
                            )
                        )
        return out

    def total(self, name: str, **match: Any) -> float:
        """Sum of metric ``name`` over points whose attributes contain ``match``
        (keys with dots written as ``__``: ``security__event__name=...``)."""
        wanted = {key.replace("__", "."): value for key, value in match.items()}
        return sum(
            p.value
            for p in self.points(name)
            if all(p.attributes.get(k) == v for k, v in wanted.items())
        )

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.logger_provider.shutdown()
        self.meter_provider.shutdown()


def block_after_two_401s(attempt: Callable[[], Any]) -> None:
    """Get the attacker blocked (a runtime with host_threshold=2 and blocks on): two
    ``attempt()`` answered 401, then the detector holds exactly one block."""
    for _ in range(2):
        assert attempt().status_code == 401
    detector = runtime.current().detector
    assert detector is not None and detector.flush(5.0)
    assert len(detector.blocks) == 1


def uninstrument_web() -> None:
    """Undo otel_secaudit's and contrib's FastAPI/Starlette instrumentation, where on."""
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    from opentelemetry.instrumentation.starlette import StarletteInstrumentor

    from otel_secaudit import SecAuditInstrumentor

    for instrumentor in (SecAuditInstrumentor(), FastAPIInstrumentor(), StarletteInstrumentor()):
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()


@pytest.fixture
def make_sdk() -> Iterator[Any]:
    """Factory: ``make_sdk(sampler=..., host_threshold=3, ...)``; the recorder becomes the
    process-wide one for the test and the previous one is restored afterwards."""
    made: list[SDK] = []
    previous = runtime.swap(None)

    def factory(sampler: Sampler | None = None, **settings: Any) -> SDK:
        sdk = SDK(sampler, **settings)
        runtime.swap(sdk.runtime)
        made.append(sdk)
        return sdk

    yield factory
    runtime.swap(previous)
    for sdk in made:
        sdk.shutdown()


@pytest.fixture
def sdk(make_sdk: Any) -> SDK:
    """A default strict SDK (see :class:`SDK`)."""
    return make_sdk()


@pytest.fixture
def detectors() -> Iterator[list[Any]]:
    """Append every AbuseDetector a test builds; they are shut down after the test."""
    made: list[Any] = []
    yield made
    for detector in made:
        detector.shutdown()


def http_scope(
    path: str,
    *,
    query: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
    client: tuple[str, int] = ("127.0.0.1", 1),
    raw_path: bytes | None = None,
) -> dict[str, Any]:
    """An ASGI HTTP ``GET`` scope, for driving apps directly when thousands of requests must
    be cheap."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("latin-1", "replace") if raw_path is None else raw_path,
        "root_path": "",
        "query_string": query,
        "headers": [(b"host", b"test")] if headers is None else headers,
        "client": client,
        "server": ("test", 80),
    }


def markdown_code_lines(text: str, language: str) -> list[str]:
    """The non-blank, non-comment lines of every fenced ``language`` block in ``text``, with
    trailing ``  # comments`` removed."""
    blocks = re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A program the harness needs is not installed (:class:`harness.MissingBinary`): a skip
    on a developer machine, a failure under ``CI=true`` (.ci/run installs them all)."""
    report: pytest.TestReport = yield
    if not IN_CI and call.excinfo is not None and call.excinfo.errisinstance(MissingBinary):
        _, line, _ = item.location
        report.outcome = "skipped"
        report.longrepr = (str(item.path), (line or 0) + 1, f"Skipped: {call.excinfo.value}")
    return report


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server for the whole session (fails under CI=true when missing)."""
    server = RedisServer().start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def redis_tls_server() -> Iterator[RedisTLSServer]:
    """A real redis-server speaking TLS only (``rediss://``, throwaway CA) for the session."""
    server = RedisTLSServer().start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServers]:
    """A real 3-master Redis Cluster (``redis-cli --cluster create``) for the session."""
    cluster = RedisClusterServers().start()
    yield cluster
    cluster.close()


@pytest.fixture
def redis_sentinel() -> Iterator[RedisSentinelServers]:
    """A fresh master + replica + ``redis-server --sentinel``, all requiring a password
    (function scope: a test may fail the master over)."""
    setup = RedisSentinelServers(password="sentinel-test-pw").start()
    yield setup
    setup.close()


@pytest.fixture
def otlp_receiver() -> Iterator[OTLPReceiver]:
    """A fresh in-process OTLP receiver (gRPC + HTTP) on loopback."""
    receiver = OTLPReceiver().start()
    yield receiver
    receiver.stop()


def detecting_runtime(sdk: SDK) -> runtime.Runtime:
    """A runtime on ``sdk``'s recorder and providers with abuse detection on, installed as the
    process-wide one (the caller closes it, or shuts its detector down)."""
    rt = runtime.build(
        recorder=sdk.recorder,
        tracer_provider=sdk.tracer_provider,
        meter_provider=sdk.meter_provider,
        logger_provider=sdk.logger_provider,
    )
    runtime.swap(rt)
    return rt


@pytest.fixture
def app_runtime(make_sdk: Any) -> Iterator[Callable[..., tuple[Any, runtime.Runtime]]]:
    """Factory: an SDK plus a runtime with abuse detection on, installed for the test."""
    built: list[runtime.Runtime] = []

    def factory(**settings: Any) -> tuple[Any, runtime.Runtime]:
        sdk = make_sdk(**settings)
        rt = detecting_runtime(sdk)
        built.append(rt)
        return sdk, rt

    yield factory
    for rt in built:
        rt.close()


def otlp_json_attributes(attributes: dict[str, Any]) -> list[dict[str, Any]]:
    """``attributes`` as OTLP/JSON key-values (what the json-file exporters write), for the
    report tests' hand-made recordings: lists, ints and strings."""

    def value(v: Any) -> dict[str, Any]:
        if isinstance(v, list):
            return {"arrayValue": {"values": [value(item) for item in v]}}
        if isinstance(v, int):
            return {"intValue": str(v)}
        return {"stringValue": str(v)}

    return [{"key": k, "value": value(v)} for k, v in attributes.items()]
