"""What the tests and the benchmarks start, in one place: real servers on loopback (Redis in
its topologies, an OTLP receiver), the test apps under ``opentelemetry-instrument`` and the
small process helpers around them.

Not part of the package (the wheel ships ``otel_secaudit`` only): import it from the
repository root, as ``pytest`` and ``python -m benchmarks.<name>`` do. Nothing here is mocked.
A program that is not installed raises :class:`MissingBinary`; the test suite turns that into
a skip on a developer machine and a failure under ``CI=true``.
"""

from .launchers import (
    DJANGO_STAFF,
    DJANGO_USERS,
    ROOT,
    instrument_command,
    prepare_django_db,
    serve_django,
    serve_flask,
    serve_uvicorn,
    telemetry_env,
)
from .otlp_receiver import (
    OTLPReceiver,
    ReceivedLog,
    ReceivedPoint,
    ReceivedSpan,
    any_value,
    attributes_of,
    iter_strings,
)
from .processes import (
    IN_CI,
    MissingBinary,
    Served,
    free_port,
    require_binary,
    serve_subprocess,
    wait_for,
)
from .redis_servers import (
    RedisClusterServers,
    RedisSentinelServers,
    RedisServer,
    RedisTLSServer,
    tls_files,
)
from .tools import promtool_check_queries

__all__ = [
    "DJANGO_STAFF",
    "DJANGO_USERS",
    "IN_CI",
    "ROOT",
    "MissingBinary",
    "OTLPReceiver",
    "ReceivedLog",
    "ReceivedPoint",
    "ReceivedSpan",
    "RedisClusterServers",
    "RedisSentinelServers",
    "RedisServer",
    "RedisTLSServer",
    "Served",
    "any_value",
    "attributes_of",
    "free_port",
    "instrument_command",
    "iter_strings",
    "prepare_django_db",
    "promtool_check_queries",
    "require_binary",
    "serve_django",
    "serve_flask",
    "serve_subprocess",
    "serve_uvicorn",
    "telemetry_env",
    "tls_files",
    "wait_for",
]
