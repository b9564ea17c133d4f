"""A disk that fails on command: a FUSE passthrough of one flat directory.

    python -m tests.faults.faultfs BACKING MOUNTPOINT

mirrors the files of BACKING (no subdirectories: a node's volume, SRL and their marker and
bitmap files) at MOUNTPOINT until it is unmounted or the process is killed. Writing to the
hidden file ``MOUNTPOINT/.fault`` sets what fails, at once (the write returns once it is
in force):

    none                 nothing fails
    eio r GLOB           reads of files matching GLOB fail with EIO
    eio w GLOB           writes, fsync and truncation of those files fail with EIO
    eio rw GLOB          both
    powercut SEED        what was written and never synced is lost, as in a power cut;
                         then every call fails with EIO until
    poweron              (the node's processes stopped first, killed before this)
    slowsync MS          every fsync and fdatasync takes MS milliseconds more (0: off),
                         as on a busy disk: writes pile up unsynced behind it

A write that fails writes nothing. Reading ``.fault`` gives the current setting, the
count of failed calls and what the last power cut kept.

Power cut: every write and truncation is remembered (with the bytes it replaced) until the
file is fsynced or fdatasynced; ``powercut`` then rolls each file back to its last synced
state and puts back, per file, a random part of what followed, as a disk with a volatile
cache may keep: nothing (a third of the cuts), the writes up to a random one with that one
torn at a 4 KiB boundary (a disk that writes in order), or any subset of their 4 KiB
pieces (a disk that reorders). The writer must be stopped first (SIGSTOP: none of its
threads runs again) and killed before ``poweron``: a call it had under way fails, an
fsync slowed by ``slowsync`` included, and it never sees the answer. Names too: a file
created, removed or renamed (over another or not) is so durably only once the directory is
fsynced; the cut keeps a random prefix of those changes since and undoes the rest (a
removed or replaced file waits hidden until then, to come back). The mount uses direct
I/O, so no page cache above it holds what was rolled back.

The file system name is ``rfaultfs-<pid of the harness>``, so a later run can find and
unmount what a killed one left (`sweep_stale`).
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import os
import random
import re
import shutil
import signal
import stat as stat_m
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

CONTROL = b".fault"
#: where a removed or replaced file waits until the directory is synced (hidden)
TRASH = b".faultfs-trash-"
#: the unit a disk writes whole, for a power cut's torn writes
SECTOR = 4096


@dataclass(frozen=True)
class Change:
    """A write (``new`` its bytes) or a truncation (``new`` None) not synced yet: where,
    the bytes it replaced or cut, and the file's size before and after it."""

    off: int
    old: bytes
    size_before: int
    size_after: int
    new: bytes | None


class Unsynced:
    """One file's changes since its last sync, in order."""

    def __init__(self) -> None:
        self.changes: list[Change] = []

    def lose_power(self, fd: int, rng: random.Random) -> str:
        """Roll the file back to its synced state, then put back what this cut keeps;
        how many writes were kept, in words."""
        for c in reversed(self.changes):
            os.pwrite(fd, c.old, c.off)
            os.ftruncate(fd, c.size_before)
        writes = [c for c in self.changes if c.new is not None]
        how = rng.choice(["lost", "ordered", "reordered"])
        kept = 0
        if how == "ordered":
            cut = rng.randint(0, len(self.changes))
            for i, c in enumerate(self.changes[: cut + 1]):
                if c.new is None:
                    if i < cut:
                        os.ftruncate(fd, c.size_after)
                    continue
                new = c.new if i < cut else c.new[: rng.randrange(0, len(c.new) + 1, SECTOR)]
                if new:  # (the last one torn: its first sectors only)
                    os.pwrite(fd, new, c.off)
                    kept += 1
        elif how == "reordered":
            for c in writes:  # truncations are lost
                assert c.new is not None
                took = False
                for start in range(c.off - c.off % SECTOR, c.off + len(c.new), SECTOR):
                    lo, hi = max(start, c.off), min(start + SECTOR, c.off + len(c.new))
                    if rng.random() < 0.5:
                        os.pwrite(fd, c.new[lo - c.off : hi - c.off], lo)
                        took = True
                kept += took
        return f"{how} {kept}/{len(writes)}"


