"""The real servers the tests start: a Redis server and an OTLP receiver (gRPC and HTTP).

One module for all of them (see STYLE.md). Nothing here is mocked: Redis is the real
``redis-server`` binary on a free loopback port; the OTLP receiver implements the real
collector services from ``opentelemetry-proto`` over real gRPC and real HTTP/protobuf, and
keeps the raw bytes it received so tests can assert that no secret crossed the wire.

Under ``CI=true`` a missing server binary is a test failure, never a silent skip.
"""

from __future__ import annotations

import gzip
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def require_binary(name: str) -> str:
    """Path of ``name``; a failure under CI=true, a skip on a developer machine."""
    path = shutil.which(name) or (
        f"/usr/bin/{name}" if os.path.exists(f"/usr/bin/{name}") else None
    )
    if path is None:
        message = f"{name} is not installed (.ci/run installs it: apt-get install -y {name})"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


def promtool_check_queries(
    expressions: list[str], folder: Path
) -> subprocess.CompletedProcess[str]:
    """Have a real ``promtool`` parse PromQL ``expressions`` (as recording rules in ``folder``)."""
    rules = {
        "groups": [
            {
                "name": "parse-only",
                "rules": [
                    {"record": f"parse:check_{i}:sum", "expr": expr}
                    for i, expr in enumerate(expressions)
                ],
            }
        ]
    }
    path = folder / "queries.yml"
    path.write_text(yaml.safe_dump(rules), encoding="utf-8")
    return subprocess.run(
        [require_binary("promtool"), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        time.sleep(interval)


# --------------------------------------------------------------------------------------------
# Redis


class RedisServer:
    """A real ``redis-server`` on a free loopback port, no persistence."""

    def __init__(self, password: str | None = None, extra_args: list[str] | None = None) -> None:
        self.binary = require_binary("redis-server")
        self.port = free_port()
        self.password = password
        #: more ``redis-server`` arguments (cluster mode, replicaof, ...)
        self.extra_args = list(extra_args or [])
        self._dir = tempfile.mkdtemp(prefix="secaudit-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def database_url(self, db: int) -> str:
        """The URL of database ``db``, emptied first: a database of its own for one test."""
        import redis

        url = self.url.rsplit("/", 1)[0] + f"/{db}"
        redis.Redis.from_url(url).flushdb()
        return url

    def start(self) -> RedisServer:
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self._dir,
            "--daemonize",
            "no",
        ]
        if self.password:
            args += ["--requirepass", self.password]
        args += self.extra_args
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._accepting, timeout=10)
        return self

    def _accepting(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                reply = sock.recv(64)
                return reply.startswith(b"+PONG") or reply.startswith(b"-NOAUTH")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL the server (fault injection); :meth:`start` brings it back on the same port."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(5)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)


def tls_files(folder: str) -> tuple[str, str, str]:
    """A throwaway CA and a certificate for 127.0.0.1 signed by it, made with ``openssl``
    in ``folder``: (CA certificate, server certificate, server key) paths."""
    openssl = require_binary("openssl")
    ca_key, ca_crt = os.path.join(folder, "ca.key"), os.path.join(folder, "ca.crt")
    key, csr = os.path.join(folder, "server.key"), os.path.join(folder, "server.csr")
    crt, ext = os.path.join(folder, "server.crt"), os.path.join(folder, "san.ext")
    ec_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]  # fast to make
    with open(ext, "w", encoding="utf-8") as handle:
        handle.write("subjectAltName=IP:127.0.0.1\n")
    for command in (
        ["req", "-x509", *ec_key, "-nodes", "-keyout", ca_key, "-out", ca_crt]
        + ["-days", "1", "-subj", "/CN=otel-secaudit test CA"],
        ["req", *ec_key, "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key, "-CAcreateserial"]
        + ["-out", crt, "-days", "1", "-extfile", ext],
    ):
        subprocess.run([openssl, *command], check=True, capture_output=True, timeout=60)
    return ca_crt, crt, key


class RedisTLSServer(RedisServer):
    """A real ``redis-server`` that speaks TLS only (``rediss://``), with a throwaway CA."""

    def __init__(self) -> None:
        super().__init__()
        self.ca_file, cert, key = tls_files(self._dir)
        self.extra_args = ["--port", "0", "--tls-port", str(self.port)]
        self.extra_args += ["--tls-cert-file", cert, "--tls-key-file", key]
        self.extra_args += ["--tls-ca-cert-file", self.ca_file, "--tls-auth-clients", "no"]

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={self.ca_file}"

    def _accepting(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.process.returncode}")
        context = ssl.create_default_context(cafile=self.ca_file)
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as raw:
                with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
                    sock.sendall(b"PING\r\n")
                    return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False


def _redis_major_version(binary: str) -> int:
    """The major version of a ``redis-server`` binary (``Redis server v=7.0.15 ...``)."""
    output = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    version = output.split("v=", 1)[1].split(".", 1)[0] if "v=" in output else "0"
    return int(version) if version.isdigit() else 0


def _port_with_free_bus_port() -> int:
    """A free loopback port whose cluster bus port (port + 10000) is free too."""
    for _ in range(200):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair (port, port + 10000) for a cluster node")


class RedisClusterServers:
    """A real Redis Cluster on loopback: ``masters`` ``redis-server --cluster-enabled yes``
    nodes (no replicas, no TLS) joined by ``redis-cli --cluster create``; fewer than three
    masters (which ``--cluster create`` refuses), by ``CLUSTER MEET`` and ``ADDSLOTSRANGE``."""

    def __init__(self, masters: int = 3, node_timeout_ms: int = 2000) -> None:
        self.cli = require_binary("redis-cli")
        self.nodes = [RedisServer() for _ in range(masters)]
        self.node_timeout_ms = node_timeout_ms

    @property
    def url(self) -> str:
        """``redis+cluster://`` with two of the nodes as startup nodes."""
        hosts = ",".join(f"127.0.0.1:{node.port}" for node in self.nodes[:2])
        return f"redis+cluster://{hosts}"

    def start(self) -> RedisClusterServers:
        # The bus port is port + 10000 unless set (``cluster-port``, Redis >= 7): that one may
        # be taken, or above 65535 for an ephemeral port, so choose it, or the node's port.
        bus_port_option = _redis_major_version(self.nodes[0].binary) >= 7
        for node in self.nodes:
            node.extra_args = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                os.path.join(node._dir, "nodes.conf"),
                "--cluster-node-timeout",
                str(self.node_timeout_ms),
            ]
            if bus_port_option:
                node.extra_args += ["--cluster-port", str(free_port())]
            else:
                node.port = _port_with_free_bus_port()
            node.start()
        if len(self.nodes) < 3:
            self._join_by_hand()
            wait_for(self.ready, timeout=15, interval=0.05)
            return self
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        created = subprocess.run(
            [self.cli, "--cluster", "create", *addresses]
            + ["--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{created.stdout}")
        wait_for(self.ready, timeout=15, interval=0.05)
        return self

    def _join_by_hand(self) -> None:
        """Give each node an equal, contiguous share of the slots and introduce them."""
        count = len(self.nodes)
        for i, node in enumerate(self.nodes):
            low, high = i * 16384 // count, (i + 1) * 16384 // count - 1
            self.info(node, "cluster", "addslotsrange", str(low), str(high))
            if i:
                first = self.nodes[0]
                meet = ["cluster", "meet", "127.0.0.1", str(first.port)]
                if "--cluster-port" in first.extra_args:  # else the bus port is port + 10000
                    meet.append(first.extra_args[first.extra_args.index("--cluster-port") + 1])
                self.info(node, *meet)

    def owner_of(self, key: str) -> RedisServer:
        """The node that serves ``key``'s slot (all nodes must be up)."""
        from redis.cluster import ClusterNode, RedisCluster

        client = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", n.port) for n in self.nodes])
        try:
            port = client.get_node_from_key(key).port
        finally:
            client.close()
        return next(node for node in self.nodes if node.port == port)

    def ready(self) -> bool:
        """Every node agrees the cluster is up and all 16384 slots are served."""
        for node in self.nodes:
            info = self.info(node, "cluster", "info")
            if "cluster_state:ok" not in info or "cluster_slots_ok:16384" not in info:
                return False
        return True

    def info(self, node: RedisServer, *command: str) -> str:
        """Output of ``redis-cli -p PORT COMMAND...`` against one node."""
        return subprocess.run(
            [self.cli, "-p", str(node.port), *command],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout

    def close(self) -> None:
        for node in self.nodes:
            node.close()


class RedisSentinelServers:
    """A real Redis Sentinel setup on loopback: a master, one replica and one
    ``redis-server --sentinel`` (quorum 1) watching them as :attr:`service_name`, quick to
    notice a dead master (``down_after_ms``; a benchmark that loads a small machine wants
    more, or a starved master is failed over). With ``password``, the servers and the
    sentinel all require it (as the ``limits`` URI form expects: one password for both)."""

    service_name = "secaudit"

    def __init__(self, password: str | None = None, down_after_ms: int = 400) -> None:
        self.password = password
        #: how long the master may be silent before the sentinel fails it over
        self.down_after_ms = down_after_ms
        self.master = RedisServer(password)
        self.replica = RedisServer(password)
        self.sentinel_port = free_port()
        self._dir = tempfile.mkdtemp(prefix="secaudit-sentinel-")
        self.sentinel: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis+sentinel://{auth}127.0.0.1:{self.sentinel_port}/{self.service_name}"

    def start(self) -> RedisSentinelServers:
        # masterauth: the master replicates the new one once demoted; no 5 s diskless delay
        common = ["--repl-diskless-sync-delay", "0"]
        common += ["--masterauth", self.password] if self.password else []
        self.master.extra_args = list(common)
        self.master.start()
        self.replica.extra_args = ["--replicaof", "127.0.0.1", str(self.master.port), *common]
        self.replica.start()
        wait_for(
            lambda: "master_link_status:up" in self.cli(self.replica.port, "info", "replication"),
            timeout=10,
        )
        name = self.service_name
        lines = [
            f"port {self.sentinel_port}",
            "bind 127.0.0.1",
            f"dir {self._dir}",
            f"sentinel monitor {name} 127.0.0.1 {self.master.port} 1",
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
            f"sentinel failover-timeout {name} 5000",
            f"sentinel parallel-syncs {name} 1",
            # known at once (else the sentinel learns it from the master's INFO, up to 10 s)
            f"sentinel known-replica {name} 127.0.0.1 {self.replica.port}",
        ]
        if self.password:
            lines += [f"sentinel auth-pass {name} {self.password}", f"requirepass {self.password}"]
        config = os.path.join(self._dir, "sentinel.conf")
        with open(config, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
        self.sentinel = subprocess.Popen(
            [self.master.binary, config, "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # the sentinel must know the replica before it can promote it
        wait_for(
            lambda: (
                str(self.replica.port)
                in self.sentinel_cli("sentinel", "replicas", self.service_name)
            ),
            timeout=15,
            interval=0.05,
        )
        return self

    def cli(self, port: int, *command: str) -> str:
        """Output of ``redis-cli -p PORT COMMAND...`` (with the password, if any)."""
        auth = ["--no-auth-warning", "-a", self.password] if self.password else []
        return subprocess.run(
            [require_binary("redis-cli"), "-p", str(port), *auth, *command],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout

    def sentinel_cli(self, *command: str) -> str:
        if self.sentinel is not None and self.sentinel.poll() is not None:
            raise RuntimeError(f"redis-server --sentinel exited with {self.sentinel.returncode}")
        return self.cli(self.sentinel_port, *command)

    def master_port(self) -> int:
        """The port of the master the sentinel currently names."""
        reply = self.sentinel_cli("sentinel", "get-master-addr-by-name", self.service_name)
        return int(reply.split()[1])

    def current_master(self) -> RedisServer:
        port = self.master_port()
        return self.master if port == self.master.port else self.replica

    def close(self) -> None:
        if self.sentinel is not None and self.sentinel.poll() is None:
            self.sentinel.terminate()
            try:
                self.sentinel.wait(5)
            except subprocess.TimeoutExpired:
                self.sentinel.kill()
                self.sentinel.wait(5)
        self.master.close()
        self.replica.close()
        shutil.rmtree(self._dir, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# OTLP receiver


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
    next N export calls with UNAVAILABLE / HTTP 503), or :meth:`stop` and :meth:`start` again
    (same ports). Everything accepted is kept: parsed requests and the raw request bytes.
    """

    def __init__(self) -> None:
        self.grpc_port = free_port()
        self.http_port = free_port()
        self.delay = 0.0
        self.fail_next = 0
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
        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        receiver = self

        class Logs(logs_service_pb2_grpc.LogsServiceServicer):
            def Export(self, request, context):  # noqa: N802 - gRPC method name
                receiver._accept(request, receiver.log_requests, context)
                return logs_service_pb2.ExportLogsServiceResponse()

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
                    context.abort(grpc.StatusCode.UNAVAILABLE, "injected failure")
                return False
            bucket.append(request)
            self.raw.append(request.SerializeToString())
        return True

    def _http_handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self
        routes = {
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
                encoding = (self.headers.get("Content-Encoding") or "").lower()
                if encoding == "gzip":
                    payload = gzip.decompress(payload)
                elif encoding == "deflate":
                    payload = zlib.decompress(payload)
                message_type, bucket, response_type = route
                request = message_type()
                request.ParseFromString(payload)
                if receiver._accept(request, getattr(receiver, bucket)):
                    self._reply(200, response_type().SerializeToString())
                else:
                    self._reply(503, b"")

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


@dataclass
class Served:
    """A subprocess serving HTTP on a loopback port (see :func:`serve_subprocess`)."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: str

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as handle:
            return handle.read()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def serve_subprocess(
    args: list[str], port: int, env: dict[str, str], cwd: str | None = None, timeout: float = 30
) -> Served:
    """Start ``args`` (e.g. ``opentelemetry-instrument uvicorn app:app --port N``) and wait
    until it accepts connections on ``port``. Output goes to a temp file for diagnosis."""
    log = tempfile.NamedTemporaryFile(prefix="secaudit-app-", suffix=".log", delete=False)
    process = subprocess.Popen(args, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    served = Served(process, port, log.name)

    def up() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"{args} exited early:\n{served.output()[-4000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            return False

    wait_for(up, timeout=timeout)
    return served


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
