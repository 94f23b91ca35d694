"""Real Redis servers on loopback: a single server (optionally with a password or TLS only),
a Redis Cluster, and a master + replica watched by a Sentinel.

Each is the real ``redis-server`` binary (``redis-cli`` builds the cluster, ``openssl`` the TLS
certificates) on free ports, without persistence, in a temp folder removed by ``close()``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile

from .processes import free_port, require_binary, wait_for


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
