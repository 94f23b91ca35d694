"""What several benchmarks share: the A B B A interleaving and an ASGI request scope."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

__all__ = ["form_request_scope", "interleaved"]


def interleaved(
    arm_a: Callable[[], float], arm_b: Callable[[], float], pairs: int
) -> tuple[float, float, float]:
    """Run A and B in A B B A order ``pairs`` times (after one warm-up of each): the median
    B/A ratio of the pairs, the median of A and the median of B."""
    arm_a(), arm_b()  # warm up
    ratios, a_values, b_values = [], [], []
    for i in range(pairs):
        if i % 2 == 0:
            a, b = arm_a(), arm_b()
        else:
            b, a = arm_b(), arm_a()
        ratios.append(b / a)
        a_values.append(a)
        b_values.append(b)
    return statistics.median(ratios), statistics.median(a_values), statistics.median(b_values)


def form_request_scope(
    method: str, path: str, body: bytes, token: str | None = None
) -> dict[str, Any]:
    """The ASGI scope of an HTTP/1.1 request from 203.0.113.1, with a url-encoded form
    ``body`` (content type and length) when there is one, and a bearer ``token``."""
    headers = [(b"host", b"bench"), (b"user-agent", b"bench")]
    if body:
        headers += [
            (b"content-type", b"application/x-www-form-urlencoded"),
            (b"content-length", str(len(body)).encode()),
        ]
    if token:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("203.0.113.1", 5000),
        "server": ("bench", 80),
    }
