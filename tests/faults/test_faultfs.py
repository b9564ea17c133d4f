"""The failing disk's power cut (tests.faults.faultfs): what was synced survives it, what was
not is lost in part or whole, sector by sector, and nothing else changes. The fault
campaign's ``power_cut`` trusts this to tell a missing fsync in the product from a sound
recovery."""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

import pytest

from replengine.storage.durable import fsync_dir
from tests.faults import faultfs

SECTOR = faultfs.SECTOR


pytestmark = pytest.mark.skipif(
    faultfs.unavailable() is not None, reason=str(faultfs.unavailable())
)


@pytest.fixture
def disk(tmp_path: Path):
    with faultfs.disk_in(tmp_path) as mnt:
        yield Path(mnt)


def write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(path.parent)


def cut(mnt: Path, seed: int) -> dict[str, str]:
    """Power cut (and the power back); what it kept of each file, e.g. {"a": "ordered 2/5"}."""
    said = faultfs.command(mnt, f"powercut {seed}").split("cut=")[1].strip()
    faultfs.command(mnt, "poweron")
    if said == "nothing-unsynced":
        return {}
    return dict(part.split(":", 1) for part in said.split(","))


def test_synced_bytes_survive_and_unsynced_sectors_are_old_or_new(disk: Path) -> None:
    """Over many cuts every kind happens: all lost, a torn prefix kept, any sectors kept;
    each sector ends as it was synced or as one of the writes since left it, and a file
    synced after its writes loses nothing."""
    rng = random.Random(7)
    seen = set()
    for seed in range(24):
        synced = rng.randbytes(16 * SECTOR)
        write_durably(disk / "a", synced)
        write_durably(disk / "b", b"x")
        fd = os.open(disk / "a", os.O_RDWR)
        fdb = os.open(disk / "b", os.O_RDWR)
        writes = []
        try:
            for _ in range(rng.randint(1, 6)):
                off = rng.randrange(0, 20) * SECTOR  # some past the synced end
                data = rng.randbytes(rng.randint(1, 3) * SECTOR)
                os.pwrite(fd, data, off)
                writes.append((off, data))
            os.pwrite(fdb, b"durable", 0)
            os.fdatasync(fdb)
        finally:
            os.close(fd)
            os.close(fdb)
        kept = cut(disk, seed)
        assert set(kept) == {"a"}, kept  # b was synced: nothing of it to lose
        assert (disk / "b").read_bytes() == b"durable"
        how = kept["a"].split()[0]
        seen.add(how)
        after = (disk / "a").read_bytes()
        if how == "lost":
            assert after == synced
            continue
        for s in range(0, max(len(after), len(synced)), SECTOR):
            got = after[s : s + SECTOR]
            # past the synced end: a hole where a later sector was kept and this one not
            could = [synced[s : s + SECTOR]] if s < len(synced) else [bytes(len(got))]
            could += [d[s - o : s - o + SECTOR] for o, d in writes if o <= s < o + len(d)]
            assert got in could, f"seed {seed} ({kept['a']}): sector {s // SECTOR}"
        assert len(after) >= len(synced)
    assert seen == {"lost", "ordered", "reordered"}, seen


def test_a_name_is_durable_once_its_directory_is_synced(disk: Path) -> None:
    """The product's atomic file: a new file written and fsynced, renamed over the old one,
    the directory fsynced. Leave a step out and a cut shows it: without the file's fsync
    its bytes may be gone under the new name; without the directory's, the old file may be
    back, a new one missing, a removed one there again."""
    seen: dict[str, set] = {"both": set(), "no file sync": set(), "no dir sync": set()}
    created, removed = set(), set()
    for seed in range(16):
        for how, outcomes in seen.items():
            write_durably(disk / "marker", b"old")
            with open(disk / "marker.tmp", "wb") as f:
                f.write(b"new contents")
                f.flush()
                if how != "no file sync":
                    os.fsync(f.fileno())
            os.rename(disk / "marker.tmp", disk / "marker")
            if how != "no dir sync":
                fsync_dir(disk)
            cut(disk, seed)
            outcomes.add((disk / "marker").read_bytes())
            (disk / "marker.tmp").unlink(missing_ok=True)
        write_durably(disk / "kept", b"z")  # (the directory synced after it: there)
        with open(disk / "new", "wb") as f:
            f.write(b"y")
            f.flush()
            os.fsync(f.fileno())
        (disk / "kept").unlink()
        cut(disk, seed)
        created.add((disk / "new").exists())
        removed.add((disk / "kept").exists())
        for name in ("new", "kept"):
            (disk / name).unlink(missing_ok=True)
        fsync_dir(disk)
    assert seen["both"] == {b"new contents"}, seen
    assert b"old" in seen["no dir sync"], seen  # the rename undone
    assert seen["no file sync"] - {b"new contents"}, seen  # its bytes lost
    assert created == {True, False} and removed == {True, False}


def test_without_power_every_call_fails_until_it_is_back(disk: Path) -> None:
    """Between the cut and ``poweron`` the killed writer's calls under way, and any other,
    fail: none of them reaches the files after the cut."""
    write_durably(disk / "a", b"before")
    faultfs.command(disk, "powercut 3")
    for call in (
        lambda: (disk / "a").read_bytes(),
        lambda: (disk / "a").write_bytes(b"after"),
        lambda: (disk / "new").write_bytes(b"after"),
        lambda: os.rename(disk / "a", disk / "b"),
        lambda: os.unlink(disk / "a"),
    ):
        with pytest.raises(OSError):
            call()
    faultfs.command(disk, "poweron")
    assert (disk / "a").read_bytes() == b"before"
    assert not (disk / "new").exists() and not (disk / "b").exists()


