"""Sending one batch of spooled records to the collector, and reading its answer.

An exporter's ``export()`` answers SUCCESS or FAILURE, and the spool needs to know more:

* whether the collector refused the batch for its **size** (the gRPC ``RESOURCE_EXHAUSTED``
  "message larger than max" a server answers to a message over its receive limit, 4 MiB by
  default; HTTP 413): the batch is then split, and a single record that can never be
  delivered goes to the dead letter, instead of the same batch being retried forever;
* the collector's ``partial_success`` (``rejected_log_records``): those records were refused
  for good and are counted, not retried (OTLP specification), and not counted as delivered;
* and the retries must be the spool's own (backoff, shutdown), not the exporter's internal
  loop, which retries ``RESOURCE_EXHAUSTED`` for up to its timeout.

The SDK's OTLP log exporters discard the collector's answer and offer no public way to get it.
So for the SDK's own gRPC and HTTP/protobuf log exporters (built by :mod:`.otlp` from the
standard ``OTEL_EXPORTER_OTLP_*`` variables), a batch is encoded with the SDK's OTLP encoder and
sent over the exporter's own connection: its gRPC stub, metadata and timeout, or its HTTP
transport, endpoint, headers, compression and timeout. This module is the one place the plugin
uses private attributes of the SDK's exporters; ``tests/test_delivery_wire.py`` drives both
protocols against a real receiver and fails when those attributes move. When they are missing
(another SDK release) or the exporter is any other one, :class:`ExporterSender` uses the public
``export()``: delivered or retried, no split and no partial success (a warning says so once).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final, Protocol

from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import LogRecordExporter

from .drops import export_succeeded

__all__ = [
    "DEFAULT_MAX_REQUEST_BYTES",
    "ExporterSender",
    "LogSender",
    "Outcome",
    "SendResult",
    "log_sender",
]

_log = logging.getLogger("otel_secaudit")

#: Largest encoded export request the spool sends: under gRPC's default 4 MiB receive limit
#: (the collector's OTLP receiver keeps it unless configured otherwise), with a margin.
DEFAULT_MAX_REQUEST_BYTES: Final = 3 * 1024 * 1024


class Outcome(Enum):
    """What became of one export request."""

    #: The collector took the batch (some records may still be in ``rejected``).
    DELIVERED = "delivered"
    #: Try the same batch again later (collector down, timeout, any other failure).
    RETRY = "retry"
    #: The batch is too large for the collector: split it (one record: dead letter).
    TOO_LARGE = "too_large"
    #: The batch cannot be encoded (say a lone surrogate spooled by an older version): split
    #: it like TOO_LARGE, so the one bad record goes to the dead letter.
    INVALID = "invalid"


@dataclass(frozen=True)
class SendResult:
    """The outcome of one export request, with the collector's words."""

    outcome: Outcome
    #: ``partial_success.rejected_log_records``: refused for good, never retried.
    rejected: int = 0
    #: the collector's error message or status, for the log line
    detail: str = ""
    #: for TOO_LARGE, who refused it, in a few stable words (grouped in the report)
    reason: str = ""


DELIVERED: Final = SendResult(Outcome.DELIVERED)
#: How long a size the collector refused is remembered.
LEARNED_LIMIT_S: Final = 300.0


class LogSender(Protocol):
    """Sends one batch and says what became of it; never retries by itself."""

    def send(self, records: Sequence[ReadableLogRecord]) -> SendResult:
        """Export ``records`` once."""
        ...


class ExporterSender:
    """Any exporter, through its public ``export()``: SUCCESS is delivered, anything else is
    retried (the exporter says nothing about sizes or partial success)."""

    def __init__(self, exporter: LogRecordExporter) -> None:
        self.exporter = exporter

    def send(self, records: Sequence[ReadableLogRecord]) -> SendResult:
        """Export ``records`` with ``exporter.export()``."""
        if export_succeeded(self.exporter.export(records)):
            return DELIVERED
        return SendResult(Outcome.RETRY, detail="the exporter answered FAILURE")


def _encode(records: Sequence[ReadableLogRecord]) -> Any:
    from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs

    return encode_logs(records)


def _partial_success(response: Any) -> SendResult:
    partial = getattr(response, "partial_success", None)
    rejected = int(getattr(partial, "rejected_log_records", 0) or 0)
    if rejected <= 0:
        return DELIVERED
    message = str(getattr(partial, "error_message", "") or "no reason given")
    return SendResult(Outcome.DELIVERED, rejected=rejected, detail=message[:300])


