"""Fault drills: upstream calls (paid pictures) per completed job, for each fault.

Each drill runs real processes (its own redis-server, `s2s serve`, `s2s worker`, a fake
OpenAI on 127.0.0.1 that counts calls): see tests/fault_scenarios.py. Leases are 3 s
(1.5 s where noted) so a run takes about two minutes; the rules are those of production.

    python bench/fault_drill.py            # every drill once
    python bench/fault_drill.py --runs 3   # each drill three times
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.fault_scenarios, tests.fakes

from tests import fault_scenarios as drills  # noqa: E402
from tests.fault_scenarios import Rig  # noqa: E402

DRILLS = {
    "frozen": ("Redis frozen 8 s, lease 3 s, 4 jobs running on 2 workers + 2 waiting",
               lambda: Rig(lease_ms=3000, call_s=4.0), lambda rig: drills.frozen_redis(rig, freeze_s=8.0)),
    "deploy": ("SIGTERM 1.5 s into two 6 s calls (+1 job waiting for a slot), grace 2 s, replacement worker",
               lambda: Rig(call_s=6.0, shutdown_grace_ms=2000), drills.deploy),
    "full": ("Redis at maxmemory (noeviction) with 2 calls of 6 s running, 1 waiting; lease 1.5 s",
             lambda: Rig(lease_ms=1500, call_s=6.0), drills.full_redis),
    "sigkill": ("SIGKILL of a worker mid-call (a second call is expected)",
                lambda: Rig(lease_ms=1500, call_s=2.0), drills.killed_worker),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1, help="runs of each drill (1-5)")
    parser.add_argument("--only", choices=[*DRILLS, "blackhole"], action="append", help="run only these drills")
    args = parser.parse_args()
    runs = max(1, min(5, args.runs))
    chosen = args.only or [*DRILLS, "blackhole"]
    print(f"{'drill':<9} {'jobs':>4} {'done':>4} {'calls':>5} {'calls/job':>9} {'s':>5}  what")
    for name in chosen:
        if name == "blackhole":
            continue
        what, rig, drill = DRILLS[name]
        for _ in range(runs):
            started = time.monotonic()
            with rig() as r:
                out = drill(r)
            print(f"{name:<9} {out.accepted:>4} {out.completed:>4} {out.upstream_calls:>5} "
                  f"{out.calls_per_job:>9.2f} {time.monotonic() - started:>5.1f}  {what}", flush=True)
            if name == "full":
                codes = sorted({body.get("code") for _, body in out.notes["refused"]})
                no_worker = sum(code != 200 for code, _ in out.notes["health"])
                print(f"{'':<9} submits while full: {codes}; health answers not 200: {no_worker}; "
                      f"waiting job while full: {out.notes['waiting_while_full']}")
    if "blackhole" in chosen:
        for _ in range(runs):
            with Rig() as r:
                t = drills.black_hole_answer_times(r).notes
            print(f"blackhole  submit {t['submit_code']} in {t['submit_s']:.2f} s, health {t['health_status']} in "
                  f"{t['health_s']:.2f} s, /ws {t['ws_code']} in {t['ws_unavailable_s']:.2f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
