"""Blobs as files in one directory, for an API and workers on one machine (``file:///dir``).

A blob's expiry is its file's modification time, set before the file appears: a write
goes to a temp file, gets its mtime, then is renamed over the key, so a reader sees the
old blob or the new one whole, never part of one. Reads treat a file past its mtime as
gone; :meth:`FileStore.sweep` (run periodically) removes such files from the disk.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path

from s2s.storage import BlobStore, check_key

TEMP_PREFIX = ".tmp-"
STALE_TEMP_S = 3600  # a temp file this old is left over from a write that crashed


class FileStore(BlobStore):
    scheme = "file"

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    async def put(self, key: str, data: bytes, *, ttl_s: int, content_type: str = "application/octet-stream") -> None:
        await asyncio.to_thread(self._put, self._path(key), data, time.time() + ttl_s)

    @staticmethod
    def _put(path: Path, data: bytes, expires: float) -> None:
        for attempt in range(3):  # a sweep may remove the (empty) directory between mkdir and mkstemp
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=path.parent)
                break
            except FileNotFoundError:
                if attempt == 2:
                    raise
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.utime(tmp, (time.time(), expires))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    async def get(self, key: str) -> bytes | None:
        return await asyncio.to_thread(self._get, self._path(key))

    @staticmethod
    def _get(path: Path) -> bytes | None:
        try:
            with open(path, "rb") as f:
                if os.fstat(f.fileno()).st_mtime <= time.time():
                    return None
                return f.read()
        except FileNotFoundError:
            return None

    async def expires_at(self, key: str) -> float | None:
        try:
            return (await asyncio.to_thread(self._path(key).stat)).st_mtime
        except FileNotFoundError:
            return None

    async def delete(self, *keys: str) -> None:
        paths = [self._path(k) for k in keys]
        await asyncio.to_thread(lambda: [p.unlink(missing_ok=True) for p in paths])

    async def delete_prefix(self, prefix: str) -> int:
        return await asyncio.to_thread(self._delete_prefix, self._path(prefix))

    def _delete_prefix(self, path: Path) -> int:
        if path.is_file():
            path.unlink(missing_ok=True)
            return 1
        count = len(self._walk(path))
        shutil.rmtree(path, ignore_errors=True)
        return count

    async def list(self, prefix: str | None = None) -> list[str]:
        top = self._path(prefix) if prefix else self.root
        paths = await asyncio.to_thread(self._walk, top)
        return sorted(p.relative_to(self.root).as_posix() for p in paths)

    @staticmethod
    def _walk(top: Path) -> list[Path]:
        """Blob files under ``top`` (temp files left out)."""
        if top.is_file():
            return [top]
        return [Path(d, n) for d, _, names in os.walk(top) for n in names if not n.startswith(".")]

    async def sweep(self, *, min_age_s: float = 0) -> int:
        return await asyncio.to_thread(self._sweep)  # a stat per file (its mtime is its expiry): cheap already

    def _sweep(self) -> int:
        now = time.time()
        removed = 0
        for d, _, names in os.walk(self.root, topdown=False):
            for name in names:
                path = Path(d, name)
                try:
                    mtime = path.stat().st_mtime
                except FileNotFoundError:
                    continue
                if name.startswith(TEMP_PREFIX):
                    if mtime < now - STALE_TEMP_S:
                        path.unlink(missing_ok=True)
                elif mtime <= now:
                    path.unlink(missing_ok=True)
                    removed += 1
            if Path(d) != self.root:
                try:
                    os.rmdir(d)  # only succeeds once the job's directory is empty
                except OSError:
                    pass
        return removed

    async def ping(self) -> None:
        await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)
        if not os.access(self.root, os.W_OK):
            raise PermissionError(f"blob directory {self.root} is not writable")
