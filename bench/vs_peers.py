"""s2s against BullMQ on the same machine, back to back, with the ratio of every figure.

The machine's speed drifts 2-3x from hour to hour, so a queue figure means something only next to a
peer measured right before or after it. Each round runs BullMQ once through the shared peer harness
(``../shared/peers/run_all.sh``, one worker process at concurrency 50, its own redis-server) and then
``bench/queue_throughput.py`` (one s2s worker process at concurrency 50, the noop provider); rounds
are interleaved, and the table shows every round's pair and its ratio, then the medians.

Figures: backlog drain of no-op jobs (jobs/s), 2,000 jobs of 50 ms at concurrency 50 (jobs/s; the
limit is 1,000), enqueue-to-start p99 at 200 jobs/s (ms, lower is better).

Bounded: at most ``MAX_ROUNDS`` rounds, each run under a time cap.
Usage: python bench/vs_peers.py [--rounds 3] [--peers-dir ../shared/peers] [--install]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: ../shared/peers beside the repository (or beside the worktrees' folder, for /work/wt/<name>)
PEER_DIRS = [HERE.parent.parent / "shared" / "peers", HERE.parent.parent.parent / "shared" / "peers"]
MAX_ROUNDS = 10
RUN_CAP_S = 900  # one BullMQ or s2s run

#: (figure, BullMQ metric, pattern in queue_throughput.py's output, higher is better)
FIGURES = [
    ("backlog no-op jobs/s", "backlog_drain", r"backlog drain: .*: ([\d,.]+) jobs/s", True),
    ("50 ms jobs at c50, jobs/s", "drain_sleep50", r"jobs of 50 ms, concurrency 50: ([\d,.]+) jobs/s", True),
    ("enqueue->start p99, ms", "latency_p99", r"enqueue-to-start .* p99 ([\d.]+) ms", False),
]


def run_bullmq(peers_dir: Path, install: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="vs-peers-") as results:
        env = {**os.environ, "RUNS": "1", "PEERS": "bullmq", "RESULTS_DIR": results,
               "SKIP_INSTALL": "0" if install else "1"}
        proc = subprocess.run(["bash", str(peers_dir / "run_all.sh")], env=env, capture_output=True, text=True,
                              timeout=RUN_CAP_S)
        figures = {}
        jsonl = Path(results) / "run1.jsonl"
        for line in jsonl.read_text().splitlines() if jsonl.exists() else []:
            rec = json.loads(line)
            if rec["peer"].startswith("bullmq-c"):
                figures[rec["metric"]] = float(rec["value"])
        if not figures:
            raise SystemExit(f"BullMQ gave no figures (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
        return figures


def run_s2s(extra: list[str]) -> dict[str, float]:
    proc = subprocess.run([sys.executable, str(HERE / "queue_throughput.py"), *extra], capture_output=True,
                          text=True, timeout=RUN_CAP_S)
    figures = {}
    for _, metric, pattern, _ in FIGURES:
        found = re.search(pattern, proc.stdout)
        if found:
            figures[metric] = float(found.group(1).replace(",", ""))
    if len(figures) < len(FIGURES):
        raise SystemExit(f"queue_throughput.py gave {figures} (exit {proc.returncode}):\n"
                         f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return figures


def fmt(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.2f}"


def table(rounds: list[tuple[dict, dict]]) -> str:
    lines = ["| figure | round | BullMQ | s2s | s2s / BullMQ |", "|---|---|---|---|---|"]
    for name, metric, _, higher in FIGURES:
        ratios = []
        for i, (peer, ours) in enumerate(rounds, 1):
            ratio = ours[metric] / peer[metric] if peer.get(metric) else float("nan")
            ratios.append(ratio)
            lines.append(f"| {name} | {i} | {fmt(peer[metric])} | {fmt(ours[metric])} | {ratio:.2f} |")
        med_peer = statistics.median(p[metric] for p, _ in rounds)
        med_ours = statistics.median(o[metric] for _, o in rounds)
        better = "higher is better" if higher else "lower is better"
        lines.append(f"| **{name}** | median | {fmt(med_peer)} | {fmt(med_ours)} | "
                     f"**{statistics.median(ratios):.2f}** ({min(ratios):.2f}-{max(ratios):.2f}; {better}) |")
    return "\n".join(lines)


def git_head() -> str:
    try:
        return subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help=f"interleaved BullMQ/s2s pairs (at most {MAX_ROUNDS})")
    peers_dir = os.environ.get("S2S_PEERS_DIR") or next((d for d in PEER_DIRS if d.is_dir()), PEER_DIRS[0])
    parser.add_argument("--peers-dir", type=Path, default=Path(peers_dir), help="the peer harness (S2S_PEERS_DIR)")
    parser.add_argument("--install", action="store_true", help="let run_all.sh install BullMQ first")
    parser.add_argument("--s2s-args", default="", help="extra arguments for queue_throughput.py")
    args = parser.parse_args()
    rounds_n = max(1, min(args.rounds, MAX_ROUNDS))
    started = datetime.datetime.now(datetime.timezone.utc)
    rounds = []
    for i in range(rounds_n):
        print(f"[{datetime.datetime.now():%H:%M:%S}] round {i + 1}/{rounds_n}: BullMQ", file=sys.stderr, flush=True)
        peer = run_bullmq(args.peers_dir, args.install and i == 0)
        print(f"[{datetime.datetime.now():%H:%M:%S}] round {i + 1}/{rounds_n}: s2s", file=sys.stderr, flush=True)
        ours = run_s2s(args.s2s_args.split())
        rounds.append((peer, ours))
        print(f"  BullMQ {peer}\n  s2s    {ours}", file=sys.stderr, flush=True)
    print(f"{started:%Y-%m-%d %H:%M} UTC, s2s {git_head()}, {rounds_n} interleaved rounds, one worker process each "
          f"at concurrency 50, {os.cpu_count()} cores")
    print(table(rounds))


if __name__ == "__main__":
    main()
