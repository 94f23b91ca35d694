"""What ``SecAuditSpanProcessor`` costs a span without violations, at ``span.end()``.

    python -m benchmarks.span_processor [--quick]

Tracer providers, each exporting through a ``BatchSpanProcessor`` to an exporter that
discards (the realistic pipeline): ``A`` without the processor, ``A2`` a copy of A (the A/A
row: the noise floor), ``B`` with ``SecAuditSpanProcessor`` added, ``N`` with the SDK's own
do-nothing ``SpanProcessor`` added instead (what any processor costs: the SDK calls
``_on_ending`` and ``on_end`` of every processor, two Python calls per span). Each
measurement ends a block of pre-started spans and reads the thread's CPU time per ``end()``;
the arms run interleaved (A B B A ...), and the median of the per-pair ratios is printed.
Target: B/A within 1.03 (spans without violations cost nothing measurable); B/N shows what
is ours beyond the SDK's per-processor floor.

A second pair of rows times B while another span, still open, holds a violation (an attack
in progress): spans without violations then pay one dictionary pop under a lock.
A third pair times ``start_span`` + ``end()`` together (``on_start`` learns the provider from
the span's resource: one id and one set lookup).
"""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from benchmarks.common import interleaved
from otel_secaudit import SecAuditSpanProcessor, Violation


class _Discard(SpanExporter):
    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def provider(extra: SpanProcessor | None) -> Any:
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(
        BatchSpanProcessor(_Discard(), max_queue_size=1_000_000, max_export_batch_size=4096)
    )
    if extra is not None:
        tracer_provider.add_span_processor(extra)
    return tracer_provider


def end_arm(tracer: Any, block: int) -> Callable[[], float]:
    """Thread-CPU nanoseconds per ``span.end()`` over a block of started spans."""

    def run() -> float:
        spans = [tracer.start_span("GET /ok") for _ in range(block)]
        gc.disable()
        started = time.thread_time_ns()
        for span in spans:
            span.end()
        elapsed = time.thread_time_ns() - started
        gc.enable()
        return elapsed / block

    return run


def cycle_arm(tracer: Any, block: int) -> Callable[[], float]:
    """Thread-CPU nanoseconds per ``start_span()`` + ``end()``."""

    def run() -> float:
        gc.disable()
        started = time.thread_time_ns()
        for _ in range(block):
            tracer.start_span("GET /ok").end()
        elapsed = time.thread_time_ns() - started
        gc.enable()
        return elapsed / block

    return run


def main() -> None:
    quick = "--quick" in sys.argv
    pairs, block = (20, 2_000) if quick else (60, 4_000)
    processor = SecAuditSpanProcessor()
    providers = {
        "A": provider(None),
        "A2": provider(None),
        "B": provider(processor),
        "N": provider(SpanProcessor()),
    }
    tracers = {name: tp.get_tracer("bench") for name, tp in providers.items()}
    rows: list[tuple[str, str, str]] = []

    def compare(label: str, make: Callable[[Any, int], Callable[[], float]]) -> None:
        def ratio(a: str, b: str) -> tuple[float, float, float]:
            return interleaved(make(tracers[a], block), make(tracers[b], block), pairs)

        b_a, a_ns, b_ns = ratio("A", "B")
        n_a, _, n_ns = ratio("A", "N")
        b_n, _, _ = ratio("N", "B")
        noise, _, _ = ratio("A", "A2")
        verdict = "ok" if b_a <= 1.03 else "MISSED"
        rows.append((label, f"A {a_ns:,.0f}  B {b_ns:,.0f}  N {n_ns:,.0f} ns", ""))
        rows.append(("", f"B/A {b_a:.3f}  N/A {n_a:.3f}  B/N {b_n:.3f}", f"A/A {noise:.3f}"))
        rows.append(("", f"B/A target <= 1.03: {verdict}", ""))

    compare("span.end(), no marks held", end_arm)
    # an attack in progress: another open span holds a violation
    attack = tracers["B"].start_span("POST /login (attacker, still open)")
    violation = Violation("auth.login.failed", "203.0.113.7", None, "0" * 31 + "1", 0.0)
    assert processor.hold(attack, violation, lambda v: None)
    compare("span.end(), a mark held elsewhere", end_arm)
    attack.end()
    compare("start_span() + end()", cycle_arm)
    for tracer_provider in providers.values():
        tracer_provider.shutdown()
    print(f"pairs={pairs} block={block} spans (thread CPU time per span, median)")
    for label, values, ratios in rows:
        print(f"{label:<34} {values:<44} {ratios}")


if __name__ == "__main__":
    main()
