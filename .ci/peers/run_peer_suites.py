"""Run contrib's own Django, Flask, WSGI and ASGI instrumentation test suites without and with
otel_secaudit active, as a peer would judge us: no test may fail only with the plugin.

    python .ci/peers/run_peer_suites.py [django flask wsgi asgi]

For each suite, the sdist of the *installed* ``opentelemetry-instrumentation-<name>`` is
fetched from the package index at test time (``pip download --no-binary :all:``; their code is
never committed here), unpacked in a temporary folder, and its ``tests/`` run twice with pytest
(JUnit XML each time): plain, then with ``-p secaudit_peer_plugin`` (this folder). A test that
fails or errors with the plugin and passed without it gets the whole suite run twice more with
the plugin (a failure may depend on what earlier tests did): failing in all three runs fails
the job; passing in one of them, it is listed as a timing flake (contrib's suites assert
wall-clock durations within 50 ms, which a loaded CI machine misses now and then, with or
without the plugin). A test failing in both runs is contrib's, not ours,
and is only listed. Exit status 1 when any suite has a test that fails only with the plugin,
or collects fewer tests with it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ElementTree
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
SUITES = ("django", "flask", "wsgi", "asgi")


def fetch(name: str, into: Path) -> Path:
    """Unpack the installed version's sdist of opentelemetry-instrumentation-``name``."""
    package = f"opentelemetry-instrumentation-{name}"
    version = metadata.version(package)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
         "--no-build-isolation", f"{package}=={version}", "-d", str(into)],
        check=True,
    )  # fmt: skip
    (archive,) = into.glob(f"opentelemetry_instrumentation_{name}-*.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    (root,) = [p for p in into.iterdir() if p.is_dir() and (p / "tests").is_dir()]
    return root


def outcomes(report: Path) -> dict[str, str]:
    """test id -> passed / failed / skipped, from a JUnit XML report."""
    out = {}
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        test = f"{case.get('classname')}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            out[test] = "failed"
        elif case.find("skipped") is not None:
            out[test] = "skipped"
        else:
            out[test] = "passed"
    return out


def _environment(marker: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("OTEL_SECAUDIT_STORE", None)
    env["SECAUDIT_PEER_MARKER"] = str(marker)
    return env


def run(root: Path, report: Path, plugin: bool) -> dict[str, str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("OTEL_SECAUDIT_STORE", None)
    marker = report.with_suffix(".active")
    env["SECAUDIT_PEER_MARKER"] = str(marker)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
               f"--junitxml={report}", "tests"]  # fmt: skip
    if plugin:
        command[3:3] = ["-p", "secaudit_peer_plugin"]
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    tail = "\n".join(done.stdout.splitlines()[-3:])
    print(
        f"    {'with' if plugin else 'without'} the plugin: {tail.splitlines()[-1] if tail else ''}"
    )
    if plugin and (not marker.exists() or "instrumented=True" not in marker.read_text()):
        print(done.stdout[-3000:], done.stderr[-3000:])
        raise SystemExit("the peer plugin did not instrument")
    if not report.exists():
        print(done.stdout[-3000:], done.stderr[-3000:])
        raise SystemExit(f"pytest wrote no report in {root}")
    return outcomes(report)


def main() -> int:
    names = sys.argv[1:] or list(SUITES)
    bad = 0
    with tempfile.TemporaryDirectory(prefix="secaudit-peers-") as tmp:
        for name in names:
            folder = Path(tmp) / name
            folder.mkdir()
            root = fetch(name, folder)
            print(f"{root.name}:")
            plain = run(root, folder / "plain.xml", plugin=False)
            ours = run(root, folder / "plugin.xml", plugin=True)
            only_ours = sorted(
                t for t, o in ours.items() if o == "failed" and plain.get(t) != "failed"
            )
            both = sorted(t for t, o in ours.items() if o == "failed" and plain.get(t) == "failed")
            missing = sorted(set(plain) - set(ours))
            for test in both:
                print(f"    fails without the plugin too (not ours): {test}")
            for attempt in range(2) if only_ours else ():
                again = run(root, folder / f"plugin-{attempt}.xml", plugin=True)
                for test in [t for t in only_ours if again.get(t) == "passed"]:
                    print(f"    timing flake (passed on a rerun with the plugin): {test}")
                    only_ours.remove(test)
            for test in only_ours:
                print(f"    FAILS ONLY WITH THE PLUGIN (3 runs of 3): {test}")
            bad += len(only_ours)
            for test in missing:
                print(f"    NOT RUN WITH THE PLUGIN: {test}")
            bad += len(missing)
    print("peer suites:", "ok" if not bad else f"{bad} test(s) fail only with otel_secaudit")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
