"""``otel-secaudit demo``: serve the bundled demo app (FastAPI, or the Django project with
``--framework django``) on loopback, instrumented as ``opentelemetry-instrument`` would, play an
attack scenario against it over real HTTP and print the security report read back from the
OTLP/JSON files it wrote (``--out``), exactly as ``otel-secaudit report`` would read them.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Final

from . import DEMO_EXTRA_HINT, UsageProblem, consoles
from .report import link_arguments, links, show

__all__ = ["DEFAULT_OUT", "DemoServer", "add_parser", "run"]

DEFAULT_OUT: Final = "./secaudit-demo-output"
_OUR_FILES: Final = ("logs.jsonl", "traces.jsonl", "metrics.jsonl")


def add_parser(commands: Any) -> None:
    """The ``demo`` subcommand's arguments."""
    demo = commands.add_parser(
        "demo",
        help="run the demo app, play an attack scenario, print the report",
        description="Serve the bundled demo app, play an attack scenario against it over HTTP "
        "and print the security report. No collector needed: telemetry is written as OTLP/JSON "
        "lines to --out (and also sent to a collector when one is configured).",
    )
    demo.add_argument(
        "--out",
        default=DEFAULT_OUT,
        type=Path,
        help=f"output folder for the OTLP/JSON files (default {DEFAULT_OUT})",
    )
    demo.add_argument(
        "--framework",
        choices=("fastapi", "django"),
        default="fastapi",
        help="the demo app: the FastAPI one (default) or a small Django project (LoginView,"
        " sessions, CSRF, permissions; needs pip install 'otel-secaudit[django]')",
    )
    demo.add_argument(
        "--short",
        action="store_true",
        help="fast mode: less benign traffic, no pauses, 2 s blocks (tests)",
    )
    demo.add_argument(
        "--otlp-endpoint",
        metavar="URL",
        help="also export to this OTLP collector (sets OTEL_EXPORTER_OTLP_ENDPOINT;"
        " port 4318 means http/protobuf unless OTEL_EXPORTER_OTLP_PROTOCOL says)",
    )
    demo.add_argument(
        "--serve",
        action="store_true",
        help="after the scenario keep the app running for manual requests (Ctrl-C stops it)",
    )
    demo.add_argument(
        "--host",
        default=None,
        help="address to listen on (default 127.0.0.1; 0.0.0.0 inside a container,"
        " detected by /.dockerenv, so docker compose can publish the port)",
    )
    demo.add_argument(
        "--port",
        type=int,
        default=None,
        help="port to listen on (default: 8000 with --serve, else a free one)",
    )
    demo.add_argument(
        "--json", action="store_true", help="print the summary as JSON instead of tables"
    )
    demo.add_argument(
        "--html",
        metavar="FILE",
        type=Path,
        help="also write the report as one self-contained HTML page"
        " (with --serve it is also served at /report)",
    )
    link_arguments(demo)


