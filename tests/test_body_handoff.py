"""Upload bodies reach the decode processes in shared memory, and come back as the same job as through a pipe.

s2s/body_handoff.py writes the body once to an anonymous memory file that a decode process opens in
place; the pipe (pickled, 64 KiB at a time) stays the fallback where that cannot work. These tests run
the gate's real decode processes and compare what each path makes of the same submission.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import sys

import pytest
from PIL import Image

from s2s import body_handoff, uploads
from s2s.catalog import Catalog
from s2s.settings import Settings
from s2s.web.upload_gate import UploadGate

CATALOG = Catalog.load()


def submission(size=(640, 480)) -> bytes:
    out = io.BytesIO()
    Image.effect_noise(size, 40).convert("RGB").save(out, format="JPEG", quality=90, comment=b"Mia, 4, our street")
    return json.dumps({"heroName": "Mia", "originalImageBase64": "data:image/jpeg;base64,"
                       + base64.b64encode(out.getvalue()).decode()}).encode()


def pieces(body: bytes, n: int) -> list[bytes]:
    step = max(1, len(body) // n)
    return [body[i:i + step] for i in range(0, len(body), step)]


def read(gate: UploadGate, chunks: list[bytes]):
    settings = Settings.from_env({}, dotenv=None)
    return asyncio.run(gate.read_job(chunks, CATALOG, max_bytes=settings.max_image_bytes,
                                     max_pixels=settings.max_image_pixels))


@pytest.fixture(scope="module")
def gate() -> UploadGate:
    gate = UploadGate(Settings.from_env({}, dotenv=None, max_decodes=1))
    gate.warm()
    return gate


def test_on_linux_bodies_go_through_shared_memory(gate):
    assert gate.shared_memory is sys.platform.startswith("linux")  # memfd_create and /proc/<pid>/fd


@pytest.mark.parametrize("n", [1, 7, 3000])  # 3000 pieces: more than one pwritev takes (IOV_MAX 1024)
def test_the_shared_memory_path_makes_the_same_job_as_the_pipe(gate, n):
    body = submission()
    through_pipe = uploads.read_job(pieces(body, n), CATALOG, max_bytes=10 << 20, max_pixels=40_000_000)
    chunks = pieces(body, n)
    job = read(gate, chunks)
    assert chunks == [], "the chunks are let go once written"
    assert job == through_pipe
    assert b"our street" not in job.photo and job.photo.startswith(b"\xff\xd8")


def test_bad_input_from_the_decode_process_is_the_same_error(gate):
    body = json.dumps({"heroName": "Mia", "originalImageBase64": "data:image/jpeg;base64,bm90IGEgcGhvdG8="}).encode()
    with pytest.raises(uploads.InputError) as err:
        read(gate, [body])
    assert (err.value.status, err.value.code) == (400, "invalid_image")


def test_a_memory_file_holds_exactly_what_was_written_and_leaves_no_descriptor():
    before = set(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    parts = [os.urandom(n) for n in (0, 1, 4096, 3, 70000)] * 250
    body = body_handoff.Body(parts)
    try:
        assert body.size == sum(map(len, parts))
        assert body.read(body.size) == b"".join(parts)
    finally:
        body.close()
    if before is not None:
        assert set(os.listdir("/proc/self/fd")) == before