def test_bad_commands_are_refused_and_change_nothing(disk: Path) -> None:
    write_durably(disk / "a", b"")
    (disk / "a").write_bytes(b"unsynced")
    for bad in ("powercut", "powercut soon", "powercut 1 2"):
        with pytest.raises(OSError):
            faultfs.command(disk, bad)
    assert (disk / "a").read_bytes() == b"unsynced"
    assert set(cut(disk, 1)) == {"a"}  # still remembered: the refused ones did nothing


def test_a_slowed_sync_makes_durable_only_what_was_written_before_it(disk: Path) -> None:
    """``slowsync``: writes go on while an fsync waits; the fsync covers what came before
    it was called, and a power cut may still take what came during it."""
    first, second = b"A" * SECTOR, b"B" * SECTOR
    seen = set()
    for seed in range(12):
        faultfs.command(disk, "slowsync 100")
        fd = os.open(disk / f"a{seed}", os.O_RDWR | os.O_CREAT)
        fsync_dir(disk)
        try:
            os.pwrite(fd, first, 0)
            syncing = threading.Thread(target=os.fsync, args=(fd,))
            syncing.start()
            while "syncing=1" not in (disk / ".fault").read_text():
                time.sleep(0.005)  # (polled: nothing signals an fsync under way)
            os.pwrite(fd, second, SECTOR)
            syncing.join()
        finally:
            os.close(fd)
        faultfs.command(disk, "slowsync 0")
        kept = cut(disk, seed)
        assert kept.keys() == {f"a{seed}"}, kept
        assert kept[f"a{seed}"].endswith("/1"), kept  # the second write only
        after = (disk / f"a{seed}").read_bytes()
        assert after[:SECTOR] == first
        seen.add(after[SECTOR:])
    assert seen == {b"", second}, seen  # lost in some cuts, kept in others


def test_a_file_written_after_its_rename_loses_only_its_unsynced_bytes(disk: Path) -> None:
    """Written through a descriptor opened before its rename: remembered under the new
    name, so the cut rolls back the right file (and a removed one is skipped)."""
    for seed in range(6):
        write_durably(disk / "before", b"A" * SECTOR)
        fd = os.open(disk / "before", os.O_RDWR)
        try:
            os.rename(disk / "before", disk / "after")
            fsync_dir(disk)
            os.pwrite(fd, b"B" * SECTOR, 0)  # not synced
        finally:
            os.close(fd)
        write_durably(disk / "removed", b"C")
        fd = os.open(disk / "removed", os.O_RDWR)
        try:
            (disk / "removed").unlink()
            fsync_dir(disk)
            os.pwrite(fd, b"D", 0)  # to a file gone for good
        finally:
            os.close(fd)
        kept = cut(disk, seed)
        assert set(kept) == {"after"}, kept
        assert (disk / "after").read_bytes() in (b"A" * SECTOR, b"B" * SECTOR)
        assert not (disk / "before").exists() and not (disk / "removed").exists()
        (disk / "after").unlink()
        fsync_dir(disk)


def test_the_products_own_small_files_outlive_a_power_cut(disk: Path) -> None:
    """What the daemon and replctl make durably -- a new key file (`replctl keygen`, with
    and without --force), a dcm bitmap, a rewind marker -- is there after any cut, with its
    last contents. (A new key file's name was not synced before 8deae52: over these cuts it
    went missing.)"""
    from replengine.node.rewind import load_marker, write_marker
    from replengine.storage.dirtymap import DirtyMap
    from replengine.wire.security import generate, read_secret_key

    for seed in range(8):
        first = generate(disk / f"old{seed}.key")
        forced = generate(disk / f"old{seed}.key", force=True)
        dmap = DirtyMap.create(disk / f"dcm{seed}", volume_size=1 << 20, region_size=1 << 16)
        dmap.mark(0, 4096)
        dmap.flush()
        write_marker(disk / f"rewind{seed}", [(0, 8192)], 3)
        new = generate(disk / f"new{seed}.key")  # last: no later sync of the directory
        cut(disk, seed)
        assert read_secret_key(disk / f"old{seed}.key")[0].decode() == forced != first
        assert read_secret_key(disk / f"new{seed}.key")[0].decode() == new
        assert DirtyMap.open(disk / f"dcm{seed}").dirty_bytes == 1 << 16
        assert load_marker(disk / f"rewind{seed}") == [(0, 8192)]


def test_a_finished_rewinds_marker_stays_removed(disk: Path) -> None:
    """A rewind's marker says the volume is mixed; once the rewind ends it is removed, and a
    power cut must not bring it back: the node would come up inconsistent, owing the whole
    volume, as three of four did after a whole-cluster power cut in the fault campaign (seed
    10300 round 9), which then had no node it could promote. A plain unlink comes back over
    these cuts; remove_durably's does not."""
    from replengine.node.rewind import load_marker, write_marker
    from replengine.storage.durable import remove_durably

    back = 0
    for seed in range(8):
        plain, durable = disk / f"plain{seed}", disk / f"durable{seed}"
        write_marker(plain, [(0, 8192)], 3)
        write_marker(durable, [(0, 8192)], 3)
        remove_durably(durable)
        plain.unlink()  # after: the directory sync above does not cover it
        cut(disk, seed)
        assert load_marker(durable) is None
        back += load_marker(plain) is not None
    assert back > 0, "no cut brought a plain unlink back: the fault no longer tests this"
