"""Run ``s2s serve`` with a garbage-collection probe, for bench/ws_bench.py (never in production: no route).

It records how long every collection of each generation took (``gc.callbacks``),
and on SIGUSR1 runs three full ``gc.collect()`` on the main thread (the IOLoop's,
so its time is exactly how long the loop stood still) and writes to the file
named by S2S_GC_PROBE_FILE: the fastest one's time, the slowest's, the least CPU
time one took, the natural collections so far, the objects the collector tracks, and (with S2S_GC_PROBE_TYPES=1) the
tracked objects counted by type, and with S2S_GC_PROBE_TRACEMALLOC=1 the live memory by line allocated.

Usage: python bench/gc_probe.py serve   (as ``python -m s2s serve``)
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import sys
import time
import tracemalloc
from collections import Counter

PROBE_FILE = os.environ.get("S2S_GC_PROBE_FILE", "")
_started: dict[int, float] = {}
_snapshot = None
pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}


def _on_gc(phase: str, info: dict) -> None:
    generation = info["generation"]
    if phase == "start":
        _started[generation] = time.perf_counter()
    elif generation in _started:
        pauses[generation].append(time.perf_counter() - _started.pop(generation))


def _on_signal(signum, frame) -> None:
    """Only schedule the probe: a signal handler may run inside a collection's callback, where
    ``gc.collect()`` returns at once (one is already under way) and would time nothing."""
    asyncio.get_running_loop().call_soon_threadsafe(_probe)


def _probe() -> None:
    took, cpu = [], []
    for _ in range(3):  # the fastest of three: the machine is shared, and a preempted run says nothing
        started, started_cpu = time.perf_counter(), time.thread_time()
        gc.collect()
        took.append(time.perf_counter() - started)
        cpu.append(time.thread_time() - started_cpu)  # the collector's own work, whatever else ran meanwhile
    tracked = gc.get_objects()
    answer = {"full_collect_s": min(took), "full_collect_max_s": max(took),
              "full_collect_cpu_s": min(cpu), "tracked": len(tracked),
              "frozen": gc.get_freeze_count(),
              "collections": {g: {"count": len(p), "max_s": max(p, default=0.0), "total_s": sum(p)}
                              for g, p in pauses.items()}}
    if os.environ.get("S2S_GC_PROBE_TYPES"):
        answer["types"] = dict(Counter(type(o).__qualname__ for o in tracked).most_common(40))
    del tracked
    if tracemalloc.is_tracing():  # what grew since the last probe, by the line that allocated it
        global _snapshot
        snapshot = tracemalloc.take_snapshot()
        if _snapshot is not None:
            answer["traced_growth"] = sum(stat.size_diff for stat in snapshot.compare_to(_snapshot, "filename"))
            answer["allocated_by_line"] = [f"{stat.size_diff / 1024:.0f} KiB {stat.count_diff} blocks {stat.traceback}"
                                           for stat in snapshot.compare_to(_snapshot, "lineno")[:40]]
        _snapshot = snapshot
    for p in pauses.values():
        p.clear()
    with open(PROBE_FILE + ".tmp", "w") as f:
        json.dump(answer, f)
    os.replace(PROBE_FILE + ".tmp", PROBE_FILE)


def main() -> int:
    if os.environ.get("S2S_GC_PROBE_TRACEMALLOC"):
        tracemalloc.start()
    gc.callbacks.append(_on_gc)
    signal.signal(signal.SIGUSR1, _on_signal)
    from s2s.cli import main as s2s_main

    sys.argv = ["s2s", *sys.argv[1:]]
    return s2s_main()


if __name__ == "__main__":
    sys.exit(main())