class _EncodingSender:
    """Encodes a batch once, refuses to send one over ``max_request_bytes`` (TOO_LARGE without
    a round trip), and sends the rest with :meth:`_send`.

    It also learns the collector's limit: once a request of N bytes was refused for its size,
    requests of N bytes or more are split without being sent for :data:`LEARNED_LIMIT_S`
    (a refused request costs a round trip of the whole body, and over gRPC a reset stream),
    then the collector is asked again (its limit may have been raised).
    """

    def __init__(
        self,
        exporter: LogRecordExporter,
        max_request_bytes: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.exporter = exporter
        self.max_request_bytes = max_request_bytes
        self._clock = clock
        self._refused_size: int | None = None
        self._refused_until = 0.0

    def limit(self) -> int:
        """Largest request sent now: ``max_request_bytes``, or under the learned limit."""
        if self._refused_size is not None and self._clock() < self._refused_until:
            return min(self.max_request_bytes, self._refused_size - 1)
        return self.max_request_bytes

    def send(self, records: Sequence[ReadableLogRecord]) -> SendResult:
        """Export ``records`` once over the exporter's connection."""
        try:
            request = _encode(records)
        except (ValueError, TypeError, OverflowError) as exc:  # never retried forever
            return SendResult(
                Outcome.INVALID,
                detail=f"cannot be encoded: {type(exc).__name__}: {exc}"[:300],
                reason="cannot be encoded",
            )
        size = request.ByteSize()
        limit = self.limit()
        if size > limit:
            learned = limit < self.max_request_bytes
            return SendResult(
                Outcome.TOO_LARGE,
                detail=f"{size} bytes encoded, over the limit of {limit}",
                reason="over a size the collector refused"
                if learned
                else f"over the request limit ({self.max_request_bytes} bytes)",
            )
        result = self._send(request)
        if result.outcome is Outcome.TOO_LARGE:
            if self._refused_size is None or self._clock() >= self._refused_until:
                self._refused_size = size
            self._refused_size = min(self._refused_size, size)
            self._refused_until = self._clock() + LEARNED_LIMIT_S
        return result

    def _send(self, request: Any) -> SendResult:
        raise NotImplementedError


class GrpcSender(_EncodingSender):
    """The SDK's gRPC OTLP log exporter's stub, metadata and timeout (private attributes,
    see the module docstring)."""

    def _send(self, request: Any) -> SendResult:
        import grpc

        exporter: Any = self.exporter
        try:
            response = exporter._client.Export(
                request=request, metadata=exporter._headers, timeout=exporter._timeout
            )
        except grpc.RpcError as error:
            code = error.code() if callable(getattr(error, "code", None)) else None  # type: ignore[attr-defined]
            details = error.details() if callable(getattr(error, "details", None)) else ""  # type: ignore[attr-defined]
            name = getattr(code, "name", str(code))
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED and _is_size_refusal(error, details):
                return SendResult(
                    Outcome.TOO_LARGE, detail=f"{name}: {details}"[:300], reason=f"gRPC {name}"
                )
            return SendResult(Outcome.RETRY, detail=f"{name}: {details}"[:300])
        return _partial_success(response)


def _is_size_refusal(error: Any, details: str) -> bool:
    """True for the RESOURCE_EXHAUSTED a gRPC server answers to a message over its receive
    limit ("Received message larger than max (5303932 vs. 4194304)"). A RESOURCE_EXHAUSTED
    with RetryInfo, or any other (a backend throttling its clients), asks to come back later:
    retried, never split, so throttling can never push records into the dead letter."""
    text = (details or "").lower()
    if "larger than max" not in text and "too large" not in text:
        return False
    try:
        metadata = error.trailing_metadata() or ()
        return not any(key == "google.rpc.retryinfo-bin" for key, _ in metadata)
    except Exception:
        return True


class HttpSender(_EncodingSender):
    """The SDK's HTTP/protobuf OTLP log exporter's transport (private attributes, see the
    module docstring): one POST, no retry loop."""

    def __init__(
        self,
        exporter: LogRecordExporter,
        max_request_bytes: int,
        post: Callable[[bytes], tuple[int | None, bytes, str]],
    ) -> None:
        super().__init__(exporter, max_request_bytes)
        self._post = post

    def _send(self, request: Any) -> SendResult:
        status, body, problem = self._post(request.SerializeToString())
        if status is None:
            return SendResult(Outcome.RETRY, detail=problem[:300])
        if status == 413:
            return SendResult(
                Outcome.TOO_LARGE, detail=f"HTTP 413 {problem}"[:300], reason="HTTP 413"
            )
        if not 200 <= status < 300:
            return SendResult(Outcome.RETRY, detail=f"HTTP {status} {problem}"[:300])
        if not body:
            return DELIVERED
        from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
            ExportLogsServiceResponse,
        )

        try:
            response = ExportLogsServiceResponse.FromString(body)
        except Exception:  # a 2xx whose body is not a response: the batch was taken
            return DELIVERED
        return _partial_success(response)


