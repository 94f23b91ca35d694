"""The compose stack's configuration, checked without a Docker engine.

collector-config.yaml: every pipeline references defined components, every component type is
one the pinned contrib distribution ships, the scrub step deletes what docs/reference.md says must
never leave and keeps the contract's own keys, and security log records (and only those) are
routed to the audit archive. docker-compose.yml: pinned images, ports that agree with the
collector and with the SDK's OTLP defaults. Prometheus: a real ``promtool`` checks the rules
and the config; the dashboard and the rules use the contract's metric names as the
collector's prometheus exporter writes them.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from harness import promtool_check_queries, require_binary
from otel_secaudit import attributes as attr

from .conftest import markdown_code_lines

ROOT = Path(__file__).resolve().parent.parent
COLLECTOR = ROOT / "collector-config.yaml"
COMPOSE = ROOT / "docker-compose.yml"
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "otel-secaudit.json"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "datasources.yaml"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
LOKI = DEPLOY / "loki" / "loki.yaml"

COLLECTOR_IMAGE = "otel/opentelemetry-collector-contrib:0.159.0"

# Component *types* (the name before '/' in the config) of otelcol-contrib v0.159.0, for the
# kinds this stack may use. Source: open-telemetry/opentelemetry-collector-releases,
# distributions/otelcol-contrib/manifest.yaml at tag v0.159.0 (the modules), and each
# module's metadata.yaml `type:` (core: exporter/otlpexporter -> otlp_grpc, deprecated alias
# otlp; exporter/otlphttpexporter -> otlp_http, deprecated alias otlphttp). A subset: the
# well-known components of each kind, enough to catch a typo or a component that is not in
# the distribution.
CONTRIB_COMPONENTS: dict[str, frozenset[str]] = {
    "receivers": frozenset(
        {"otlp", "prometheus", "filelog", "hostmetrics", "jaeger", "zipkin", "kafka", "nop"}
    ),
    "processors": frozenset(
        {
            "batch",
            "memory_limiter",
            "attributes",
            "filter",
            "redaction",
            "resource",
            "resourcedetection",
            "transform",
            "groupbyattrs",
            "probabilistic_sampler",
            "tail_sampling",
            "k8sattributes",
        }
    ),
    "exporters": frozenset(
        {
            "debug",
            "nop",
            "otlp_grpc",
            "otlp_http",
            "file",
            "prometheus",
            "prometheusremotewrite",
            "kafka",
            "loadbalancing",
            "zipkin",
        }
    ),
    "connectors": frozenset(
        {"forward", "count", "routing", "spanmetrics", "servicegraph", "failover", "sum"}
    ),
    "extensions": frozenset(
        {
            "health_check",
            "file_storage",
            "pprof",
            "zpages",
            "basicauth",
            "bearertokenauth",
            "headers_setter",
            "oauth2client",
        }
    ),
}
KINDS = tuple(CONTRIB_COMPONENTS)
SIGNALS = ("traces", "metrics", "logs")


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


@pytest.fixture(scope="module")
def collector() -> dict[str, Any]:
    return load_yaml(COLLECTOR)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


def component_type(component_id: str) -> str:
    return component_id.split("/", 1)[0]


def pipeline_signal(pipeline_id: str) -> str:
    return component_type(pipeline_id)


# --------------------------------------------------------------------------------------------
# Collector: structure


def test_every_pipeline_references_defined_components(collector: dict[str, Any]) -> None:
    pipelines = collector["service"]["pipelines"]
    assert set(map(pipeline_signal, pipelines)) == set(SIGNALS)
    connectors = collector.get("connectors") or {}
    for pipeline_id, pipeline in pipelines.items():
        assert pipeline_signal(pipeline_id) in SIGNALS, pipeline_id
        assert pipeline.get("receivers"), f"{pipeline_id} has no receiver"
        assert pipeline.get("exporters"), f"{pipeline_id} has no exporter"
        for kind in ("receivers", "processors", "exporters"):
            for component_id in pipeline.get(kind) or []:
                defined = set(collector.get(kind) or {}) | (
                    set(connectors) if kind in ("receivers", "exporters") else set()
                )
                assert component_id in defined, f"{pipeline_id}: {kind} {component_id} undefined"


def test_connectors_are_used_on_both_sides(collector: dict[str, Any]) -> None:
    pipelines = collector["service"]["pipelines"]
    for connector_id, config in (collector.get("connectors") or {}).items():
        exported_by = [
            p for p, c in pipelines.items() if connector_id in (c.get("exporters") or [])
        ]
        received_by = [
            p for p, c in pipelines.items() if connector_id in (c.get("receivers") or [])
        ]
        assert exported_by and received_by, connector_id
        # every pipeline a routing table names exists and receives from this connector
        for route in config.get("table") or []:
            for target in route["pipelines"]:
                assert target in received_by, (connector_id, target)


def test_every_defined_component_is_used_and_in_the_contrib_distribution(
    collector: dict[str, Any],
) -> None:
    service = collector["service"]
    used: set[str] = set(service.get("extensions") or [])
    for pipeline in service["pipelines"].values():
        for kind in ("receivers", "processors", "exporters"):
            used.update(pipeline.get(kind) or [])
    for kind in KINDS:
        for component_id in collector.get(kind) or {}:
            assert component_type(component_id) in CONTRIB_COMPONENTS[kind], (
                f"{kind}: {component_id} is not a v0.159.0 contrib component type"
            )
            assert component_id in used, f"{kind}: {component_id} is defined but never used"


def test_every_referenced_extension_is_defined(collector: dict[str, Any]) -> None:
    extensions = set(collector.get("extensions") or {})
    assert set(collector["service"]["extensions"]) <= extensions

    def storage_refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            found = [v for k, v in node.items() if k == "storage" and isinstance(v, str)]
            for value in node.values():
                found += storage_refs(value)
            return found
        if isinstance(node, list):
            return [ref for item in node for ref in storage_refs(item)]
        return []

    refs = storage_refs(collector.get("exporters"))
    assert refs, "no persistent sending queue"
    for ref in refs:
        assert ref in extensions and ref in collector["service"]["extensions"], ref
    assert "health_check" in collector["service"]["extensions"]


def test_no_deprecated_component_type_aliases(collector: dict[str, Any]) -> None:
    # v0.159.0 renamed the OTLP exporters; the old names still load but log deprecations.
    for component_id in collector["exporters"]:
        assert component_type(component_id) not in {"otlp", "otlphttp", "logging"}, component_id


# --------------------------------------------------------------------------------------------
# Collector: the no-loss path and the audit archive


def test_network_exporters_queue_to_disk_and_never_give_up(collector: dict[str, Any]) -> None:
    exporters = collector["exporters"]
    network = [e for e in exporters if component_type(e) in {"otlp_grpc", "otlp_http"}]
    assert {"otlp_grpc/jaeger", "otlp_http/loki"} <= set(network)
    for exporter_id in network:
        config = exporters[exporter_id]
        queue = config["sending_queue"]
        assert queue.get("enabled", True) is True
        assert queue["storage"] in collector["extensions"], exporter_id
        assert component_type(queue["storage"]) == "file_storage"
        # max_elapsed_time 0 = retry until it works (exporterhelper README).
        assert config["retry_on_failure"]["enabled"] is True
        assert config["retry_on_failure"]["max_elapsed_time"] == 0


def test_audit_archive_is_rotated_appended_and_only_gets_secaudit_logs(
    collector: dict[str, Any],
) -> None:
    archive_ids = [e for e in collector["exporters"] if component_type(e) == "file"]
    assert archive_ids == ["file/audit"]
    archive = collector["exporters"]["file/audit"]
    rotation = archive["rotation"]
    assert rotation["max_megabytes"] > 0 and rotation["max_days"] > 0
    assert rotation["max_backups"] > 0
    assert archive["append"] is True  # the default truncates the archive on restart
    assert archive["path"].startswith("/var/lib/otelcol/audit/")

    pipelines = collector["service"]["pipelines"]
    # The archive is fed only by pipelines whose only receiver is the routing connector.
    feeding = {p: c for p, c in pipelines.items() if "file/audit" in c["exporters"]}
    assert list(feeding) == ["logs/audit"]
    assert feeding["logs/audit"]["receivers"] == ["routing/audit"]
    router = collector["connectors"]["routing/audit"]
    assert "default_pipelines" not in router  # anything not matched must not reach the archive
    assert router["table"] == [
        {
            "context": "log",
            "condition": f'instrumentation_scope.name == "{attr.SCOPE_NAME}"',
            "pipelines": ["logs/audit"],
        }
    ]
    # Security logs still reach Loki, and the router sits after the scrub step.
    logs = pipelines["logs"]
    assert {"otlp_http/loki", "routing/audit"} <= set(logs["exporters"])
    assert "transform/scrub" in logs["processors"]


def test_pipelines_start_with_memory_limiter_and_scrub_before_batch(
    collector: dict[str, Any],
) -> None:
    for pipeline_id, pipeline in collector["service"]["pipelines"].items():
        if pipeline["receivers"] != ["otlp"]:
            continue
        processors = pipeline["processors"]
        assert processors[0] == "memory_limiter", pipeline_id
        assert processors.index("transform/scrub") < processors.index("batch"), pipeline_id


def test_exporter_targets_are_compose_services(
    collector: dict[str, Any], compose: dict[str, Any]
) -> None:
    services = compose["services"]
    jaeger = collector["exporters"]["otlp_grpc/jaeger"]["endpoint"]
    host, port = jaeger.rsplit(":", 1)
    assert host == "jaeger" and port == "4317"
    assert services["jaeger"]["environment"]["JAEGER_LISTEN_HOST"] == "0.0.0.0"
    loki = urlparse(collector["exporters"]["otlp_http/loki"]["endpoint"])
    assert (loki.hostname, loki.port, loki.path) == ("loki", 3100, "/otlp")
    assert "loki" in services


# --------------------------------------------------------------------------------------------
# Collector: the scrub step (defence in depth)


def scrub_statements(collector: dict[str, Any]) -> dict[str, list[str]]:
    transform = collector["processors"]["transform/scrub"]
    out: dict[str, list[str]] = {}
    for group in ("trace_statements", "log_statements", "metric_statements"):
        for block in transform[group]:
            out[block["context"]] = block["statements"]
    return out


def scrub_key_pattern(collector: dict[str, Any]) -> str:
    patterns = set()
    for statements in scrub_statements(collector).values():
        for statement in statements:
            match = re.fullmatch(r'delete_matching_keys\(attributes, "(.*)"\)', statement)
            if match:
                # OTTL string literal: "\\." is a backslash-dot for the regex engine.
                patterns.add(match.group(1).replace("\\\\", "\\"))
    assert len(patterns) == 1, "every context must delete with the same key pattern"
    return patterns.pop()


def test_scrub_covers_spans_span_events_logs_and_datapoints(collector: dict[str, Any]) -> None:
    statements = scrub_statements(collector)
    assert set(statements) == {"span", "spanevent", "log", "datapoint"}
    for context, lines in statements.items():
        assert any(s.startswith("delete_matching_keys(attributes,") for s in lines), context
        assert 'delete_key(attributes, "url.query")' in lines, context


SECRET_KEYS = (
    "http.request.header.authorization",
    "http.request.header.cookie",
    "http.response.header.set-cookie",
    "http.request.header.x-csrf-token",
    "http.request.header.x-api-key",
    "http.request.header.proxy-authorization",
    "password",
    "user.password",
    "db.password",
    "new_password",
    "passwd",
    "client_secret",
    "refresh_token",
    "access_token",
    "auth.token",
    "api_key",
    "apiKey",
    "session_id",
    "jwt",
    "private_key",
    "http.request.body",
    "http.response.body.size_secret",
)


def contract_keys() -> list[str]:
    keys = [
        value
        for name, value in vars(attr).items()
        if name.isupper() and isinstance(value, str) and "." in value
    ]
    keys += [
        "security.abuse.scope",
        "security.abuse.key",
        "security.abuse.count",
        "security.abuse.threshold",
        "security.abuse.window_s",
        "security.abuse.trace_ids",
        "security.token.jti_prefix",
        "security.redacted.count",
        "user_agent.original",
        "http.response.status_code",
        "url.path",
        "error.type",
    ]
    return sorted(set(keys))


def test_scrub_pattern_deletes_secret_keys_and_keeps_contract_keys(
    collector: dict[str, Any],
) -> None:
    # The pattern is written in the RE2 subset that Python's re shares ((?i), classes, groups).
    pattern = re.compile(scrub_key_pattern(collector))
    for key in SECRET_KEYS:
        assert pattern.search(key), f"{key} would leave the collector"
    kept = contract_keys()
    assert "security.token.jti_prefix" in kept and "security.event.name" in kept
    for key in kept:
        assert not pattern.search(key), f"contract key {key} would be deleted"


# --------------------------------------------------------------------------------------------
# Ports: SDK defaults, collector, compose


def port_of(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1].split("/")[0])


def sdk_default_ports(monkeypatch: pytest.MonkeyPatch) -> tuple[int, int]:
    import os

    for name in list(os.environ):
        if name.startswith("OTEL_EXPORTER_OTLP"):
            monkeypatch.delenv(name)
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
        OTLPSpanExporter as GrpcSpanExporter,
    )
    from opentelemetry.exporter.otlp.proto.http import trace_exporter as http_trace

    grpc_exporter = GrpcSpanExporter()
    try:
        grpc_endpoint = grpc_exporter._endpoint  # the resolved default, no public accessor
    finally:
        grpc_exporter.shutdown()
    http_exporter = http_trace.OTLPSpanExporter()
    try:
        http_endpoint = http_exporter._endpoint
    finally:
        http_exporter.shutdown()
    assert http_endpoint.startswith(http_trace.DEFAULT_ENDPOINT.rstrip("/"))
    # The gRPC exporter keeps host:port (scheme stripped), the HTTP one a full URL.
    return port_of(grpc_endpoint), urlparse(http_endpoint).port or 0


def published(service: dict[str, Any]) -> dict[int, int]:
    """container port -> host port of a compose service."""
    out = {}
    for entry in service.get("ports") or []:
        host, container = str(entry).split(":")[-2:]
        out[int(container.split("/")[0])] = int(host)
    return out


def test_ports_agree_with_sdk_defaults_and_compose(
    collector: dict[str, Any], compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    grpc_port, http_port = sdk_default_ports(monkeypatch)
    assert (grpc_port, http_port) == (4317, 4318)
    protocols = collector["receivers"]["otlp"]["protocols"]
    assert port_of(protocols["grpc"]["endpoint"]) == grpc_port
    assert port_of(protocols["http"]["endpoint"]) == http_port
    # Listening on all interfaces: other containers must reach it.
    assert protocols["grpc"]["endpoint"].startswith("0.0.0.0:")
    assert protocols["http"]["endpoint"].startswith("0.0.0.0:")

    services = compose["services"]
    collector_ports = published(services["collector"])
    assert collector_ports[grpc_port] == grpc_port and collector_ports[http_port] == http_port
    health = port_of(collector["extensions"]["health_check"]["endpoint"])
    assert collector_ports[health] == health

    demo_env = services["demo"]["environment"]
    endpoint = urlparse(demo_env["OTEL_EXPORTER_OTLP_ENDPOINT"])
    assert (endpoint.hostname, endpoint.port) == ("collector", grpc_port)
    assert demo_env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc"
    command = services["demo"]["command"]
    assert command[:7] == [
        "otel-secaudit",
        "demo",
        "--serve",
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
    ]
    # The /report page links to the UIs as the browser on the host reaches them.
    links = dict(zip(command[7::2], command[8::2], strict=True))
    assert links == {
        "--jaeger-url": f"http://localhost:{published(services['jaeger'])[16686]}",
        "--grafana-url": f"http://localhost:{published(services['grafana'])[3000]}",
    }


def test_prometheus_scrapes_the_collector_ports(
    collector: dict[str, Any], compose: dict[str, Any]
) -> None:
    prometheus = load_yaml(PROMETHEUS)
    targets = {
        target
        for job in prometheus["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    exporter_port = port_of(collector["exporters"]["prometheus"]["endpoint"])
    reader = collector["service"]["telemetry"]["metrics"]["readers"][0]["pull"]["exporter"]
    assert targets == {f"collector:{exporter_port}", f"collector:{reader['prometheus']['port']}"}
    assert collector["exporters"]["prometheus"]["enable_open_metrics"] is True
    assert prometheus["rule_files"] == ["alerts.yml"]
    command = compose["services"]["prometheus"]["command"]
    assert "--enable-feature=exemplar-storage" in command
    mounts = compose["services"]["prometheus"]["volumes"]
    assert "./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts


# --------------------------------------------------------------------------------------------
# Compose


def test_compose_images_are_pinned_and_volumes_persist(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["collector"]["image"] == COLLECTOR_IMAGE
    for name, service in services.items():
        if "build" in service:
            dockerfile = ROOT / service["build"]["dockerfile"]
            base = re.findall(r"^FROM\s+(\S+)", dockerfile.read_text(), re.M)
            assert base and all(re.search(r":\d+\.\d+\.\d+", image) for image in base), name
            continue
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and re.fullmatch(r"v?\d+\.\d+\.\d+(-[a-z0-9.]+)?", tag), (
            f"{name}: {image} not pinned"
        )
    collector_mounts = services["collector"]["volumes"]
    for volume, path in (
        ("otelcol-audit", "/var/lib/otelcol/audit"),
        ("otelcol-queue", "/var/lib/otelcol/queue"),
    ):
        assert f"{volume}:{path}" in collector_mounts
        assert volume in compose["volumes"]
    assert "./collector-config.yaml:/etc/otelcol-contrib/config.yaml:ro" in collector_mounts
    for mount in (m for s in services.values() for m in s.get("volumes") or []):
        source = mount.split(":", 1)[0]
        if source.startswith("./"):
            assert (ROOT / source).exists(), f"compose mounts missing {source}"


def test_queue_and_archive_live_on_the_volumes(collector: dict[str, Any]) -> None:
    storage = collector["extensions"]["file_storage/queue"]
    assert storage["directory"] == "/var/lib/otelcol/queue"
    assert collector["exporters"]["file/audit"]["path"].startswith("/var/lib/otelcol/audit/")


def test_loki_config_accepts_otlp_structured_metadata() -> None:
    loki = load_yaml(LOKI)
    assert loki["limits_config"]["allow_structured_metadata"] is True
    schema = loki["schema_config"]["configs"][-1]
    assert (schema["store"], schema["schema"]) == ("tsdb", "v13")  # needed for structured metadata


def test_grafana_datasources_link_to_jaeger() -> None:
    sources = {s["uid"]: s for s in load_yaml(DATASOURCES)["datasources"]}
    assert set(sources) == {"prometheus", "loki", "jaeger"}
    exemplar = sources["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    assert exemplar == [
        {"name": "trace_id", "datasourceUid": "jaeger", "urlDisplayLabel": "Open trace in Jaeger"}
    ]
    derived = sources["loki"]["jsonData"]["derivedFields"]
    trace = next(d for d in derived if d["matcherRegex"] == "trace_id")
    assert trace["matcherType"] == "label" and trace["datasourceUid"] == "jaeger"
    assert trace["url"] == "$${__value.raw}"
    assert sources["jaeger"]["url"] == "http://jaeger:16686"


# --------------------------------------------------------------------------------------------
# Metric names: contract -> Prometheus


def prometheus_name(name: str, unit: str, counter: bool) -> str:
    """The collector prometheus exporter's name for an OTLP metric, translation strategy
    UnderscoreEscapingWithSuffixes (prometheus/otlptranslator; OpenTelemetry spec
    "Prometheus and OpenMetrics Compatibility"): characters outside [a-zA-Z0-9_:] become '_',
    a unit in curly braces is an annotation and adds nothing, other units are appended
    (only 's' and '1' are exercised here), monotonic sums end in '_total'."""
    out = re.sub(r"[^a-zA-Z0-9_:]", "_", name)
    out = re.sub(r"__+", "_", out)
    unit = re.sub(r"\{[^}]*\}", "", unit)
    suffix = {"": "", "1": "", "s": "seconds"}[unit]
    if suffix and not out.endswith(suffix):
        out += "_" + suffix
    if counter:
        out += "_total"
    return out


def prometheus_label(key: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", key)


CONTRACT_METRICS = {
    attr.METRIC_VIOLATIONS: "{violation}",
    attr.METRIC_EVENTS: "{event}",
    attr.METRIC_ABUSE_SIGNALS: "{signal}",
    attr.METRIC_REQUESTS_BLOCKED: "{request}",
    attr.METRIC_INTERNAL_ERRORS: "{error}",
}
EXPECTED_NAMES = {
    "security_violations_total",
    "security_events_total",
    "security_abuse_signals_total",
    "security_requests_blocked_total",
    "otel_secaudit_internal_errors_total",
}
# Labels allowed on metrics (docs/reference.md, "Metrics"), as Prometheus labels, plus the
# job/instance the exporter derives from the resource.
ALLOWED_LABELS = {
    prometheus_label(k)
    for k in (
        attr.EVENT_NAME,
        attr.EVENT_CATEGORY,
        attr.EVENT_OUTCOME,
        attr.HTTP_ROUTE,
        attr.HTTP_STATUS,
        "security.abuse.scope",
    )
} | {"job", "instance", "exporter"}


def test_contract_metric_names_translate_as_documented() -> None:
    translated = {prometheus_name(n, u, counter=True) for n, u in CONTRACT_METRICS.items()}
    assert translated == EXPECTED_NAMES
    assert prometheus_name("http.server.request.duration", "s", counter=False) == (
        "http_server_request_duration_seconds"
    )
    assert prometheus_label("security.event.name") == "security_event_name"


def promql_metric_names(expr: str) -> set[str]:
    names = set(re.findall(r"\b((?:security|otel_secaudit|otelcol)_[a-z_]+)\b", expr))
    return {n for n in names if not n.startswith("security_event_") and n not in ALLOWED_LABELS}


def promql_label_names(expr: str) -> set[str]:
    by = {x.strip() for group in re.findall(r"by \(([^)]*)\)", expr) for x in group.split(",")}
    matchers = set(re.findall(r"[{,]\s*([a-z_]+)\s*=~?", expr))
    return {label for label in by | matchers if label and label != "__name__"}


def dashboard_targets() -> list[tuple[str, dict[str, Any]]]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [
        (panel["title"], target)
        for panel in dashboard["panels"]
        for target in panel.get("targets") or []
    ]


def test_dashboard_queries_use_contract_metric_names() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["uid"] == "otel-secaudit"
    used: set[str] = set()
    collector_own = {"otelcol_exporter_queue_size", "otelcol_exporter_queue_capacity"}
    for title, target in dashboard_targets():
        expr = target["expr"]
        if target["datasource"]["uid"] != "prometheus":
            continue
        if "otelcol_" in expr:  # the collector's own telemetry (delivery health)
            names = promql_metric_names(expr)
            assert all(n.startswith("otelcol_exporter_") for n in names), title
            assert names & collector_own or "failed_log_records" in expr, title
            continue
        names = promql_metric_names(expr)
        assert names, f"panel {title!r} queries no otel_secaudit metric"
        known = EXPECTED_NAMES | DELIVERY_NAMES
        assert names <= known, f"panel {title!r}: unknown metrics {names - known}"
        labels = promql_label_names(expr)
        assert labels <= ALLOWED_LABELS, f"panel {title!r}: labels {labels - ALLOWED_LABELS}"
        used |= names
        if "violations" in expr and target.get("range", True):
            assert target.get("exemplar") is True, f"panel {title!r} hides exemplars"
    assert used == EXPECTED_NAMES | DELIVERY_NAMES


def _panels_by_row() -> list[tuple[str, dict[str, Any]]]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    row, out = "", []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            row = panel["title"]
        else:
            out.append((row, panel))
    return out


def test_event_variable_filters_every_security_panel() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    event = next(v for v in dashboard["templating"]["list"] if v["name"] == "event")
    assert event["type"] == "query" and event["multi"] and event["allValue"] == ".+"
    assert "security_event_name" in event["definition"]
    for row, panel in _panels_by_row():
        for target in panel["targets"]:
            if row.startswith("Delivery health"):
                assert "$event" not in target["expr"], panel["title"]
            else:
                assert 'security_event_name=~"$event"' in target["expr"], panel["title"]


def test_dashboard_has_the_incident_panels() -> None:
    titles = {panel["title"]: panel for _, panel in _panels_by_row()}
    for wanted in (
        "Top offending client addresses (Loki)",
        "Top offending user hashes (Loki)",
        "Login failure ratio",
        "Blocks active now",
        "Security log records lost",
        "Spool: waiting and delivered",
        "Abuse signals and their evidence traces",
    ):
        assert wanted in titles, wanted
    addresses = titles["Top offending client addresses (Loki)"]["targets"][0]
    assert addresses["datasource"]["uid"] == "loki" and addresses["queryType"] == "instant"
    assert "sum by (client_address)" in addresses["expr"]
    assert "sum by (user_hash)" in titles["Top offending user hashes (Loki)"]["targets"][0]["expr"]
    evidence = titles["Abuse signals and their evidence traces"]["targets"][0]["expr"]
    assert "evidence={{.security_abuse_trace_ids}}" in evidence
    derived = {
        d["name"]: d for d in load_yaml(DATASOURCES)["datasources"][1]["jsonData"]["derivedFields"]
    }
    pattern = re.compile(derived["EvidenceTrace"]["matcherRegex"])
    match = pattern.search(
        'abuse.host host=203.0.113.7 10/10 in 3600s evidence=["' + "ab" * 16 + '"]'
    )
    assert match and match.group(1) == "ab" * 16
    assert derived["EvidenceTrace"]["datasourceUid"] == "jaeger"


def test_dashboard_has_a_security_logs_panel_with_loki_structured_metadata() -> None:
    loki = dict((t, q["expr"]) for t, q in dashboard_targets() if q["datasource"]["uid"] == "loki")
    for query in loki.values():
        assert '{service_name=~"$job"} | scope_name="otel_secaudit"' in query
    expr = loki["Security events (click a line, then the TraceID link)"]
    # Loki's OTLP mapping: scope name -> scope_name, attributes with '_' for '.', trace_id.
    assert f'scope_name="{attr.SCOPE_NAME}"' in expr
    assert prometheus_label(attr.EVENT_NAME) in expr and "trace_id" in expr
    assert expr.startswith("{service_name=")


#: Delivery health metrics of otel_secaudit.delivery (dotted name, kind), as Prometheus names.
DELIVERY_METRICS = {
    "otel_secaudit.logs.dropped": True,
    "otel_secaudit.spool.refused": True,
    "otel_secaudit.spool.exported": True,
    "otel_secaudit.spool.export_failures": True,
    "otel_secaudit.spool.depth": False,  # an up-down counter: a gauge, no _total
}
DELIVERY_NAMES = {prometheus_name(n, "", counter=c) for n, c in DELIVERY_METRICS.items()}


def test_delivery_metric_names_exist_in_the_delivery_package() -> None:
    source = "".join(p.read_text() for p in (ROOT / "otel_secaudit" / "delivery").glob("*.py"))
    for name in DELIVERY_METRICS:
        assert f'"{name}"' in source, name


def test_alert_rules_use_contract_metric_names() -> None:
    rules = [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]
    names = {rule["alert"] for rule in rules}
    assert {"SecurityAbuseSignal", "SecurityViolationSpike"} <= names
    used: set[str] = set()
    for rule in rules:
        found = promql_metric_names(rule["expr"])
        if rule["alert"].startswith("Collector"):
            continue
        assert found and found <= EXPECTED_NAMES | DELIVERY_NAMES, (rule["alert"], found)
        used |= found
    assert {"security_violations_total", "security_abuse_signals_total"} <= used
    assert {"otel_secaudit_logs_dropped_total", "otel_secaudit_spool_depth"} <= used


def test_promtool_checks_rules_and_config() -> None:
    promtool = require_binary("promtool")
    rules = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert "SUCCESS" in rules.stdout
    config = subprocess.run(
        [promtool, "check", "config", "--syntax-only", str(PROMETHEUS)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert config.returncode == 0, config.stdout + config.stderr


def test_promtool_rejects_a_broken_rule(tmp_path: Path) -> None:
    # The check above can fail: promtool really parses the PromQL.
    promtool = require_binary("promtool")
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "groups:\n- name: x\n  rules:\n  - alert: X\n"
        "    expr: sum by (job (security_violations_total\n"
    )
    result = subprocess.run(
        [promtool, "check", "rules", str(broken)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0


def grafana_to_promql(expr: str) -> str:
    """Replace Grafana's macros and variables with values Prometheus accepts."""
    for macro, value in (
        ("$__rate_interval", "5m"),
        ("$__range", "1h"),
        ("$job", ".+"),
        ("$event", ".+"),
    ):
        expr = expr.replace(macro, value)
    assert "$" not in expr, expr
    return expr


