"""What reading the submitted user names costs, next to the framework's own parsing of the same
body (otel_secaudit/web/user_names.py).

Arms, per body, in one process and one event loop:

* ``A``: Starlette parses the body as a view would (``await request.form()``, or
  ``json.loads(await request.body())`` for JSON);
* ``B``: the same, with the body chunks also fed to :class:`BodyNames` through the ``receive``
  the application reads (what the ASGI middleware does) and the names asked for at the end, as
  an authentication attempt does (the ``asked=no`` rows do not ask: any other request);
* ``A2``: A again, for the A/A row that shows this machine's noise.

Arms run interleaved A B B A / B A A B in blocks; the figures are medians of per-block
microseconds, the ratio the median of per-pair B/A ratios. Bodies: small login bodies
(url-encoded, JSON, multipart) and 1 MB ones whose user field comes last (a padding field
first), chunked by 64 KiB as uvicorn delivers them.

Run from the repository root: ``python -m benchmarks.user_names [--rounds 8] [--block 200]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Callable, Coroutine
from typing import Any

from starlette.requests import Request

from otel_secaudit.web.user_names import BodyNames

FIELDS = ("username", "email", "login")
FORM = "application/x-www-form-urlencoded"
BOUNDARY = "bench-b0undary"
PAD = "x" * 1_000_000


def _multipart(username: str) -> bytes:
    parts = [("username", username), ("password", "correct horse battery staple")]
    body = b"".join(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in parts
    )
    return body + f"--{BOUNDARY}--\r\n".encode()


#: label -> (content type, body, names asked for)
BODIES: dict[str, tuple[str, bytes, bool]] = {
    "form": (FORM, b"username=alice%40example.com&password=correct+horse+battery", True),
    "json": ("application/json", b'{"username": "alice", "password": "correct horse"}', True),
    "multipart": (f"multipart/form-data; boundary={BOUNDARY}", _multipart("alice"), True),
    "form 1MB": (FORM, f"note={PAD}&username=alice&password=x".encode(), True),
    "json 1MB": ("application/json", json.dumps({"note": PAD, "username": "a"}).encode(), True),
    "json 1MB asked=no": (
        "application/json",
        json.dumps({"note": PAD, "username": "a"}).encode(),
        False,
    ),
}


def _chunks(body: bytes) -> list[bytes]:
    return [body[i : i + 65_536] for i in range(0, len(body), 65_536)] or [b""]


def _scope(content_type: str) -> dict[str, Any]:
    return {
        "type": "http",
        "method": "POST",
        "path": "/login",
        "headers": [(b"content-type", content_type.encode())],
    }


async def _parse(content_type: str, chunks: list[bytes], reader: BodyNames | None) -> None:
    pending = list(chunks)

    async def receive() -> dict[str, Any]:
        chunk = pending.pop(0)
        more = bool(pending)
        if reader is not None:
            reader.feed(chunk, more=more)
        return {"type": "http.request", "body": chunk, "more_body": more}

    request = Request(_scope(content_type), receive)
    if content_type == "application/json":
        json.loads(await request.body())
    else:
        await (await request.form()).close()


def _arms(label: str) -> dict[str, Callable[[int], Coroutine[Any, Any, float]]]:
    content_type, body, asked = BODIES[label]
    chunks = _chunks(body)

    async def plain(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            await _parse(content_type, chunks, None)
        return time.perf_counter() - start

    async def with_names(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            reader = BodyNames(content_type, FIELDS)
            await _parse(content_type, chunks, reader)
            if asked:
                assert reader.names(), label
        return time.perf_counter() - start

    return {"A": plain, "B": with_names, "A2": plain}


async def measure(label: str, rounds: int, block: int) -> tuple[float, float, float, float]:
    arms = _arms(label)
    n = max(3, block // 100) if "1MB" in label else block
    per: dict[str, list[float]] = {"A": [], "B": [], "A2": []}
    ratios: list[float] = []
    aa: list[float] = []
    for number in range(rounds):
        order = ["A", "B", "B", "A"] if number % 2 == 0 else ["B", "A", "A", "B"]
        got: dict[str, list[float]] = {"A": [], "B": []}
        for arm in order:
            got[arm].append(await arms[arm](n) / n * 1e6)
        a2 = await arms["A2"](n) / n * 1e6
        a, b = statistics.mean(got["A"]), statistics.mean(got["B"])
        per["A"].append(a)
        per["B"].append(b)
        per["A2"].append(a2)
        ratios.append(b / a)
        aa.append(a2 / a)
    return (
        statistics.median(per["A"]),
        statistics.median(per["B"]),
        statistics.median(ratios),
        statistics.median(aa),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--block", type=int, default=200)
    args = parser.parse_args()
    print(f"rounds={args.rounds} block={args.block}; microseconds per request body")
    print(f"{'body':>18} {'A us':>9} {'B us':>9} {'B-A us':>8} {'B/A':>6} {'A2/A (A/A)':>11}")
    for label in BODIES:
        a, b, ratio, aa = asyncio.run(measure(label, args.rounds, args.block))
        print(f"{label:>18} {a:9.1f} {b:9.1f} {b - a:8.1f} {ratio:6.3f} {aa:11.3f}")


if __name__ == "__main__":
    main()
