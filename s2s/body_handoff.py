"""An upload's body handed to a decode process, and its stripped photo handed back, in shared memory.

Through the process pool's pipe a 2.5 MB body costs 16-20 ms of CPU a submit (pickled, then pushed
through a 64 KiB pipe a piece at a time, with a context switch each way for every piece) and 12 MB
bodies several times that; written once to an anonymous memory file (``memfd_create``: it has no
name in any filesystem and goes away with the last descriptor, so a crash leaves no photo behind)
and read in place by the decode process, the same round trip costs 3.5-4 ms (``bench/submit_throughput.py``).
The decode process opens the file through ``/proc/<API pid>/fd/<fd>``: Linux only, and only where
/proc lets a process open its parent's descriptors; :func:`works` tells, and elsewhere the pipe is used.
"""

from __future__ import annotations

import os

from attrs import evolve

from s2s import uploads
from s2s.catalog import Catalog
from s2s.job_requests import NewJob

_IOV_MAX = 1024  # buffers one pwritev takes (Linux's IOV_MAX)


class Body:
    """An anonymous memory file holding an upload's body (then its stripped photo); closed with ``close``."""

    def __init__(self, chunks: list[bytes]):
        self.fd = os.memfd_create("s2s-upload", os.MFD_CLOEXEC)
        try:
            self.size = _write_all(self.fd, chunks)
        except BaseException:
            os.close(self.fd)
            raise

    @property
    def path(self) -> str:
        """Where another process of this user opens it."""
        return f"/proc/{os.getpid()}/fd/{self.fd}"

    def read(self, nbytes: int) -> bytes:
        return _read_all(self.fd, nbytes)

    def close(self) -> None:
        os.close(self.fd)


def read_job(path: str, size: int, catalog: Catalog, *, max_bytes: int, max_pixels: int) -> tuple[NewJob, int]:
    """In a decode process: :func:`s2s.uploads.read_job` on the body at ``path``; the stripped photo is written
    back over the start of the same file (it is shorter than its base64), and the job comes back without it,
    with the photo's length."""
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        job = uploads.read_job([_read_all(fd, size)], catalog, max_bytes=max_bytes, max_pixels=max_pixels)
        _write_all(fd, [job.photo])
        return evolve(job, photo=b""), len(job.photo)
    finally:
        os.close(fd)


def echo(path: str) -> bytes:
    """In a decode process: the file's first bytes, for :func:`works`."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.pread(fd, 16, 0)
    finally:
        os.close(fd)


def works(run_in_child) -> bool:
    """Whether a decode process can open a body this process wrote (``run_in_child(fn, *args)`` waits for it)."""
    if not hasattr(os, "memfd_create"):
        return False
    probe = b"s2s body handoff"
    try:
        body = Body([probe])
    except OSError:
        return False
    try:
        return run_in_child(echo, body.path) == probe
    except OSError:
        return False
    finally:
        body.close()


def _write_all(fd: int, chunks: list[bytes]) -> int:
    """Write the chunks from offset 0; a short write (not expected of a memory file) is carried on."""
    views = [memoryview(c) for c in chunks if c]
    offset = 0
    while views:
        done = os.pwritev(fd, views[:_IOV_MAX], offset)
        offset += done
        while views and done >= len(views[0]):
            done -= len(views[0])
            views.pop(0)
        if done:
            views[0] = views[0][done:]
    return offset


def _read_all(fd: int, nbytes: int) -> bytes:
    data = os.pread(fd, nbytes, 0)
    if len(data) < nbytes:  # not expected of a memory file: read the rest
        parts = [data]
        got = len(data)
        while got < nbytes:
            more = os.pread(fd, nbytes - got, got)
            if not more:
                raise OSError(f"upload body: {got} of {nbytes} bytes")
            parts.append(more)
            got += len(more)
        data = b"".join(parts)
    return data
