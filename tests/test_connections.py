"""The pooled connections' command packing: hiredis for everyday commands, a photo's bytes never copied."""

from __future__ import annotations

from redis.asyncio.connection import Connection

from s2s.connections import BIG_ARGUMENT, HIREDIS_AVAILABLE, HiredisPackedConnection


def test_commands_pack_to_the_same_bytes_and_a_big_argument_is_sent_as_it_is():
    assert HIREDIS_AVAILABLE, "redis[hiredis] is a dependency"
    ours, redis_pys = HiredisPackedConnection(), Connection()
    commands = [("EVALSHA", "f" * 40, 2, "s2s:job:a", "s2s:job:a:events", 7, 1.5, b"\x00picture", "h\u00e9ro"),
                ("SCRIPT LOAD", "return 1"), (b"GET", "k"), ("SET", "k", bytearray(b"ab")),
                ("SET", "k", memoryview(b"cd"))]
    for command in commands:
        assert b"".join(ours.pack_command(*command)) == b"".join(redis_pys.pack_command(*command)), command
    photo = bytes(BIG_ARGUMENT + 1)
    packed = ours.pack_command("SET", "s2s:blob:photo", photo, "PX", 1000)
    assert any(piece is photo for piece in packed), "the photo rides as its own buffer, not copied into one"
    assert b"".join(packed) == b"".join(redis_pys.pack_command("SET", "s2s:blob:photo", photo, "PX", 1000))
