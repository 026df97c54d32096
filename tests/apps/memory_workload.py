"""A process that fills memory the way a cache of rendered pages or JSON blobs
does, frees most of it, then waits for otel-render's recovery manager to give
the memory back. Prints one JSON line: RSS before and after, and the action.

Run with ``OTEL_RENDER_MEMORY_LIMIT_MB`` just above its footprint.
"""

import json
import os
import random
import sys
import time

import psutil

import otel_render
from otel_render import diagnostics

otel_render.configure()
random.seed(11)
# 120,000 byte strings of 600-4000 bytes (malloc, not pymalloc's small-object
# arenas); free 15 of every 16.
blocks = [bytes(bytearray(b"\x01") * random.randint(600, 4000)) for _ in range(120_000)]
kept = blocks[::16]
del blocks
rss_before = psutil.Process().memory_info().rss
print(json.dumps({"ready": True, "rss_before": rss_before}), flush=True)

deadline = time.monotonic() + float(sys.argv[1] if len(sys.argv) > 1 else 60)
while time.monotonic() < deadline:
    done = [record for record in diagnostics.actions.snapshot() if record.action == "relieve_memory"]
    if done:
        break
    time.sleep(0.1)
print(
    json.dumps(
        {
            "rss_before": rss_before,
            "rss_after": psutil.Process().memory_info().rss,
            "actions": [record.to_dict() for record in diagnostics.actions.snapshot()],
            "pid": os.getpid(),
        }
    ),
    flush=True,
)
