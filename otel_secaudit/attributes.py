"""Attribute keys and instrument names users rely on (docs/reference.md, "Attributes" and
"Metrics").

Semantic-convention keys (``user.id``, ``client.address``, ``http.route``...) are used where
OpenTelemetry defines them; ``security.*`` keys are this project's.
"""

from __future__ import annotations

from typing import Final

# Event identity
EVENT_NAME: Final = "security.event.name"
EVENT_CATEGORY: Final = "security.event.category"
EVENT_OUTCOME: Final = "security.event.outcome"

# Who
USER_ID: Final = "user.id"
USER_HASH: Final = "user.hash"
USER_NAME: Final = "user.name"
CLIENT_ADDRESS: Final = "client.address"
NETWORK_PEER_ADDRESS: Final = "network.peer.address"
USER_AGENT: Final = "user_agent.original"

# Request context
HTTP_METHOD: Final = "http.request.method"
HTTP_ROUTE: Final = "http.route"
HTTP_STATUS: Final = "http.response.status_code"
URL_PATH: Final = "url.path"

# What
TENANT_ID: Final = "security.tenant.id"
TENANT_REQUESTED_ID: Final = "security.tenant.requested_id"
RESOURCE_TYPE: Final = "security.resource.type"
RESOURCE_ID: Final = "security.resource.id"
ACTION: Final = "security.action"
PERMISSION: Final = "security.permission"
REASON: Final = "security.reason"
ERROR_TYPE: Final = "error.type"
TOKEN_JTI_PREFIX: Final = "security.token.jti_prefix"

# Abuse detection
ABUSE_SCOPE: Final = "security.abuse.scope"
ABUSE_KEY: Final = "security.abuse.key"
ABUSE_COUNT: Final = "security.abuse.count"
ABUSE_THRESHOLD: Final = "security.abuse.threshold"
ABUSE_WINDOW_S: Final = "security.abuse.window_s"
ABUSE_TRACE_IDS: Final = "security.abuse.trace_ids"
#: On abuse.block.started: this block's length.
BLOCK_SECONDS: Final = "security.block.seconds"
#: On request.blocked: requests refused since the last request.blocked record for that key.
BLOCK_COUNT: Final = "security.block.count"

REDACTED_COUNT: Final = "security.redacted.count"
#: On abuse.scan: up to 10 of the probed paths, scrubbed like ``url.path``.
SCAN_PATHS: Final = "security.scan.paths"

# Metrics (instrumentation scope ``otel_secaudit``)
SCOPE_NAME: Final = "otel_secaudit"
METRIC_VIOLATIONS: Final = "security.violations"
METRIC_EVENTS: Final = "security.events"
METRIC_ABUSE_SIGNALS: Final = "security.abuse.signals"
METRIC_REQUESTS_BLOCKED: Final = "security.requests.blocked"
#: Internal health counter (not in the contract): errors inside the plugin, by ``error.type``.
METRIC_INTERNAL_ERRORS: Final = "otel_secaudit.internal.errors"

#: Attributes a metric point may carry; anything else never reaches ``Counter.add``.
VIOLATION_METRIC_KEYS: Final = (EVENT_NAME, EVENT_CATEGORY, HTTP_ROUTE, HTTP_STATUS)

#: ``record()`` keyword fields and the attribute each one becomes.
FIELD_KEYS: Final = {
    "user_id": USER_ID,
    "client_address": CLIENT_ADDRESS,
    "user_agent": USER_AGENT,
    "tenant_id": TENANT_ID,
    "requested_tenant_id": TENANT_REQUESTED_ID,
    "resource_type": RESOURCE_TYPE,
    "resource_id": RESOURCE_ID,
    "action": ACTION,
    "permission": PERMISSION,
    "reason": REASON,
}

#: Keys the recorder computes itself; caller-supplied ``attributes`` may not set them.
RESERVED_KEYS: Final = frozenset(
    {EVENT_NAME, EVENT_CATEGORY, EVENT_OUTCOME, USER_HASH, REDACTED_COUNT, ABUSE_TRACE_IDS}
)
