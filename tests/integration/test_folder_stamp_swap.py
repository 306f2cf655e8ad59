"""An incremental scan reuses a folder's stored usage when its stamp is unchanged. File systems
keep ctimes at the kernel's coarse clock (a jiffy: most directories made one after the other
share their ctime to the nanosecond), so the ctimes of cur/ and new/ alone can be made equal for
two folders, and a full folder renamed over an empty one would be reused as empty by every
incremental scan until a ``--full`` one: the stamp also names their inodes."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from quotagate.model import Limits, State
from tests.integration.scanenv import Env
from tests.spoolgen import add_message, maildir_folder
from tests.usagefs import folder_stamp


def _same_stamps(folders: list[Path]) -> bool:
    """Touch each folder's cur/ and new/ within one clock tick; True when their stamps match."""
    for _ in range(200):
        for f in folders:
            for sub in ("cur", "new"):
                p = f / sub / ".t"
                p.touch()
                p.unlink()
        times = [folder_stamp(f)[:2] for f in folders]  # the ctimes of cur/ and new/
        if len(set(times)) == 1 and len(set(times[0])) == 1:
            return True
        time.sleep(0.001)
    return False


def test_a_full_folder_renamed_over_an_empty_one_with_the_same_stamp_is_counted(env: Env) -> None:
    """Attack: alice (limit 1000) keeps 5000 bytes in ``.Big`` and has an empty ``.Empty``; she
    makes their cur/ and new/ ctimes equal, waits for a scan, then removes ``.Empty`` and
    renames ``.Big`` to ``.Empty``. Expected: the next (incremental) scan counts her 5000
    bytes; the root changed, so the folders are looked at, and ``.Empty`` is not the directory
    measured under that name before: the stamp names the inodes of cur/ and new/."""
    env.configure(scan={"workers": 1, "racy_seconds": 0})
    root = env.maildir("alice")
    add_message(maildir_folder(root), 100)
    big = Path(os.fsdecode(maildir_folder(root, "Big")))
    add_message(big, 5000)
    empty = Path(os.fsdecode(maildir_folder(root, "Empty")))
    address = env.add("alice", Limits(1000))
    assert _same_stamps([big, empty]), "could not get equal ctimes (a file system with fine-grained times?)"

    first = env.scan(full=True).readings[address]
    assert (first.state, first.bytes) == (State.OVER, 5100)

    shutil.rmtree(empty)
    os.rename(big, empty)  # cur/ and new/ keep their ctimes: the stamp stored for "Empty"
    second = env.scan().readings[address]
    assert (second.state, second.bytes) == (State.OVER, 5100), (
        f"incremental scan: {second.state.value} at {second.bytes} bytes, warning {second.usage.warning!r}"
    )
