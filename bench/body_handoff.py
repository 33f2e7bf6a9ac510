"""What handing an upload to a decode process costs: the pool's pipe against a shared memory file.

The same round trip either way: a body of ``--mb`` MB in 64 KiB chunks (as Tornado delivers it) goes to a
decode process, which sends back three quarters of it (the photo out of its base64). Through the pipe the
chunks are pickled and pushed through 64 KiB at a time; through s2s.body_handoff they are written once to
an anonymous memory file that the decode process opens in place. Prints CPU (this process and the decode
process) and wall time per round trip. Bounded: ``--calls`` round trips a path, twice each.
Usage: python bench/body_handoff.py [--mb 2.5] [--calls 200]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor

import psutil

from s2s import body_handoff


def through_pipe(chunks: list[bytes]) -> bytes:
    data = b"".join(chunks)
    return data[: len(data) * 3 // 4]


def through_memory(path: str, size: int) -> int:
    fd = os.open(path, os.O_RDWR)
    try:
        data = body_handoff._read_all(fd, size)
        return body_handoff._write_all(fd, [data[: size * 3 // 4]])
    finally:
        os.close(fd)


def cpu_s(pids: list[int]) -> float:
    return sum(sum(psutil.Process(p).cpu_times()[:2]) for p in pids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=2.5)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    size = int(args.mb * 2**20)
    body = os.urandom(size)
    chunks = [body[i:i + 65536] for i in range(0, size, 65536)]
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("forkserver"))
    pids = [os.getpid(), pool.submit(os.getpid).result()]
    for path in ("pipe", "shared memory") * 2:
        cpu0, wall0 = cpu_s(pids), time.perf_counter()
        for _ in range(args.calls):
            if path == "pipe":
                pool.submit(through_pipe, chunks).result()
            else:
                held = body_handoff.Body(chunks)
                try:
                    held.read(pool.submit(through_memory, held.path, held.size).result())
                finally:
                    held.close()
        cpu, wall = (cpu_s(pids) - cpu0) / args.calls, (time.perf_counter() - wall0) / args.calls
        print(f"{args.mb} MB body through {path}: {cpu * 1000:.2f} ms CPU, {wall * 1000:.2f} ms wall a round trip")
    pool.shutdown()


if __name__ == "__main__":
    main()
