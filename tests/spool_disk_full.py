"""A real full disk for the spool tests, with nothing left behind.

Run by :func:`tests.test_spool.run_on_full_disk` inside a private mount namespace
(``unshare --mount``) on a small tmpfs mounted at MOUNT_POINT: the mount exists only in this
process's namespace and disappears with it, even when the test run is killed.

Usage: ``python -m tests.spool_disk_full MOUNT_POINT spool|recorder``; prints one JSON object.

* ``spool``: a Spool fills the disk (ENOSPC / short writes), space comes back, more records;
  reports whether exactly the accepted records are read back, in order.
* ``recorder``: a recorder wired as in production (``OTEL_SECAUDIT_SPOOL_DIR`` on the tmpfs,
  ``OTEL_EXPORTER_OTLP_*`` from the environment) records events with ``run``/``seq``
  attributes through a full disk, then with space back, and drains the spool.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any


def fill(mount_point: Path, leave: int) -> Path:
    """Fill the filesystem but for about ``leave`` bytes; returns the ballast file."""
    ballast = mount_point / "ballast"
    free = os.statvfs(mount_point)
    with open(ballast, "wb") as handle:
        try:
            handle.write(b"\0" * max(0, free.f_bavail * free.f_frsize - leave))
        except OSError:
            pass
    return ballast


def spool_mode(mount_point: Path) -> dict[str, Any]:
    from otel_secaudit.delivery import Spool, SpoolWriteError

    spool = Spool(mount_point / "spool", max_bytes=10 * 1024 * 1024, segment_bytes=1 << 20)
    ballast = fill(mount_point, 8 * 1024)
    accepted: list[bytes] = []
    failures = 0
    for i in range(220):
        if i == 200:
            ballast.unlink()  # space comes back
        payload = b"rec-%03d-" % i + b"z" * 300
        try:
            spool.append(payload)
            accepted.append(payload)
        except SpoolWriteError:
            failures += 1
    read: list[bytes] = []
    while True:
        payloads, position = spool.read(1000)
        if not payloads and position == spool.cursor:
            break
        read.extend(payloads)
        spool.commit(position, len(payloads))
    stats = spool.stats
    spool.close()
    return {
        "failures": failures,
        "accepted": len(accepted),
        "read_back_exactly": read == accepted,
        "late_accepted": sum(1 for p in accepted if int(p[4:7]) >= 200),
        "torn_regions": stats.torn_regions,
        "write_errors": stats.write_errors,
        "refused": stats.refused,
    }


def recorder_mode(mount_point: Path) -> dict[str, Any]:
    from otel_secaudit import SecurityRecorder, Settings

    recorder = SecurityRecorder(
        Settings.load(environ={}, strict=True, spool_dir=str(mount_point / "spool"))
    )
    processor = recorder.delivery.spool
    assert processor is not None, "the spool did not start"
    processor.backoff_max_s = 0.3
    ballast = fill(mount_point, 24 * 1024)
    for seq in range(300):
        recorder.record(
            "auth.login.failed", user_name=f"u{seq}", attributes={"run": "full", "seq": seq}
        )
    ballast.unlink()
    for seq in range(50):
        recorder.record(
            "auth.login.failed", user_name=f"u{seq}", attributes={"run": "after", "seq": seq}
        )
    delivered = processor.force_flush(15_000)
    stats = processor.spool.stats
    result = {
        "delivered": delivered,
        "appended": stats.appended,
        "refused": stats.refused,
        "write_errors": stats.write_errors,
        "torn_regions": stats.torn_regions,
    }
    recorder.close(5_000)
    return result


def main(argv: list[str]) -> int:
    mount_point, mode = Path(argv[0]), argv[1]
    result = spool_mode(mount_point) if mode == "spool" else recorder_mode(mount_point)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