def _transport_post(client: Any) -> Callable[[bytes], tuple[int | None, bytes, str]]:
    """POST through an SDK >= 1.4x ``_OTLPHTTPClient`` (transport abstraction)."""

    def post(data: bytes) -> tuple[int | None, bytes, str]:
        result = client._transport.request(
            "POST",
            client._endpoint,
            headers=client._headers,
            data=client._compress(data),
            timeout=client._timeout,
        )
        if result.status_code is None:
            return None, b"", str(result.error or "no answer")
        try:
            body = result.content()
        except Exception:
            body = b""
        return result.status_code, body, str(result.reason or "")

    return post


def _session_post(exporter: Any) -> Callable[[bytes], tuple[int | None, bytes, str]]:
    """POST through an older HTTP exporter's ``_export(data, timeout)`` (a requests
    Response)."""

    def post(data: bytes) -> tuple[int | None, bytes, str]:
        try:
            response = exporter._export(data, exporter._timeout)
        except Exception as exc:  # connection refused, timeout: the collector is away
            return None, b"", f"{type(exc).__name__}: {exc}"
        return int(response.status_code), bytes(response.content or b""), str(response.reason)

    return post


def _http_post(exporter: Any) -> Callable[[bytes], tuple[int | None, bytes, str]] | None:
    client = getattr(exporter, "_client", None)
    needed = ("_transport", "_endpoint", "_headers", "_timeout", "_compress")
    if client is not None and all(hasattr(client, name) for name in needed):
        return _transport_post(client)
    if callable(getattr(exporter, "_export", None)) and hasattr(exporter, "_timeout"):
        return _session_post(exporter)
    return None


_GRPC_MODULE: Final = "opentelemetry.exporter.otlp.proto.grpc._log_exporter"
_HTTP_MODULE: Final = "opentelemetry.exporter.otlp.proto.http._log_exporter"


def _sdk_class(module: str, name: str) -> type | None:
    try:
        return getattr(__import__(module, fromlist=[name]), name)  # type: ignore[no-any-return]
    except Exception:
        return None


def log_sender(
    exporter: LogRecordExporter, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
) -> LogSender:
    """The sender for ``exporter``: over the SDK OTLP exporter's own connection when it is one
    of the SDK's (exactly that class: a subclass may override ``export()``), else its public
    ``export()``."""
    kind = type(exporter)
    grpc_class = _sdk_class(_GRPC_MODULE, "OTLPLogExporter")
    http_class = _sdk_class(_HTTP_MODULE, "OTLPLogExporter")
    if grpc_class is not None and kind is grpc_class:
        if all(hasattr(exporter, name) for name in ("_client", "_headers", "_timeout")):
            return FallbackSender(GrpcSender(exporter, max_request_bytes), exporter)
    elif http_class is not None and kind is http_class:
        post = _http_post(exporter)
        if post is not None:
            return FallbackSender(HttpSender(exporter, max_request_bytes, post), exporter)
    else:
        return ExporterSender(exporter)
    _warn_fallback(exporter, "its connection attributes are not where this SDK release kept them")
    return ExporterSender(exporter)


def _warn_fallback(exporter: LogRecordExporter, why: str) -> None:
    _log.warning(
        "otel_secaudit: the spool sends through %s.export() (%s): batches the collector "
        "refuses for their size are retried, not split, and its partial_success is not counted",
        type(exporter).__name__,
        why,
    )


class FallbackSender:
    """``primary`` until it fails in a way that means the SDK's private attributes moved
    (AttributeError, TypeError): then, for good, the exporter's public ``export()``."""

    def __init__(self, primary: LogSender, exporter: LogRecordExporter) -> None:
        self.primary: LogSender = primary
        self.exporter = exporter

    def send(self, records: Sequence[ReadableLogRecord]) -> SendResult:
        """Send with ``primary`` (or the public fallback once it broke)."""
        try:
            return self.primary.send(records)
        except (AttributeError, TypeError) as exc:
            if isinstance(self.primary, ExporterSender):
                raise
            _warn_fallback(self.exporter, f"{type(exc).__name__}: {exc}")
            self.primary = ExporterSender(self.exporter)
            return self.primary.send(records)
