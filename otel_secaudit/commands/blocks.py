"""``otel-secaudit blocks list | release ADDRESS``: the blocks of a shared store.

``list`` prints each running block (address or network, seconds left, how many blocks the key
has had; ``--json`` for scripts). ``release ADDRESS`` ends one now for every instance (each
drops it within a second), restarts its count and keeps its repeat-offender history unless
``--forget``; the release is recorded as ``admin.action`` (``security.action=release_block``)
and exported through the standard ``OTEL_LOGS_EXPORTER`` / ``OTEL_EXPORTER_OTLP_*`` variables
(``OTEL_LOGS_EXPORTER=none``: not exported).

The store is ``--store URI``, default OTEL_SECAUDIT_STORE. With ``memory://`` blocks live in
each application process: the command says so and names the in-process call,
:func:`otel_secaudit.release_block`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone
from typing import Any

from . import UsageProblem

__all__ = ["add_parser", "run"]

_MEMORY_HINT = (
    "blocks live in each application process with the memory:// store (OTEL_SECAUDIT_STORE "
    "is not a shared store): release one inside the application with "
    "otel_secaudit.release_block('{address}'), or point --store at the instances' Redis"
)


def add_parser(commands: Any) -> None:
    """The ``blocks`` subcommand and its ``list`` / ``release`` actions."""
    blocks = commands.add_parser(
        "blocks",
        help="list the active blocks of a shared store, release one early",
        description="The client addresses (and IPv6 networks) the instances refuse with 429, "
        "from the shared store (Redis standalone, sentinel or cluster).",
    )
    actions = blocks.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="the running blocks")
    release = actions.add_parser(
        "release",
        help="end a block now, in every instance",
        description="End the block of ADDRESS now in every instance (within a second), "
        "restart its count, keep its repeat-offender history unless --forget; recorded as "
        "admin.action (security.action=release_block), exported through OTEL_LOGS_EXPORTER / "
        "OTEL_EXPORTER_OTLP_*.",
    )
    release.add_argument(
        "address",
        metavar="ADDRESS",
        help="an address (203.0.113.7, 2001:db8::1: its IPv6 network) or an IPv6 network as "
        "listed (2001:db8:1:2::/64)",
    )
    release.add_argument(
        "--forget",
        action="store_true",
        help="also forget its repeat-offender history (its next block is a first one again)",
    )
    for parser in (listing, release):
        parser.add_argument(
            "--store",
            metavar="URI",
            help="the instances' store (default: OTEL_SECAUDIT_STORE), e.g. redis://host:6379/0,"
            " redis+sentinel://host:26379/mymaster, redis+cluster://host:7000",
        )
        parser.add_argument("--json", action="store_true", help="print JSON (for scripts)")


def _settings() -> Any:
    from ..config import ConfigError, Settings

    try:
        return Settings.load(lenient=True)
    except ConfigError as exc:  # pragma: no cover - lenient loading reports, never raises
        raise UsageProblem(str(exc)) from None


def _store(uri: str | None, address: str) -> Any:
    from ..config import ConfigError
    from ..detection.stores import RedisStore, parse_store_uri
    from ..store_uris import redact_uri_password

    raw = uri if uri is not None else os.environ.get("OTEL_SECAUDIT_STORE", "memory://")
    try:
        normalized = parse_store_uri(raw)
    except (ValueError, ConfigError) as exc:
        raise UsageProblem(f"--store: {exc}") from None
    if normalized == "memory://":
        raise UsageProblem(_MEMORY_HINT.format(address=address or "ADDRESS"))
    try:
        return RedisStore(normalized, timeout=3.0), redact_uri_password(normalized)
    except (ValueError, ConfigError) as exc:
        raise UsageProblem(f"--store: {exc}") from None


def _unreachable(shown: str, exc: BaseException) -> UsageProblem:
    detail = str(exc).splitlines()[0][:200] if str(exc) else ""
    return UsageProblem(f"cannot reach the store {shown}: {type(exc).__name__}: {detail}")


def _list(args: argparse.Namespace) -> int:
    store, shown = _store(args.store, "")
    now = time.time()
    try:
        found = store.list_blocks(now)
    except ImportError:
        raise
    except Exception as exc:
        raise _unreachable(shown, exc) from None
    finally:
        store.close()
    rows = [
        {
            "key": info.key,
            "seconds_left": round(info.until - now, 1),
            "until": datetime.fromtimestamp(info.until, tz=timezone.utc).isoformat(),
            "blocks": info.offences,
        }
        for info in found
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no active blocks in {shown}")
        return 0
    width = max(len("address or network"), *(len(row["key"]) for row in rows))
    print(f"{'address or network':<{width}}  {'seconds left':>12}  {'blocks':>6}")
    for row in rows:
        print(f"{row['key']:<{width}}  {row['seconds_left']:>12.1f}  {row['blocks']:>6}")
    print(f"{len(rows)} active block(s) in {shown}")
    return 0


def _release(args: argparse.Namespace) -> int:
    from ..detection.keys import operator_key
    from ..operators import ReleasedBlock

    settings = _settings()
    try:
        key = operator_key(args.address, settings.ipv6_prefix)
    except ValueError as exc:
        raise UsageProblem(str(exc)) from None
    store, shown = _store(args.store, args.address)
    try:
        info = store.release(key, time.time(), float(settings.window_seconds), args.forget)
    except ImportError:
        raise
    except Exception as exc:
        raise _unreachable(shown, exc) from None
    finally:
        store.close()
    released = ReleasedBlock.of(info, time.time(), args.forget)
    exported = _audit(settings, released)
    if args.json:
        print(json.dumps({**released.to_dict(), "audit_exported": exported}, indent=2))
        return 0
    if released.was_blocked:
        print(
            f"released {key} ({released.seconds_left:.0f} s were left); every instance lets it "
            "through within a second; its count restarts"
        )
    else:
        print(f"{key} was not blocked; its count restarts")
    if args.forget:
        print("its repeat-offender history is forgotten: a next block is a first one")
    elif released.offences:
        print(f"its repeat-offender history is kept: it has had {released.offences} block(s)")
    return 0


def _audit(settings: Any, released: Any) -> str:
    """Record the release as ``admin.action`` and export it; returns where it went (or why
    not), also said on stderr when it failed."""
    from ..operators import record_release
    from ..recorder import SecurityRecorder
    from .audit import AuditExport

    export = AuditExport.from_environment()
    try:
        record_release(SecurityRecorder(settings, logger_provider=export.provider), released)
    finally:
        outcome = export.close()
    if outcome.startswith("not exported ("):
        if outcome.endswith("=none)"):
            print(f"note: the admin.action record was {outcome}", file=sys.stderr)
        else:
            print(f"warning: the admin.action record was {outcome}", file=sys.stderr)
    return outcome


def run(args: argparse.Namespace) -> int:
    """``otel-secaudit blocks``."""
    if args.action == "list":
        return _list(args)
    return _release(args)
