"""SIEM mapping of the event catalogue: OWASP Logging Vocabulary, ECS and OCSF.

Every catalogue event (:data:`otel_secaudit.events.CATALOGUE`) maps to

* the `OWASP Logging Vocabulary`_ event it is (``exact``) or is nearest to (the vocabulary has
  no MFA, logout or CSRF names, for example);
* Elastic Common Schema ``event.kind``, ``event.category``, ``event.type`` and
  ``event.outcome`` (the outcome is the catalogue's own);
* the OCSF class (``class_uid`` and name: Authentication 3002, Account Change 3001, ...).

The audit archive pipeline of ``collector-config.yaml`` adds these fields to every security log
record with a ``transform/siem`` processor whose statements this module generates, so the
mapping, the catalogue and the collector cannot drift (``tests/test_siem.py`` compares them)::

    python -m otel_secaudit.siem collector   # the transform/siem statements
    python -m otel_secaudit.siem markdown    # the table in deploy/siem/MAPPING.md

.. _OWASP Logging Vocabulary:
   https://cheatsheetseries.owasp.org/cheatsheets/Logging_Vocabulary_Cheat_Sheet.html
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from . import attributes as attr
from .events import CATALOGUE

__all__ = ["OCSF_CLASSES", "SIEM_MAPPING", "SiemFields", "collector_statements", "markdown"]

#: OCSF 1.x classes used below (class_uid -> class name).
OCSF_CLASSES: Final = {
    2004: "Detection Finding",
    3001: "Account Change",
    3002: "Authentication",
    3005: "User Access Management",
    6003: "API Activity",
    6004: "Web Resource Access Activity",
    6005: "Datastore Activity",
    6006: "File Hosting Activity",
}


@dataclass(frozen=True)
class SiemFields:
    """The SIEM view of one catalogue event."""

    owasp: str
    #: False when the vocabulary has no exact name and ``owasp`` is the nearest one.
    owasp_exact: bool
    ecs_category: tuple[str, ...]
    ecs_type: tuple[str, ...]
    ocsf_class_uid: int
    ecs_kind: str = "event"


def _f(
    owasp: str, category: str, types: str, ocsf: int, *, exact: bool = True, kind: str = "event"
) -> SiemFields:
    return SiemFields(owasp, exact, (category,), tuple(types.split(",")), ocsf, kind)


_AUTHN, _IAM, _WEB = "authentication", "iam", "web"

#: Catalogue event name -> SIEM fields. Every catalogue row, nothing else.
SIEM_MAPPING: Final[Mapping[str, SiemFields]] = {
    "auth.login.succeeded": _f("authn_login_success", _AUTHN, "start", 3002),
    "auth.login.failed": _f("authn_login_fail", _AUTHN, "start", 3002),
    "auth.login.succeeded_after_failures": _f(
        "authn_login_successafterfail", _AUTHN, "start", 3002
    ),
    "auth.login.new_device": _f("authn_impossible_travel", _AUTHN, "start,info", 3002, exact=False),
    "auth.account.locked": _f("authn_login_lock", _AUTHN, "start", 3002),
    "auth.logout": _f("session_expired", _AUTHN, "end", 3002),  # reason: logout
    "auth.sessions.revoked": _f("session_expired", _AUTHN, "end", 3002),  # reason: revoked
    "auth.unauthenticated": _f("authz_fail", _AUTHN, "info", 3002, exact=False),
    "auth.token.invalid": _f("authn_login_fail", _AUTHN, "start", 3002, exact=False),
    "auth.token.expired": _f("session_use_after_expire", _AUTHN, "start", 3002, exact=False),
    "auth.token.claims_invalid": _f("authn_login_fail", _AUTHN, "start", 3002, exact=False),
    "auth.token.revoked": _f("authn_token_reuse", _AUTHN, "start", 3002),
    "auth.mfa.failed": _f("authn_login_fail", _AUTHN, "start", 3002, exact=False),
    "auth.mfa.enrolled": _f("user_updated", _IAM, "user,change", 3001, exact=False),
    "auth.mfa.revoked": _f("user_updated", _IAM, "user,change", 3001, exact=False),
    "auth.backup_code.used": _f("authn_login_success", _AUTHN, "start", 3002, exact=False),
    "auth.password.changed": _f("authn_password_change", _IAM, "user,change", 3001),
    "auth.password.reset_requested": _f(
        "authn_password_change", _IAM, "user,info", 3001, exact=False
    ),
    "auth.password.reset_completed": _f("authn_password_change", _IAM, "user,change", 3001),
    "auth.password.reset_failed": _f("authn_password_change_fail", _IAM, "user,change", 3001),
    "auth.password.change_failed": _f("authn_password_change_fail", _IAM, "user,change", 3001),
    "auth.email.verified": _f("user_updated", _IAM, "user,change", 3001, exact=False),
    "auth.email.verification_failed": _f("user_updated", _IAM, "user,change", 3001, exact=False),
    "auth.api_key.created": _f("authn_token_created", _IAM, "creation", 3001),
    "auth.api_key.revoked": _f("authn_token_revoked", _IAM, "deletion", 3001),
    "authz.permission_denied": _f("authz_fail", _WEB, "access,denied", 6004),
    "authz.cross_tenant": _f("authz_fail", _WEB, "access,denied", 6004),
    "authz.tenant_context_missing": _f("authz_fail", _WEB, "access,denied", 6004),
    "authz.privilege_escalation": _f("authz_fail", _IAM, "admin,denied", 3005, exact=False),
    "authz.role.changed": _f("authz_change", _IAM, "user,change", 3005),
    "request.csrf_mismatch": _f("input_validation_fail", _WEB, "access,denied", 6004, exact=False),
    "request.rate_limited": _f("excess_rate_limit_exceeded", _WEB, "access,denied", 6004),
    "request.blocked": _f("excess_rate_limit_exceeded", _WEB, "access,denied", 6004, exact=False),
    "request.attack_tool": _f("malicious_attack_tool", _WEB, "access,info", 6004),
    "admin.action": _f("authz_admin", _IAM, "admin", 6003),
    "admin.user.created": _f("user_created", _IAM, "user,creation", 3001),
    "admin.user.activated": _f("user_updated", _IAM, "user,change", 3001),
    "admin.user.deactivated": _f("user_archived", _IAM, "user,change", 3001),
    "admin.user.deleted": _f("user_deleted", _IAM, "user,deletion", 3001),
    "admin.quota.changed": _f("authz_admin", "configuration", "change", 6003, exact=False),
    "admin.config.changed": _f("authz_admin", "configuration", "change", 6003, exact=False),
    "data.sensitive.accessed": _f("sensitive_read", "database", "access", 6005),
    "data.exported": _f("sensitive_read", "database", "access", 6005, exact=False),
    "data.deleted": _f("sensitive_delete", "database", "deletion", 6005),
    "data.uploaded": _f("upload_complete", "file", "creation", 6006),
    "data.upload.failed": _f("upload_validation", "file", "creation", 6006, exact=False),
    "abuse.host": _f(
        "excess_rate_limit_exceeded", "intrusion_detection", "info", 2004, exact=False, kind="alert"
    ),
    "abuse.user": _f("authn_login_fail_max", "intrusion_detection", "info", 2004, kind="alert"),
    "abuse.scan": _f("malicious_excess_404", "intrusion_detection", "info", 2004, kind="alert"),
    "abuse.block.started": _f(
        "excess_rate_limit_exceeded",
        "intrusion_detection",
        "denied",
        2004,
        exact=False,
        kind="alert",
    ),  # fmt: skip
    "abuse.block.ended": _f(
        "excess_rate_limit_exceeded",
        "intrusion_detection",
        "info",
        2004,
        exact=False,
        kind="alert",
    ),  # fmt: skip
}

#: The attribute keys the collector adds (archive / SIEM pipeline only).
SIEM_KEYS: Final = (
    "event.kind",
    "event.category",
    "event.type",
    "event.outcome",
    "event.action",
    "owasp.event",
    "ocsf.class_uid",
    "ocsf.class_name",
)


def _ottl_string(value: str) -> str:
    return json.dumps(value)  # OTTL string literals use JSON's escapes for '"' and '\\'


def _ottl_list(values: Sequence[str]) -> str:
    return "[" + ", ".join(_ottl_string(v) for v in values) + "]"


def collector_statements() -> list[str]:
    """One OTTL statement per catalogue event for the ``transform/siem`` log context."""
    statements = []
    for name, spec in CATALOGUE.items():
        fields = SIEM_MAPPING[name]
        values = (
            _ottl_string(fields.ecs_kind),
            _ottl_list(fields.ecs_category),
            _ottl_list(fields.ecs_type),
            _ottl_string(spec.outcome),
            _ottl_string(name),
            _ottl_string(fields.owasp),
            str(fields.ocsf_class_uid),
            _ottl_string(OCSF_CLASSES[fields.ocsf_class_uid]),
        )
        pairs = ", ".join(f"{_ottl_string(k)}: {v}" for k, v in zip(SIEM_KEYS, values, strict=True))
        statements.append(
            f'merge_maps(attributes, {{{pairs}}}, "upsert") where '
            f'attributes["{attr.EVENT_NAME}"] == {_ottl_string(name)}'
        )
    return statements


def collector_block(indent: int = 10) -> str:
    """The statements as the YAML list lines that go into collector-config.yaml."""
    pad = " " * indent
    return "".join(f"{pad}- {_yaml_single_quoted(s)}\n" for s in collector_statements())


def _yaml_single_quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def markdown() -> str:
    """The mapping as a Markdown table (deploy/siem/MAPPING.md)."""
    lines = [
        "| event | OWASP vocabulary | ECS event.kind / category / type / outcome | OCSF class |",
        "|---|---|---|---|",
    ]
    for name, spec in CATALOGUE.items():
        f = SIEM_MAPPING[name]
        owasp = f"`{f.owasp}`" + ("" if f.owasp_exact else " (nearest)")
        ecs = (
            f"{f.ecs_kind} / {', '.join(f.ecs_category)} / {', '.join(f.ecs_type)} / {spec.outcome}"
        )
        ocsf = f"{OCSF_CLASSES[f.ocsf_class_uid]} ({f.ocsf_class_uid})"
        lines.append(f"| `{name}` | {owasp} | {ecs} | {ocsf} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m otel_secaudit.siem collector|markdown``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["collector"]:
        sys.stdout.write(collector_block())
        return 0
    if args == ["markdown"]:
        sys.stdout.write(markdown())
        return 0
    print("usage: python -m otel_secaudit.siem collector|markdown", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