def readme_section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("## See it in Jaeger and Grafana")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def readme_blocks(language: str) -> list[str]:
    lines = markdown_code_lines(readme_section(), language)
    assert lines, f"no {language} block in the README section"
    return lines


def test_promtool_parses_dashboard_and_readme_promql(tmp_path: Path) -> None:
    expressions = [
        grafana_to_promql(target["expr"])
        for _, target in dashboard_targets()
        if target["datasource"]["uid"] == "prometheus"
    ]
    readme = readme_blocks("promql")
    for expr in readme:
        assert promql_metric_names(expr) <= EXPECTED_NAMES, expr
    expressions += readme
    result = promtool_check_queries(expressions, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_readme_logql_uses_loki_otlp_names() -> None:
    queries = readme_blocks("logql")
    assert len(queries) >= 4
    for query in queries:
        assert '{service_name=~".+"}' in query, query
        # attributes are structured metadata with '_' for '.'; never the dotted OTLP key
        assert "security.event.name" not in query and "security_event_name" in query, query
    joined = "\n".join(queries)
    for needed in ('"auth.login.failed"', 'user_id="42"', '"abuse.host"', "security_abuse_key"):
        assert needed in joined


def test_grafana_provisioning_matches_compose_mounts(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    mounts = dict(m.rsplit(":", 2)[:2] for m in grafana["volumes"] if m.startswith("./"))
    provisioning = load_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "dashboards.yaml")
    (provider,) = provisioning["providers"]
    dashboards_dir = provider["options"]["path"]
    assert mounts["./deploy/grafana/dashboards"] == dashboards_dir
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{dashboards_dir}/{DASHBOARD.name}"
    # every data source a panel or variable uses is provisioned, under the same uid
    provisioned = {s["uid"] for s in load_yaml(DATASOURCES)["datasources"]}
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    used = {p["datasource"]["uid"] for p in dashboard["panels"] if "datasource" in p}
    used |= {t["datasource"]["uid"] for _, t in dashboard_targets()}
    used |= {v["datasource"]["uid"] for v in dashboard["templating"]["list"] if "datasource" in v}
    assert used and used <= provisioned


# --------------------------------------------------------------------------------------------
# Collector: evidence that survives sampling (tail_sampling)

# The tail_sampling processor's configuration keys, from the contrib processor's schema
# (processor/tailsamplingprocessor/config.schema.yaml: the top-level properties and, per
# policy type, the properties of its *_cfg definition).
TAIL_SAMPLING_KEYS = frozenset(
    {
        "block_on_overflow",
        "decision_cache",
        "decision_wait",
        "decision_wait_after_root_received",
        "drop_pending_traces_on_shutdown",
        "expected_new_traces_per_sec",
        "maximum_trace_size_bytes",
        "num_traces",
        "policies",
        "sample_on_first_match",
        "sampling_strategy",
    }
)
DECISION_CACHE_KEYS = frozenset({"sampled_cache_size", "non_sampled_cache_size"})
POLICY_KEYS: dict[str, frozenset[str]] = {
    "always_sample": frozenset(),
    "latency": frozenset({"threshold_ms", "upper_threshold_ms"}),
    "numeric_attribute": frozenset({"key", "min_value", "max_value", "invert_match"}),
    "probabilistic": frozenset({"hash_salt", "sampling_percentage"}),
    "status_code": frozenset({"status_codes"}),
    "string_attribute": frozenset(
        {"key", "values", "enabled_regex_matching", "cache_max_size", "invert_match"}
    ),
    "boolean_attribute": frozenset({"key", "value", "invert_match"}),
    "rate_limiting": frozenset({"spans_per_second"}),
    "bytes_limiting": frozenset({"bytes_per_second", "burst_capacity"}),
    "span_count": frozenset({"min_spans", "max_spans"}),
    "trace_state": frozenset({"key", "values"}),
    "ottl_condition": frozenset({"error_mode", "span", "spanevent"}),
}
ENV_WITH_DEFAULT = re.compile(r"^\$\{env:([A-Z_][A-Z0-9_]*):-([0-9.]+)\}$")


def _duration_seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", value)
    assert match, value
    return float(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[match.group(2)]


def test_tail_sampling_follows_the_contrib_schema(collector: dict[str, Any]) -> None:
    (sampler_id,) = [p for p in collector["processors"] if component_type(p) == "tail_sampling"]
    sampler = collector["processors"][sampler_id]
    assert set(sampler) <= TAIL_SAMPLING_KEYS
    assert set(sampler["decision_cache"]) <= DECISION_CACHE_KEYS
    assert 1 <= _duration_seconds(sampler["decision_wait"]) <= 120
    assert isinstance(sampler["num_traces"], int) and sampler["num_traces"] > 0
    names = [policy["name"] for policy in sampler["policies"]]
    assert len(names) == len(set(names))
    for policy in sampler["policies"]:
        kind = policy["type"]
        assert kind in POLICY_KEYS, policy
        extra = set(policy) - {"name", "type", kind}
        assert not extra, (policy["name"], extra)
        if POLICY_KEYS[kind]:
            assert set(policy[kind]) <= POLICY_KEYS[kind], policy["name"]
        if kind == "ottl_condition":
            assert policy[kind]["error_mode"] in {"ignore", "silent", "propagate"}
            conditions = policy[kind].get("span", []) + policy[kind].get("spanevent", [])
            assert conditions and all(isinstance(c, str) for c in conditions)


def test_tail_sampling_keeps_every_security_trace_and_a_share_of_the_rest(
    collector: dict[str, Any],
) -> None:
    pipelines = collector["service"]["pipelines"]
    processors = pipelines["traces"]["processors"]
    # After the scrub (it sees what leaves), before the batch (it needs whole traces).
    assert processors.index("transform/scrub") < processors.index("tail_sampling/evidence")
    assert processors.index("tail_sampling/evidence") < processors.index("batch")
    policies = {p["name"]: p for p in collector["processors"]["tail_sampling/evidence"]["policies"]}
    conditions = [
        condition
        for policy in policies.values()
        if policy["type"] == "ottl_condition"
        for condition in policy["ottl_condition"].get("spanevent", [])
    ]
    assert f'attributes["{attr.EVENT_OUTCOME}"] == "failure"' in conditions
    assert f'attributes["{attr.EVENT_NAME}"] != nil' in conditions
    refused = policies["refused-request"]["ottl_condition"]["span"]
    for status in (401, 403, 429):
        assert f'attributes["{attr.HTTP_STATUS}"] == {status}' in refused
    share = policies["baseline-share"]["probabilistic"]["sampling_percentage"]
    match = ENV_WITH_DEFAULT.match(share)
    assert match, share  # configurable through the collector's environment, with a default
    assert 0 <= float(match.group(2)) <= 100
    # No policy may drop or rate-limit: evidence is never thrown away to save space.
    assert not {p["type"] for p in policies.values()} & {"drop", "rate_limiting", "and"}


def test_two_tier_load_balancing_alternative_is_documented() -> None:
    text = COLLECTOR.read_text(encoding="utf-8")
    commented = "\n".join(
        line.split("#", 1)[1][3:] for line in text.splitlines() if line.lstrip().startswith("#   ")
    )
    assert "routing_key: traceID" in commented and "loadbalancing:" in commented
    block = commented[commented.index("exporters:\n  loadbalancing:") :]
    block = block[: block.index("\n\n")] if "\n\n" in block else block
    parsed = yaml.safe_load(block.split("\n# tier 2")[0])
    balancer = parsed["exporters"]["loadbalancing"]
    assert balancer["routing_key"] == "traceID"
    assert component_type("loadbalancing") in CONTRIB_COMPONENTS["exporters"]
