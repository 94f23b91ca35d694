"""An application process for fault injection: records security events in a loop with the spool
on (``OTEL_SECAUDIT_SPOOL_DIR`` and ``OTEL_EXPORTER_OTLP_*`` come from the environment).

Usage: ``python -m tests.spool_worker COUNT_FILE RUN [TOTAL] [RATE]``

After every ``record()`` that returned, the number of returned calls is written to COUNT_FILE
(``pwrite`` of a fixed-width number; the page cache survives SIGKILL, and it is fsynced every
100 records). Every event carries ``attributes={"run": RUN, "seq": i}``. With TOTAL the worker
stops after TOTAL events, drains the spool (``recorder.close``) and exits 0; without it, it
runs until killed. RATE is events per second (default 500).
"""

from __future__ import annotations

import os
import sys
import time

import otel_secaudit


def main(argv: list[str]) -> int:
    count_file, run = argv[0], argv[1]
    total = int(argv[2]) if len(argv) > 2 and argv[2] != "-" else None
    rate = float(argv[3]) if len(argv) > 3 else 500.0
    recorder = otel_secaudit.get_recorder()
    processor = recorder.delivery.spool
    if processor is None:
        print("spool is not on", file=sys.stderr)
        return 2
    # Tests use short outages: do not let the retry backoff grow to its 5 s production cap.
    processor.backoff_max_s = 0.3
    fd = os.open(count_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    interval = 1.0 / rate
    started = time.monotonic()
    emitted = 0
    while total is None or emitted < total:
        otel_secaudit.record(
            "auth.login.failed",
            user_name=f"user{emitted % 50}",
            client_address="203.0.113.9",
            attributes={"run": run, "seq": emitted},
        )
        emitted += 1
        os.pwrite(fd, b"%012d" % emitted, 0)
        if emitted % 100 == 0:
            os.fsync(fd)
        delay = started + emitted * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    os.fsync(fd)
    os.close(fd)
    recorder.close(timeout_millis=20_000)
    print(f"emitted={emitted} depth={processor.spool.depth}", flush=True)
    return 0 if processor.spool.depth == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
