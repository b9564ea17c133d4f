"""Child process for test_srl_crash: append forever, acknowledge each durable append.

Usage: python3 srl_crash_child.py SRL_PATH SEED WRITERS

Each writer thread appends records of random size and, only after ``append`` returned, writes
one line ``ack LSN OFFSET LENGTH SHA256`` to stdout; after a clear it writes ``clear LSN``.
The parent kills it with SIGKILL at a random moment and checks every acknowledged record.
Lines are written with a single os.write each, so threads never interleave within a line.
"""

from __future__ import annotations

import hashlib
import os
import random
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from replengine.errors import SRLFullError  # noqa: E402
from replengine.log.srl import SRL  # noqa: E402


def say(line: str) -> None:
    os.write(1, (line + "\n").encode())


def main() -> None:
    path, seed, writers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    srl = SRL.open(path)
    clear_lock = threading.Lock()

    def clear() -> None:
        """Keep the small SRL from filling: clear all but the last few records."""
        with clear_lock:
            new_start = srl.end_lsn - 4
            if new_start > srl.start_lsn:
                srl.advance_start(new_start)
                say(f"clear {new_start}")

    def writer(t: int) -> None:
        rng = random.Random(seed * 1000 + t)
        while True:
            data = rng.randbytes(rng.choice([0, 1, 100, 4032, 4033, 9000, 30_000, 70_000]))
            offset = rng.randrange(0, 1 << 30, 512)
            try:
                lsn = srl.append(1, offset, data)
            except SRLFullError:
                clear()
                continue
            say(f"ack {lsn} {offset} {len(data)} {hashlib.sha256(data).hexdigest()}")
            if srl.free_bytes < srl.capacity // 3:
                clear()

    say("ready")
    threads = [threading.Thread(target=writer, args=(t,), daemon=True) for t in range(writers)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()


if __name__ == "__main__":
    main()
