"""One span and one counter, then exit: the program whose exit time we measure."""

from opentelemetry import metrics, trace

with trace.get_tracer("bench").start_as_current_span("work"):
    metrics.get_meter("bench").create_counter("bench.work").add(1)
