"""Channel backup files: atomic replacement and version rotation."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from lightningd_py.plugins.rebalancer.backups import write_backup


def test_writes_and_rotates_keeping_n_versions(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "channel.backup"
    for i in range(6):
        assert write_backup(path, f"backup-{i}".encode(), keep=3).written
    assert path.read_bytes() == b"backup-5"
    assert (tmp_path / "sub" / "channel.backup.1").read_bytes() == b"backup-4"
    assert (tmp_path / "sub" / "channel.backup.2").read_bytes() == b"backup-3"
    assert not (tmp_path / "sub" / "channel.backup.3").exists()
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    # No temporary files are left behind.
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "channel.backup",
        "channel.backup.1",
        "channel.backup.2",
    ]


def test_same_content_is_not_a_new_version(tmp_path: Path) -> None:
    path = tmp_path / "channel.backup"
    write_backup(path, b"a", keep=3)
    write_backup(path, b"b", keep=3)
    result = write_backup(path, b"b", keep=3)
    assert not result.written
    assert (tmp_path / "channel.backup.1").read_bytes() == b"a"


def test_lowering_keep_removes_extra_versions(tmp_path: Path) -> None:
    path = tmp_path / "channel.backup"
    for i in range(5):
        write_backup(path, bytes([i]) * 10, keep=5)
    write_backup(path, b"new", keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["channel.backup", "channel.backup.1"]


def test_readers_never_see_a_partial_or_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "channel.backup"
    blobs = [bytes([i]) * 200_000 for i in range(1, 30)]
    write_backup(path, blobs[0], keep=2)
    seen: list[bytes] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            seen.append(path.read_bytes())

    reader = threading.Thread(target=read)
    reader.start()
    replaced = 0
    try:
        for blob in blobs[1:]:
            before = os.stat(path).st_ino
            write_backup(path, blob, keep=2)
            # A new file renamed into place, never an in-place rewrite; the old one is .1.
            replaced += os.stat(path).st_ino != before
            assert os.stat(path.with_name("channel.backup.1")).st_ino == before
    finally:
        stop.set()
        reader.join()
    assert seen and all(s in blobs for s in seen)
    assert replaced == len(blobs) - 1