def sweep_stale() -> list[str]:
    """Lazily unmount the faultfs mounts of harness processes that no longer exist."""
    out = []
    try:
        lines = open("/proc/self/mounts").read().splitlines()
    except OSError:
        return out
    for ln in lines:
        parts = ln.split()
        m = re.match(r"rfaultfs-(\d+)$", parts[0])
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            subprocess.run(["umount", "-l", parts[1]], capture_output=True, check=False)
            out.append(parts[1])
    return out


def unavailable() -> str | None:
    """Why a faultfs disk cannot be mounted here (None: it can)."""
    if os.geteuid() != 0:
        return "needs root (FUSE allow_other)"
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        return "needs /dev/fuse and fusermount3"
    return None


def command(mnt: os.PathLike[str], spec: str) -> str:
    """Tell the faultfs disk mounted at ``mnt`` what to do (see above); its state after."""
    control = os.path.join(mnt, CONTROL.decode())
    with open(control, "w") as f:
        f.write(spec)
    with open(control) as f:
        return f.read()


@contextlib.contextmanager
def disk_in(root: os.PathLike[str]) -> Iterator[str]:
    """A faultfs disk mounted at ROOT/mnt over ROOT/backing while the block runs: its
    mount point."""
    mnt, backing = os.path.join(root, "mnt"), os.path.join(root, "backing")
    os.makedirs(mnt)
    os.makedirs(backing)
    with mounted(backing, mnt):
        yield mnt


@contextlib.contextmanager
def mounted(backing: os.PathLike[str], mountpoint: os.PathLike[str]) -> Iterator[subprocess.Popen]:
    """BACKING mirrored at MOUNTPOINT while the block runs (both directories must exist); the
    process serving it, which a test may SIGSTOP to make the mount hang. Always continued,
    unmounted and killed at the end."""
    fuse = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.faults.faultfs",
            str(backing),
            str(mountpoint),
            str(os.getpid()),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert fuse.stdout is not None
        line = fuse.stdout.readline()
        assert line.startswith("mounted"), f"faultfs did not mount: {line!r}"
        yield fuse
    finally:
        fuse.send_signal(signal.SIGCONT)
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, check=False)
        fuse.kill()
        fuse.wait()


