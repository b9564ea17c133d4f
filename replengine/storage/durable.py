"""Making a file's name durable, not only its bytes.

An fsync of a file makes its data durable; the directory entry that names it (a new file,
or one renamed over another) is only durable once the directory is synced too. Without it a
power cut may leave the old file, or none, under the name, even though its bytes were
synced: the dirty-region bitmap, the rewind marker and a new key file would vanish. A
removal likewise: a finished rewind's marker would come back.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make durable the entries of directory ``path`` (created, renamed, removed)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_durably(path: Path) -> None:
    """Remove ``path`` (gone already: nothing to do), durably: a power cut soon after must
    not bring it back. A finished rewind's marker that came back made its node inconsistent
    again after a whole-cluster power cut; three nodes of four at once in the fault campaign
    (seed 10300 round 9), and the fourth could not take the records it lacked: no node
    could be promoted."""
    try:
        path.unlink()
    except FileNotFoundError:
        return
    fsync_dir(path.parent)


def replace_durably(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` (its data already synced) over ``path``, durably."""
    os.replace(tmp, path)
    fsync_dir(path.parent)
