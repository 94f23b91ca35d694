"""An in-process OTLP receiver on loopback (gRPC and HTTP/protobuf), and readers for what it
received.

It implements the real collector services of ``opentelemetry-proto`` over real gRPC and real
HTTP, keeps every accepted request parsed and as raw bytes (so a test can assert that no
secret crossed the wire), and can be slowed down, made to refuse, or stopped and restarted
on the same ports.
"""

from __future__ import annotations

import gzip
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from .processes import free_port


def any_value(value: AnyValue) -> Any:
    """An OTLP AnyValue as a Python value."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return tuple(any_value(item) for item in value.array_value.values)
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind)


def attributes_of(key_values: Any) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in key_values}


@dataclass
class ReceivedLog:
    event_name: str
    severity_number: int
    severity_text: str
    body: Any
    attributes: dict[str, Any]
    trace_id: str
    span_id: str
    time_unix_nano: int
    scope: str


@dataclass
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    attributes: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]]
    scope: str


@dataclass
class ReceivedPoint:
    metric: str
    value: float
    attributes: dict[str, Any]
    exemplars: list[dict[str, Any]] = field(default_factory=list)


class OTLPReceiver:
    """An in-process OTLP receiver on loopback: gRPC on ``grpc_port``, HTTP on ``http_port``.

    Fault injection: set :attr:`delay` (seconds before answering), :attr:`fail_next` (answer the
    next N export calls with gRPC :attr:`fail_code`, UNAVAILABLE by default, or HTTP 503),
    :attr:`reject_log_records` (the next log export answers a partial success rejecting that
    many records, which are not kept), or :meth:`stop` and :meth:`start` again (same ports).
    Everything accepted is kept: parsed requests and the raw request bytes.

    Size limits, as a collector has them: ``max_receive_bytes`` is the gRPC server's
    ``grpc.max_receive_message_length`` (gRPC's default is 4 MiB; a larger message gets
    RESOURCE_EXHAUSTED before any handler runs), ``max_http_body`` answers HTTP 413 to a larger
    body (counted in :attr:`too_large`).
    """

    def __init__(
        self, max_receive_bytes: int | None = None, max_http_body: int | None = None
    ) -> None:
        self.grpc_port = free_port()
        self.http_port = free_port()
        self.max_receive_bytes = max_receive_bytes
        self.max_http_body = max_http_body
        self.too_large = 0
        #: Content-Type of every HTTP request taken (a collector wants application/x-protobuf)
        self.content_types: list[str] = []
        self.reject_log_records = 0
        self.delay = 0.0
        self.fail_next = 0
        #: the gRPC status of an injected failure (HTTP answers 503 whatever it is)
        self.fail_code = grpc.StatusCode.UNAVAILABLE
        self.lock = threading.Lock()
        self.log_requests: list[logs_service_pb2.ExportLogsServiceRequest] = []
        self.trace_requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.metric_requests: list[metrics_service_pb2.ExportMetricsServiceRequest] = []
        self.raw: list[bytes] = []
        self.refused = 0
        self._grpc: grpc.Server | None = None
        self._http: ThreadingHTTPServer | None = None

    @property
    def grpc_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.grpc_port}"

    @property
    def http_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    # -- lifecycle

    def start(self) -> OTLPReceiver:
        options = []
        if self.max_receive_bytes is not None:
            options.append(("grpc.max_receive_message_length", self.max_receive_bytes))
        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=options)
        receiver = self

        class Logs(logs_service_pb2_grpc.LogsServiceServicer):
            def Export(self, request, context):  # noqa: N802 - gRPC method name
                return receiver._accept_logs(request, context)

        class Traces(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):  # noqa: N802
                receiver._accept(request, receiver.trace_requests, context)
                return trace_service_pb2.ExportTraceServiceResponse()

        class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
            def Export(self, request, context):  # noqa: N802
                receiver._accept(request, receiver.metric_requests, context)
                return metrics_service_pb2.ExportMetricsServiceResponse()

        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(Logs(), self._grpc)
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), self._grpc)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), self._grpc)
        self._grpc.add_insecure_port(f"127.0.0.1:{self.grpc_port}")
        self._grpc.start()

        self._http = ThreadingHTTPServer(("127.0.0.1", self.http_port), self._http_handler())
        self._http.daemon_threads = True
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Take the receiver down (both protocols); :meth:`start` brings it back."""
        if self._grpc is not None:
            self._grpc.stop(grace=None)
            self._grpc = None
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def _accept(self, request: Any, bucket: list[Any], context: Any = None) -> bool:
        if self.delay:
            time.sleep(self.delay)
        with self.lock:
            if self.fail_next > 0:
                self.fail_next -= 1
                self.refused += 1
                if context is not None:
                    context.abort(self.fail_code, "injected failure")
                return False
            bucket.append(request)
            self.raw.append(request.SerializeToString())
        return True

    def _accept_logs(
        self, request: Any, context: Any = None
    ) -> logs_service_pb2.ExportLogsServiceResponse | None:
        """Keep a log export request; the response (None: refused with a failure)."""
        with self.lock:
            rejected, self.reject_log_records = self.reject_log_records, 0
        response = logs_service_pb2.ExportLogsServiceResponse()
        if rejected:
            kept = logs_service_pb2.ExportLogsServiceRequest()
            kept.CopyFrom(request)
            count = drop_log_records(kept, rejected)
            response.partial_success.rejected_log_records = count
            response.partial_success.error_message = f"injected: {count} records rejected"
            request = kept
        if not self._accept(request, self.log_requests, context):
            return None
        return response

    def _http_handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self
        routes: dict[str, tuple[Any, str, Any]] = {
            "/v1/logs": (
                logs_service_pb2.ExportLogsServiceRequest,
                "log_requests",
                logs_service_pb2.ExportLogsServiceResponse,
            ),
            "/v1/traces": (
                trace_service_pb2.ExportTraceServiceRequest,
                "trace_requests",
                trace_service_pb2.ExportTraceServiceResponse,
            ),
            "/v1/metrics": (
                metrics_service_pb2.ExportMetricsServiceRequest,
                "metric_requests",
                metrics_service_pb2.ExportMetricsServiceResponse,
            ),
        }

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:  # noqa: N802
                route = routes.get(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                payload = self.rfile.read(length)
                if route is None:
                    self._reply(404, b"")
                    return
                if receiver.max_http_body is not None and length > receiver.max_http_body:
                    with receiver.lock:
                        receiver.too_large += 1
                    self._reply(413, b"")
                    return
                with receiver.lock:
                    receiver.content_types.append(self.headers.get("Content-Type") or "")
                encoding = (self.headers.get("Content-Encoding") or "").lower()
                if encoding == "gzip":
                    payload = gzip.decompress(payload)
                elif encoding == "deflate":
                    payload = zlib.decompress(payload)
                message_type, bucket, response_type = route
                request = message_type()
                request.ParseFromString(payload)
                if bucket == "log_requests":
                    response = receiver._accept_logs(request)
                elif receiver._accept(request, getattr(receiver, bucket)):
                    response = response_type()
                else:
                    response = None
                if response is None:
                    self._reply(503, b"")
                else:
                    self._reply(200, response.SerializeToString())

            def _reply(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler

    # -- what was received

    def raw_bytes(self) -> bytes:
        with self.lock:
            return b"".join(self.raw)

    def security_logs(self, name: str | None = None) -> list[ReceivedLog]:
        """The received log records of the ``otel_secaudit`` scope (named ``name``, if given)."""
        return [
            log
            for log in self.logs()
            if log.scope == "otel_secaudit" and (name is None or log.event_name == name)
        ]

    def logs(self) -> list[ReceivedLog]:
        out = []
        with self.lock:
            requests = list(self.log_requests)
        for request in requests:
            for resource_logs in request.resource_logs:
                for scope_logs in resource_logs.scope_logs:
                    for record in scope_logs.log_records:
                        out.append(
                            ReceivedLog(
                                event_name=record.event_name,
                                severity_number=record.severity_number,
                                severity_text=record.severity_text,
                                body=any_value(record.body),
                                attributes=attributes_of(record.attributes),
                                trace_id=record.trace_id.hex(),
                                span_id=record.span_id.hex(),
                                time_unix_nano=record.time_unix_nano,
                                scope=scope_logs.scope.name,
                            )
                        )
        return out

    def spans(self) -> list[ReceivedSpan]:
        out = []
        with self.lock:
            requests = list(self.trace_requests)
        for request in requests:
            for resource_spans in request.resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        out.append(
                            ReceivedSpan(
                                name=span.name,
                                trace_id=span.trace_id.hex(),
                                span_id=span.span_id.hex(),
                                attributes=attributes_of(span.attributes),
                                events=[(e.name, attributes_of(e.attributes)) for e in span.events],
                                scope=scope_spans.scope.name,
                            )
                        )
        return out

    def metric_points(self, name: str) -> list[ReceivedPoint]:
        """Every sum/gauge data point of metric ``name`` received so far (all exports)."""
        out = []
        with self.lock:
            requests = list(self.metric_requests)
        for request in requests:
            for resource_metrics in request.resource_metrics:
                for scope_metrics in resource_metrics.scope_metrics:
                    for metric in scope_metrics.metrics:
                        if metric.name != name:
                            continue
                        data = metric.sum if metric.HasField("sum") else metric.gauge
                        for point in data.data_points:
                            value = point.as_int if point.HasField("as_int") else point.as_double
                            exemplars = [
                                {
                                    "trace_id": ex.trace_id.hex(),
                                    "span_id": ex.span_id.hex(),
                                    "attributes": attributes_of(ex.filtered_attributes),
                                }
                                for ex in point.exemplars
                            ]
                            out.append(
                                ReceivedPoint(
                                    name, value, attributes_of(point.attributes), exemplars
                                )
                            )
        return out


def drop_log_records(request: Any, count: int) -> int:
    """Remove up to ``count`` log records from an ExportLogsServiceRequest (the last ones);
    how many were removed."""
    removed = 0
    for resource_logs in reversed(request.resource_logs):
        for scope_logs in reversed(resource_logs.scope_logs):
            while scope_logs.log_records and removed < count:
                del scope_logs.log_records[-1]
                removed += 1
    return removed


def iter_strings(data: bytes, minimum: int = 4) -> Iterator[str]:
    """Printable ASCII runs in ``data`` (debugging aid for leak assertions)."""
    current = bytearray()
    for byte in data:
        if 32 <= byte < 127:
            current.append(byte)
            continue
        if len(current) >= minimum:
            yield current.decode()
        current.clear()
    if len(current) >= minimum:
        yield current.decode()