def main(argv: list[str]) -> int:
    import pyfuse3
    import trio
    from pyfuse3 import FUSEError

    backing, mountpoint, owner = argv[0], argv[1], argv[2]

    class FaultFS(pyfuse3.Operations):
        def __init__(self) -> None:
            super().__init__()
            self.names: dict[int, bytes] = {}
            self.inos: dict[bytes, int] = {}
            self.next_ino = pyfuse3.ROOT_INODE + 1
            self.fds: dict[int, tuple[int, bytes]] = {}  # fh -> (fd, name)
            self.next_fh = 1
            self.mode = "none"
            self.glob = ""
            self.failed = 0
            self.unsynced: dict[bytes, Unsynced] = {}
            self.last_cut = "-"
            self.sync_delay = 0.0
            self.syncing = 0  # fsyncs being slowed now
            self.off = False  # the power is cut (powercut) until poweron
            #: names made, removed or renamed since the directory was last synced, in order:
            #: ("create", name), ("unlink", name, trash), ("rename", old, new, trash | None)
            self.journal: list[tuple] = []
            self.trashed = 0

        # ---- helpers
        def path(self, name: bytes) -> bytes:
            return os.path.join(os.fsencode(backing), name)

        def ino(self, name: bytes) -> int:
            if name not in self.inos:
                self.inos[name] = self.next_ino
                self.names[self.next_ino] = name
                self.next_ino += 1
            return self.inos[name]

        def fails(self, name: bytes, what: str) -> bool:
            if self.off:
                return True  # no power: nothing reads, writes or syncs
            if self.mode == "none" or what not in self.mode:
                return False
            if fnmatch.fnmatch(os.fsdecode(name), self.glob):
                self.failed += 1
                return True
            return False

        def attrs(self, ino: int) -> pyfuse3.EntryAttributes:
            if ino == pyfuse3.ROOT_INODE:
                st = os.lstat(backing)
            elif self.names.get(ino) == CONTROL:
                st = None
            else:
                try:
                    st = os.lstat(self.path(self.names[ino]))
                except OSError as exc:
                    raise FUSEError(exc.errno) from None
            a = pyfuse3.EntryAttributes()
            a.st_ino = ino
            a.entry_timeout = 0
            a.attr_timeout = 0
            if st is None:
                a.st_mode = stat_m.S_IFREG | 0o600
                a.st_nlink = 1
                a.st_size = 0
                return a
            for k in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_size"):
                setattr(a, k, getattr(st, k))
            a.st_blksize = 4096
            a.st_blocks = st.st_blocks
            a.st_atime_ns, a.st_mtime_ns, a.st_ctime_ns = (
                st.st_atime_ns,
                st.st_mtime_ns,
                st.st_ctime_ns,
            )
            return a

        def remember(self, name: bytes, fd: int, off: int, buf: bytes) -> None:
            size = os.fstat(fd).st_size
            old = os.pread(fd, len(buf), off) if off < size else b""
            after = max(size, off + len(buf))
            self.unsynced.setdefault(name, Unsynced()).changes.append(
                Change(off, old, size, after, bytes(buf))
            )

        def remember_truncate(self, name: bytes, new: int) -> None:
            size = os.stat(self.path(name)).st_size
            with open(self.path(name), "rb") as f:
                old = os.pread(f.fileno(), max(0, size - new), new)
            self.unsynced.setdefault(name, Unsynced()).changes.append(
                Change(min(new, size), old, size, new, None)
            )

        def power_cut(self, seed: int) -> str:
            # (an fsync slowed by slowsync and still waiting is its killed caller's: once
            # it wakes it finds the file closed, or its changes gone from here)
            rng = random.Random(seed)
            said = []
            for name, u in sorted(self.unsynced.items()):
                try:
                    fd = os.open(self.path(name), os.O_RDWR)
                except FileNotFoundError:
                    continue  # (gone for good: removed, its directory synced)
                try:
                    if not name.startswith(TRASH):
                        said.append(f"{os.fsdecode(name)}:{u.lose_power(fd, rng)}")
                    else:
                        u.lose_power(fd, rng)  # (its name may come back below)
                finally:
                    os.close(fd)
            self.unsynced.clear()
            if self.journal:
                # the directory's changes reach the disk in order: a prefix of them is kept
                total = len(self.journal)
                keep = rng.randint(0, total)
                undone = self.journal[keep:]
                for op in reversed(undone):
                    self.undo(op)
                self.journal = self.journal[:keep]
                what = " ".join(
                    f"{op[0]}:{os.fsdecode(op[-2 if op[0] == 'rename' else 1])}" for op in undone
                )
                said.append(f"names:ordered {keep}/{total}" + (f" (undone {what})" if what else ""))
                self.commit_names()
            return ",".join(said) or "nothing-unsynced"

        # ---- the directory's names: durable once it is synced
        def move(self, old: bytes, new: bytes) -> None:
            """Rename in the backing directory; the inode number and what is unsynced of
            the file go with it."""
            os.rename(self.path(old), self.path(new))
            u = self.unsynced.pop(old, None)
            if u is not None:
                self.unsynced[new] = u
            for fh, (fd, name) in list(self.fds.items()):
                if name == old:  # (written to after the rename: remembered under the new name)
                    self.fds[fh] = (fd, new)
            ino = self.inos.pop(old, None)
            gone = self.inos.pop(new, None)
            if gone is not None:
                self.names.pop(gone, None)
            if ino is not None:
                self.inos[new] = ino
                self.names[ino] = new

        def to_trash(self, name: bytes) -> bytes:
            trash = TRASH + str(self.trashed).encode()
            self.trashed += 1
            self.move(name, trash)
            return trash

        def undo(self, op: tuple) -> None:
            if op[0] == "create":
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path(op[1]))
                self.unsynced.pop(op[1], None)
                ino = self.inos.pop(op[1], None)
                if ino is not None:
                    self.names.pop(ino, None)
            elif op[0] == "unlink":
                self.move(op[2], op[1])
            else:
                _, old, new, trash = op
                self.move(new, old)
                if trash is not None:
                    self.move(trash, new)

        def commit_names(self) -> None:
            """The directory synced: what was removed or replaced is gone for good."""
            for op in self.journal:
                trash = op[2] if op[0] == "unlink" else op[3] if op[0] == "rename" else None
                if trash is not None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.path(trash))
                    self.unsynced.pop(trash, None)
            self.journal.clear()

        # ---- operations
        async def lookup(self, parent_inode, name, ctx=None):
            if parent_inode != pyfuse3.ROOT_INODE:
                raise FUSEError(errno.ENOENT)
            if name == CONTROL:
                return self.attrs(self.ino(name))
            if name.startswith(TRASH) or not os.path.lexists(self.path(name)):
                raise FUSEError(errno.ENOENT)
            return self.attrs(self.ino(name))

        async def getattr(self, inode, ctx=None):
            return self.attrs(inode)

        async def setattr(self, inode, attr, fields, fh, ctx):
            name = self.names.get(inode)
            if name is None or name == CONTROL:
                return self.attrs(inode)
            p = self.path(name)
            try:
                if fields.update_size:
                    if self.fails(name, "w"):
                        raise FUSEError(errno.EIO)
                    self.remember_truncate(name, attr.st_size)
                    os.truncate(p, attr.st_size)
                if fields.update_mode:
                    os.chmod(p, stat_m.S_IMODE(attr.st_mode))
                if fields.update_atime or fields.update_mtime:
                    st = os.lstat(p)
                    at = attr.st_atime_ns if fields.update_atime else st.st_atime_ns
                    mt = attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns
                    os.utime(p, ns=(at, mt))
            except OSError as exc:
                raise FUSEError(exc.errno) from None
            return self.attrs(inode)

        async def opendir(self, inode, ctx):
            if inode != pyfuse3.ROOT_INODE:
                raise FUSEError(errno.ENOTDIR)
            return inode

        async def readdir(self, fh, start_id, token):
            names = sorted(n for n in os.listdir(os.fsencode(backing)) if not n.startswith(TRASH))
            for i, name in enumerate(names):
                if i < start_id:
                    continue
                if not pyfuse3.readdir_reply(token, name, self.attrs(self.ino(name)), i + 1):
                    break

        async def releasedir(self, fh):
            return None

        async def fsyncdir(self, fh, datasync):
            if self.off:
                raise FUSEError(errno.EIO)
            fd = os.open(backing, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self.commit_names()

        async def statfs(self, ctx):
            st = os.statvfs(backing)
            s = pyfuse3.StatvfsData()
            for k in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files"):
                setattr(s, k, getattr(st, k))
            s.f_ffree, s.f_favail, s.f_namemax = st.f_ffree, st.f_favail, st.f_namemax
            return s

        def _fh(self, fd: int, name: bytes) -> pyfuse3.FileInfo:
            fh = self.next_fh
            self.next_fh += 1
            self.fds[fh] = (fd, name)
            return pyfuse3.FileInfo(fh=fh, direct_io=True)

        async def open(self, inode, flags, ctx):
            name = self.names.get(inode)
            if name is None:
                raise FUSEError(errno.ENOENT)
            if name == CONTROL:
                return self._fh(-1, name)
            if self.off:
                raise FUSEError(errno.EIO)
            try:
                fd = os.open(self.path(name), flags & ~os.O_CREAT)
            except OSError as exc:
                raise FUSEError(exc.errno) from None
            if flags & os.O_TRUNC:
                self.unsynced.pop(name, None)  # (made empty, durably: see powercut)
            return self._fh(fd, name)

        async def create(self, parent_inode, name, mode, flags, ctx):
            if parent_inode != pyfuse3.ROOT_INODE or name == CONTROL:
                raise FUSEError(errno.EACCES)
            if self.off:
                raise FUSEError(errno.EIO)
            existed = os.path.lexists(self.path(name))
            try:
                fd = os.open(self.path(name), flags | os.O_CREAT | os.O_TRUNC, mode)
            except OSError as exc:
                raise FUSEError(exc.errno) from None
            self.unsynced.pop(name, None)  # (made empty, durably: see powercut)
            if not existed:
                self.journal.append(("create", name))
            return self._fh(fd, name), self.attrs(self.ino(name))

        async def read(self, fh, off, size):
            fd, name = self.fds[fh]
            if name == CONTROL:
                said = (
                    f"{self.mode} {self.glob} failed={self.failed} "
                    f"slowsync={self.sync_delay * 1000:.0f} syncing={self.syncing} "
                    f"power={'off' if self.off else 'on'} "
                    f"cut={self.last_cut}\n"
                )
                return said.encode()[off : off + size]
            if self.fails(name, "r"):
                raise FUSEError(errno.EIO)
            return os.pread(fd, size, off)

        async def write(self, fh, off, buf):
            fd, name = self.fds[fh]
            if name == CONTROL:
                words = buf.decode().split()
                if not words or words[0] == "none":
                    self.mode, self.glob = "none", ""
                elif words[0] == "eio" and len(words) == 3 and words[1] in ("r", "w", "rw"):
                    self.mode, self.glob = words[1], words[2]
                elif words[0] == "slowsync" and len(words) == 2 and words[1].isdigit():
                    self.sync_delay = int(words[1]) / 1000
                elif words[0] == "powercut" and len(words) == 2 and words[1].isdigit():
                    self.last_cut = self.power_cut(int(words[1]))
                    self.off = True
                elif words == ["poweron"]:
                    self.off = False
                else:
                    raise FUSEError(errno.EINVAL)
                return len(buf)
            if self.fails(name, "w"):
                raise FUSEError(errno.EIO)
            self.remember(name, fd, off, buf)
            return os.pwrite(fd, buf, off)

        async def fsync(self, fh, datasync):
            fd, name = self.fds[fh]
            if name == CONTROL:
                return
            if self.fails(name, "w"):
                raise FUSEError(errno.EIO)
            u = self.unsynced.get(name)
            before = len(u.changes) if u is not None else 0
            if self.sync_delay:
                self.syncing += 1
                try:
                    await trio.sleep(self.sync_delay)
                finally:
                    self.syncing -= 1
                if fh not in self.fds or self.off:  # its caller stopped, killed, cut off
                    raise FUSEError(errno.EIO)
            (os.fdatasync if datasync else os.fsync)(fd)
            # durable now: what was written before it was called (later writes, while it
            # was slowed, are not)
            if u is not None and self.unsynced.get(name) is u:
                del u.changes[:before]
                if not u.changes:
                    del self.unsynced[name]

        async def flush(self, fh):
            return None

        async def release(self, fh):
            fd, _ = self.fds.pop(fh)
            if fd >= 0:
                os.close(fd)

        async def unlink(self, parent_inode, name, ctx):
            if self.off:
                raise FUSEError(errno.EIO)
            if name.startswith(TRASH) or not os.path.lexists(self.path(name)):
                raise FUSEError(errno.ENOENT)
            try:
                self.journal.append(("unlink", name, self.to_trash(name)))
            except OSError as exc:
                raise FUSEError(exc.errno) from None

        async def rename(self, parent_old, name_old, parent_new, name_new, flags, ctx):
            if flags:
                raise FUSEError(errno.EINVAL)
            if self.off:
                raise FUSEError(errno.EIO)
            if TRASH in (name_old[: len(TRASH)], name_new[: len(TRASH)]):
                raise FUSEError(errno.ENOENT)
            if not os.path.lexists(self.path(name_old)):
                raise FUSEError(errno.ENOENT)
            if name_old == name_new:
                return
            try:
                trash = self.to_trash(name_new) if os.path.lexists(self.path(name_new)) else None
                self.move(name_old, name_new)
            except OSError as exc:
                raise FUSEError(exc.errno) from None
            self.journal.append(("rename", name_old, name_new, trash))

        async def forget(self, inode_list):
            return None

    opts = set(pyfuse3.default_options)
    opts.discard("default_permissions")
    opts |= {f"fsname=rfaultfs-{owner}", "allow_other"}
    pyfuse3.init(FaultFS(), mountpoint, opts)
    print("mounted", flush=True)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
