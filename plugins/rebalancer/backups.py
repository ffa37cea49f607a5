"""Static channel backups written atomically, keeping the last N versions.

The file at ``path`` is only ever replaced by ``rename`` of a complete, fsynced
temporary file in the same directory, then the directory is fsynced: a reader (or a
backup tool copying it off the machine) sees the old backup or the new one, never a
partial one, and a power cut cannot lose the rename. Older versions are kept as
``path.1`` (newest) to ``path.<keep-1>``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BackupWrite", "write_backup"]


@dataclass(frozen=True, slots=True)
class BackupWrite:
    """What one call did.

    :ivar written: False when the file already held these bytes (nothing changed).
    """

    path: Path
    written: bool
    size: int
    sha256: str


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _same_content(path: Path, digest: str) -> bool:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest() == digest
    except FileNotFoundError:
        return False


def write_backup(path: Path, data: bytes, keep: int) -> BackupWrite:
    """Replace ``path`` with ``data`` atomically and rotate older versions.

    Blocking (file I/O and fsync): call it in a worker thread.

    :param keep: versions kept including the current file (1 keeps no history).
    """
    digest = hashlib.sha256(data).hexdigest()
    path.parent.mkdir(parents=True, exist_ok=True)
    # A redelivered event must not push a real older version out of the history.
    if _same_content(path, digest):
        return BackupWrite(path, False, len(data), digest)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o600)
        if keep > 1 and path.exists():
            for i in range(keep - 1, 1, -1):
                older = path.with_name(f"{path.name}.{i - 1}")
                if older.exists():
                    os.replace(older, path.with_name(f"{path.name}.{i}"))
            # A hard link keeps ``path`` in place (never missing) while it becomes .1.
            first = path.with_name(f"{path.name}.1")
            first.unlink(missing_ok=True)
            os.link(path, first)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    # Versions beyond ``keep`` (the setting was lowered) are removed.
    i = max(keep, 1)
    while True:
        extra = path.with_name(f"{path.name}.{i}")
        if not extra.exists():
            break
        extra.unlink()
        i += 1
    return BackupWrite(path, True, len(data), digest)
