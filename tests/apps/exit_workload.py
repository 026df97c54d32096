"""One span and one counter, then print WORK-DONE and exit; the shutdown test
measures the time from that line to the process's end."""

import sys

from opentelemetry import metrics, trace

with trace.get_tracer("exit-workload").start_as_current_span("work"):
    metrics.get_meter("exit-workload").create_counter("work.done").add(1)
print("WORK-DONE", flush=True)
sys.exit(0)