class DemoServer:
    """uvicorn serving ``app`` in a background thread; :meth:`start` returns the URL the
    scenario uses."""

    def __init__(self, app: Any, host: str, port: int) -> None:
        import uvicorn

        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            # uvicorn would otherwise rewrite the socket peer from X-Forwarded-For itself
            # (FORWARDED_ALLOW_IPS defaults to 127.0.0.1); the demo shows otel_secaudit's own
            # resolution (OTEL_SECAUDIT_TRUSTED_PROXIES), with the real peer in
            # network.peer.address.
            proxy_headers=False,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="demo-server", daemon=True)

    def start(self, timeout: float = 15.0) -> str:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise UsageProblem("the demo server did not start (is the port in use?)")
            time.sleep(0.01)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"  # the scenario's client; loopback is a trusted proxy
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def _prepare_out(out: Path, err: Any) -> None:
    if out.exists() and not out.is_dir():
        raise UsageProblem(f"--out {out}: exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageProblem(f"--out {out}: cannot create: {exc.strerror or exc}") from None
    replaced = [name for name in _OUR_FILES if (out / name).exists()]
    for name in replaced:
        (out / name).unlink()
    if replaced:
        err.print(
            f"replacing the previous run's files in {out}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


def _wait_for_stop(server: DemoServer) -> None:
    """Serve until Ctrl-C or SIGTERM (``docker compose stop``), so the exit path still flushes
    the providers and delivers the spool."""
    stop = threading.Event()

    def request_stop(signum: int, frame: Any) -> None:
        stop.set()

    previous = {}
    for number in (signal.SIGINT, signal.SIGTERM):
        previous[number] = signal.signal(number, request_stop)
    try:
        while server.thread.is_alive() and not stop.wait(0.5):
            pass
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _add_report_page(app: Any, out: Path, telemetry: Any, links: Any) -> None:
    """``GET /report``: the HTML incident report of everything in ``out`` so far."""
    from fastapi.responses import HTMLResponse

    from ..demo.html_report import render_html
    from ..demo.report import load, summarize

    def report_page() -> HTMLResponse:  # sync: FastAPI runs it in a worker thread
        telemetry.force_flush(5_000)
        recording = load(out)
        page = render_html(recording, summarize(recording), links)
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    app.add_api_route("/report", report_page, methods=["GET"], include_in_schema=False)


def _print_django_serve_help(url: str, out: Path, console: Any) -> None:
    from ..demo.django_site import DJANGO_DEMO_PASSWORDS

    console.print(
        f"\nThe Django demo is serving on {url} (Ctrl-C stops it); sign in at"
        f" {url}/accounts/login/",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    console.print("Users (password):")
    for name, password in DJANGO_DEMO_PASSWORDS.items():
        console.print(f"  {name}: {password}", highlight=False, soft_wrap=True)
    console.print(
        f"The report so far: otel-secaudit report {out}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


def _print_serve_help(url: str, console: Any) -> None:
    from ..demo.app import DEMO_PASSWORDS

    console.print(
        f"\nThe demo app is serving on {url} (Ctrl-C stops it).", markup=False, highlight=False
    )
    console.print(
        f"HTML incident report (refreshed on every load): {url}/report",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    console.print("Users (password; the TOTP code is checked too, see /auth/login):")
    for name, password in DEMO_PASSWORDS.items():
        console.print(f"  {name}: {password}", highlight=False, soft_wrap=True)
    console.print("Try, for example:", highlight=False, soft_wrap=True)
    for line in (
        f"curl -s {url}/health",
        f"curl -s -i {url}/me                          # 401 -> auth.unauthenticated",
        f"curl -s -i -X POST {url}/auth/login -H 'Content-Type: application/json' "
        '-d \'{"username":"alice","password":"guess","totp":"000000"}\'',
        f"curl -s -i {url}/me -H 'X-Forwarded-For: 203.0.113.7'   # blocked while the block lasts",
    ):
        console.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)


def _play_scenario(scenario: Any, args: argparse.Namespace, err: Any) -> None:
    """The attack scenario over real HTTP, with a progress bar on stderr."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    steps = scenario.steps()
    with Progress(
        TextColumn("{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=err,
        transient=False,
    ) as progress:
        task = progress.add_task("starting", total=len(steps))
        pause = 0.0 if args.short else 0.08
        for step in steps:
            progress.update(task, description=step.phase)
            scenario.outcome.add(step.phase, step.run())
            progress.advance(task)
            if pause:
                time.sleep(pause)
        progress.update(task, description="done")


def _check_demo_imports(framework: str) -> None:
    """The demo's optional dependencies, checked up front (a one-line message naming the
    extra)."""
    try:
        import httpx  # noqa: F401  (the demo extra)
        import rich.progress  # noqa: F401

        from .. import runtime  # noqa: F401
        from ..demo import telemetry  # noqa: F401
    except ImportError as exc:
        raise UsageProblem(f"{exc}; {DEMO_EXTRA_HINT}") from None
    if framework == "django":
        from ..demo import django_site

        try:
            django_site.check_installed()
        except ImportError as exc:
            raise UsageProblem(str(exc)) from None
    try:
        if framework == "django":
            from ..demo.django_site.scenario import DjangoScenario  # noqa: F401
        else:
            from ..demo.app import DemoDirectory, create_app  # noqa: F401
    except ImportError as exc:
        raise UsageProblem(f"{exc}; {DEMO_EXTRA_HINT}") from None


class _DemoRun:
    """The served demo app of one framework: start it, play its scenario, print its help."""

    def __init__(self, args: argparse.Namespace, host: str, port: int) -> None:
        self.args = args
        self.host = host
        self.port = port
        self.framework: str = args.framework
        self.server: Any = None
        self.url = ""
        self.directory: Any = None
        self.django_folder: str | None = None
        if self.framework == "django":
            from ..demo import django_site

            # Before the instrumentors: contrib's DjangoInstrumentor edits the settings.
            self.django_folder = django_site.configure()

    def start(self, out: Path, telemetry: Any) -> str:
        if self.framework == "django":
            from ..demo import django_site

            django_site.prepare()
            try:
                self.server = django_site.DjangoDemoServer(self.host, self.port, self.django_folder)
            except OSError:
                raise UsageProblem("the demo server did not start (is the port in use?)") from None
        else:
            from ..demo.app import DemoDirectory, create_app

            self.directory = DemoDirectory.seeded()
            app = create_app(self.directory)
            if self.args.serve:
                _add_report_page(app, out, telemetry, links(self.args))
            self.server = DemoServer(app, self.host, self.port)
        self.url = self.server.start()
        return self.url

    def play(self, err: Any, block_seconds: int) -> None:
        import httpx

        if self.framework == "django":
            from ..demo.django_site.scenario import DjangoScenario

            django_scenario = DjangoScenario(
                self.url, short=self.args.short, block_seconds=block_seconds
            )
            try:
                _play_scenario(django_scenario, self.args, err)
            finally:
                django_scenario.close()
            return
        from ..demo.scenario import Scenario

        with httpx.Client(base_url=self.url, timeout=30) as client:
            scenario = Scenario(
                client, self.directory, short=self.args.short, block_seconds=block_seconds
            )
            _play_scenario(scenario, self.args, err)

    def print_help(self, out: Path, console: Any) -> None:
        if self.framework == "django":
            _print_django_serve_help(self.url, out, console)
        else:
            _print_serve_help(self.url, console)


def _self_check(recorder: Any, summary: Any, out: Path, err: Any) -> bool:
    recorded = recorder.stats.snapshot()["recorded"]
    if summary.log_records != recorded:
        from rich.markup import escape

        err.print(
            f"[red]self-check failed:[/red] the recorder recorded {recorded} events but "
            f"{escape(str(out / 'logs.jsonl'))} holds {summary.log_records}"
        )
        return False
    err.print(
        f"self-check: all {recorded} recorded security events are in "
        f"{out / 'logs.jsonl'}; rerun the report with: otel-secaudit report {out}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    return True


def run(args: argparse.Namespace) -> int:
    _check_demo_imports(args.framework)
    from .. import runtime
    from ..demo import telemetry as demo_telemetry

    port = args.port if args.port is not None else (8000 if args.serve else 0)
    if not 0 <= port <= 65535:
        raise UsageProblem(f"--port {port}: not a port number")
    host = args.host or ("0.0.0.0" if Path("/.dockerenv").exists() else "127.0.0.1")

    out_console, err = consoles()
    out: Path = args.out
    _prepare_out(out, err)
    # The demo's own defaults; anything set in the environment wins.
    os.environ.setdefault("OTEL_SECAUDIT_TRUSTED_PROXIES", "127.0.0.1/32")
    os.environ.setdefault("OTEL_SECAUDIT_BLOCK_SECONDS", "2" if args.short else "5")
    run = _DemoRun(args, host, port)
    try:
        telemetry = demo_telemetry.setup(out, args.otlp_endpoint, framework=args.framework)
    except ValueError as exc:
        raise UsageProblem(str(exc)) from None
    if telemetry.collector:
        where = f"to the collector at {telemetry.collector} ({telemetry.protocol}) and to {out}"
        err.print(f"exporting {where}", markup=False, highlight=False, soft_wrap=True)
    else:
        err.print(
            f"no collector configured: telemetry goes to OTLP/JSON files in {out}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )

    recorder = runtime.current().recorder
    run.start(out, telemetry)
    server = run.server
    stopped = False
    try:
        run.play(err, recorder.settings.block_seconds)
        # The detector's pending violations become abuse.* events before the report is read.
        runtime.current().flush(10_000)
        if args.serve:
            telemetry.force_flush()
        else:
            server.stop()
            stopped = True
            telemetry.shutdown()
        summary = show(
            out,
            strict=False,
            top=5,
            output="json" if args.json else "text",
            html=args.html,
            link_set=links(args),
        )
        if not _self_check(recorder, summary, out, err):
            return 1
        if args.serve:
            run.print_help(out, out_console)
            _wait_for_stop(server)
            err.print(
                "stopping: delivering what is left, then closing the files",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
    finally:
        if not stopped:
            server.stop()
            telemetry.shutdown()
    return 0
