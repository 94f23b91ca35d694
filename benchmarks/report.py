"""``otel-secaudit report`` on big recordings, measured in one run.

    python -m benchmarks.report [--pairs 10000] [--archive-mb 200]

Prints:

* **summary of N block pairs** (``abuse.block.started`` + ``abuse.block.ended`` per address,
  the records that made ``summarize()`` quadratic: 8,000 pairs took 51 s): CPU seconds of
  ``summarize()``, median of 5, for N/4 and N pairs, and their ratio (linear: about 4;
  quadratic: 16);
* **the whole report of those N pairs** as the CLI runs it, from an OTLP/JSON archive on
  disk: ``load`` + ``summarize`` + JSON, and + the HTML page;
* **a filtered archive** (``--address``) of ``--archive-mb`` MB, mostly other services' spans,
  in a child process: wall seconds, MB/s and the child's peak RSS, beside the same filter on
  an archive a third that size (the peak must not grow with the archive).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from otel_secaudit.demo.html_report import render_html
from otel_secaudit.demo.otlp_json import load
from otel_secaudit.demo.records import LogEntry, Recording
from otel_secaudit.demo.summary import summarize

NOW_S = 1_765_000_000
ROOT = Path(__file__).resolve().parent.parent


def _address(i: int) -> str:
    return f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"


def block_pairs(pairs: int) -> Recording:
    """``pairs`` blocks started and ended, each on its own address."""
    recording = Recording()
    for i in range(pairs):
        common = {"client.address": _address(i), "security.event.outcome": "success"}
        recording.logs.append(
            LogEntry((NOW_S + i) * 10**9, "abuse.block.started", "WARN", "", "", "otel_secaudit",
                     {**common, "security.block.seconds": 300}, None)
        )  # fmt: skip
        recording.logs.append(
            LogEntry((NOW_S + i + 300) * 10**9, "abuse.block.ended", "INFO", "", "",
                     "otel_secaudit", common, None)
        )  # fmt: skip
    return recording


def _cpu(function: Any) -> float:
    started = resource.getrusage(resource.RUSAGE_SELF).ru_utime
    function()
    return resource.getrusage(resource.RUSAGE_SELF).ru_utime - started


def summary_times(pairs: int) -> tuple[float, float]:
    small, large = block_pairs(pairs // 4), block_pairs(pairs)
    quarter = statistics.median(_cpu(lambda: summarize(small)) for _ in range(5))
    full = statistics.median(_cpu(lambda: summarize(large)) for _ in range(5))
    return quarter, full


def _kv(attributes: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"key": k, "value": {"intValue": str(v)} if isinstance(v, int) else {"stringValue": v}}
        for k, v in attributes.items()
    ]


def write_pairs_archive(path: Path, pairs: int) -> None:
    """The pairs as OTLP/JSON lines, 500 records a line (a collector's batches)."""
    records = []
    for log in block_pairs(pairs).logs:
        records.append(
            {"timeUnixNano": str(log.time_ns), "eventName": log.event_name,
             "attributes": _kv(log.attributes)}
        )  # fmt: skip
    with path.open("w") as handle:
        for i in range(0, len(records), 500):
            scope_logs = [{"scope": {"name": "otel_secaudit"}, "logRecords": records[i : i + 500]}]
            handle.write(json.dumps({"resourceLogs": [{"scopeLogs": scope_logs}]}) + "\n")


def whole_report(path: Path) -> tuple[float, float]:
    started = time.perf_counter()
    recording = load(path)
    json.dumps(summarize(recording).to_dict(), default=str)
    as_json = time.perf_counter() - started
    started = time.perf_counter()
    recording = load(path)
    render_html(recording, summarize(recording))
    as_html = time.perf_counter() - started
    return as_json, as_html


def write_big_archive(path: Path, megabytes: int, logs_only: bool = False) -> None:
    """Spans of other services (``logs_only``: security log records of other addresses, which
    must all be decoded), a failed login from 203.0.113.66 every 1,000 lines."""
    spans = [
        {"traceId": f"{t:032x}", "spanId": "2" * 16, "name": "GET /items",
         "startTimeUnixNano": str(NOW_S * 10**9), "endTimeUnixNano": str(NOW_S * 10**9 + 5),
         "attributes": _kv({"http.route": "/items/{id}", "padding": "x" * 900})}
        for t in range(10**9, 10**9 + 10)  # no trace of a matching record
    ]  # fmt: skip
    filler = json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": spans}]}]}) + "\n"
    if logs_only:
        others = [
            {"timeUnixNano": str(NOW_S * 10**9), "eventName": "authz.permission_denied",
             "traceId": f"{t:032x}", "attributes": _kv({"security.event.outcome": "failure",
             "client.address": f"192.0.2.{t % 250}", "user.id": f"u-{t}"})}
            for t in range(40)
        ]  # fmt: skip
        scope_logs = [{"scope": {"name": "otel_secaudit"}, "logRecords": others}]
        filler = json.dumps({"resourceLogs": [{"scopeLogs": scope_logs}]}) + "\n"
    written = line = 0
    with path.open("w") as handle:
        while written < megabytes * 1024 * 1024:
            line += 1
            if line % 1000:
                text = filler
            else:
                record = {"timeUnixNano": str(NOW_S * 10**9), "eventName": "auth.login.failed",
                          "attributes": _kv({"security.event.outcome": "failure",
                                             "client.address": "203.0.113.66"})}  # fmt: skip
                scope_logs = [{"scope": {"name": "otel_secaudit"}, "logRecords": [record]}]
                text = json.dumps({"resourceLogs": [{"scopeLogs": scope_logs}]}) + "\n"
            handle.write(text)
            written += len(text)


_CHILD = (
    "import sys, time\n"
    "from otel_secaudit.cli import main\n"
    "started = time.perf_counter()\n"
    "code = main(sys.argv[1:])\n"
    # VmHWM: this process image's peak (ru_maxrss would include the forking parent's)
    "peak = next(l for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
    "print('RESULT', time.perf_counter() - started, peak.split()[1], file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def filtered(path: Path) -> tuple[float, int, int]:
    """Wall seconds, peak RSS (KiB) and records found of ``report PATH --address ...
    --format json``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, "report", str(path), "--format", "json",
         "--address", "203.0.113.66", "--no-progress"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    line = next(x for x in done.stderr.splitlines() if x.startswith("RESULT"))
    _, seconds, peak = line.split()
    found = sum(json.loads(done.stdout)["events"].values())
    return float(seconds), int(peak), found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=10_000)
    parser.add_argument("--archive-mb", type=int, default=200)
    args = parser.parse_args()

    quarter, full = summary_times(args.pairs)
    print(f"summarize(), {args.pairs // 4:,} block pairs: {quarter:.3f} s CPU")
    growth = full / max(quarter, 1e-6)
    print(f"summarize(), {args.pairs:,} block pairs: {full:.3f} s CPU "
          f"(x{growth:.1f} for 4x the pairs; linear ~4, quadratic 16)")  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        pairs_path = Path(folder) / "pairs.jsonl"
        write_pairs_archive(pairs_path, args.pairs)
        as_json, as_html = whole_report(pairs_path)
        print(f"report of {args.pairs:,} block pairs from disk: --format json {as_json:.2f} s, "
              f"--html {as_html:.2f} s (wall)")  # fmt: skip
        runs = [(args.archive_mb // 3, False), (args.archive_mb, False)]
        runs += [(args.archive_mb // 3, True), (args.archive_mb, True)]
        for megabytes, logs_only in runs:
            big = Path(folder) / f"big-{megabytes}.jsonl"
            write_big_archive(big, megabytes, logs_only)
            seconds, peak, found = filtered(big)
            kind = "security log records" if logs_only else "mostly spans"
            print(f"--address on a {megabytes} MB archive ({kind}): {found} records found in "
                  f"{seconds:.1f} s wall ({megabytes / seconds:.0f} MB/s), "
                  f"peak RSS {peak / 1024:.0f} MiB")  # fmt: skip
            big.unlink()


if __name__ == "__main__":
    main()
