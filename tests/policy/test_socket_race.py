"""The policy daemon's unix socket in a directory another user owns, as the README advises for a
chrooted Postfix smtpd: `listen = ["unix:/var/spool/postfix/private/quotagate"]`, where
`private/` belongs to the postfix user, who can swap any name in it between two system calls."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest

from quotagate.config import parse_config
from quotagate.errors import StartupError
from quotagate.policy.listeners import bind_listeners, close_all
from tests.servers.install import unavailable

NOBODY = 65534  # stands for the postfix user, owner of /var/spool/postfix/private
ATTEMPTS = 3000  # daemon starts; the code that set the mode by path lost within about a hundred
SECONDS = 6.0  # and never longer than this (3000 starts take about 4 s)

SWAP_C = r"""
#include <sys/inotify.h>
#include <unistd.h>
#include <stdio.h>
#include <string.h>
/* swap DIR NAME TARGET: whenever DIR/NAME is created, rename a symlink to TARGET over it */
int main(int argc, char **argv) {
    char path[4096], lnk[4096], buf[65536];
    if (argc != 4) return 2;
    snprintf(path, sizeof path, "%s/%s", argv[1], argv[2]);
    snprintf(lnk, sizeof lnk, "%s/.swap", argv[1]);
    int fd = inotify_init();
    if (fd < 0 || inotify_add_watch(fd, argv[1], IN_CREATE) < 0) return 1;
    symlink(argv[3], lnk);
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n <= 0) return 1;
        for (char *p = buf; p < buf + n;) {
            struct inotify_event *e = (struct inotify_event *)p;
            if (e->len && strcmp(e->name, argv[2]) == 0) {
                rename(lnk, path);
                symlink(argv[3], lnk);
            }
            p += sizeof(struct inotify_event) + e->len;
        }
    }
}
"""


@pytest.mark.slow
def attackers_ground(short_tmp: Path) -> tuple[Path, Path]:
    """The swapping attacker built (its program, run as nobody), and ``private``, a directory of
    its own under ``short_tmp`` (every level of which it can traverse)."""
    if shutil.which("gcc") is None or shutil.which("runuser") is None:
        unavailable("needs gcc to build the attacker, and runuser to run it as another user")
    short_tmp.chmod(0o755)
    swap = short_tmp / "swap"
    (short_tmp / "swap.c").write_text(SWAP_C)
    subprocess.run(["gcc", "-O2", "-o", str(swap), str(short_tmp / "swap.c")], check=True, timeout=60)
    swap.chmod(0o755)
    private = short_tmp / "private"
    private.mkdir(mode=0o700)
    os.chown(private, NOBODY, NOBODY)
    return swap, private


@pytest.mark.skipif(os.geteuid() != 0, reason="the directory must belong to another user")
def test_the_socket_mode_and_group_are_never_set_on_what_the_directory_owner_swaps_in(short_tmp: Path) -> None:
    """Scenario: `listen = ["unix:.../private/quotagate"]` with `socket_group` set, the directory
    owned by the postfix user (here: nobody), as README's "Who may ask the daemon" advises for
    a chrooted smtpd. That user watches the directory with inotify and, as soon as the daemon's
    socket appears, renames a symlink to a root-only file over it. The daemon (root) starts,
    is stopped, starts again (upgrades, reboots, Restart=on-failure), up to 3000 times.
    Expected: the root-only file keeps its mode and group at every start: the socket's mode and
    group are set on the socket the daemon bound, never by a path the directory's owner can
    redirect (a chmod and chown after the bind lost this race within a hundred starts or so,
    giving e.g. /etc/shadow mode 0660 and the postfix group). Each start still leaves a socket
    with that mode and group at the path, or fails because the owner's symlink is in the way."""
    swap, private = attackers_ground(short_tmp)
    victim = short_tmp / "shadow"  # a stand-in for /etc/shadow
    victim.write_text("root:$y$secret:19000:0:99999:7:::\n")
    victim.chmod(0o600)
    socket_path = private / "quotagate"
    policy = parse_config(
        {"policy": {"listen": [f"unix:{socket_path}"], "socket_mode": "0660", "socket_group": "nogroup"}}
    ).policy
    nogroup = 65534

    attacker = subprocess.Popen(
        ["runuser", "-u", "nobody", "--", str(swap), str(private), "quotagate", str(victim)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.3)
        assert attacker.poll() is None, "the attacker did not start"
        changed = None
        sockets = swapped = starts = 0
        deadline = time.monotonic() + SECONDS
        while starts < ATTEMPTS and time.monotonic() < deadline:
            starts += 1
            # One start of the daemon, then its stop; one that finds a symlink in its way fails.
            with contextlib.suppress(StartupError):
                listeners = bind_listeners(policy)
                try:
                    st = socket_path.lstat()
                    if stat.S_ISSOCK(st.st_mode):  # not swapped yet: the socket as the MTA finds it
                        assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o660, nogroup)
                        sockets += 1
                    swapped += stat.S_ISLNK(st.st_mode)
                finally:
                    close_all(listeners)
            with contextlib.suppress(FileNotFoundError):
                socket_path.unlink()  # the admin clears the way for the next start
            st = victim.stat()
            if stat.S_IMODE(st.st_mode) != 0o600 or st.st_gid != 0:
                changed = (starts, oct(st.st_mode), st.st_gid)
                break
        assert changed is None, f"the root-only file was changed (start, mode, gid): {changed}"
        assert attacker.poll() is None, "the attacker stopped: nothing was raced"
        print(f"{starts} starts, {sockets} sockets found, {swapped} swapped")
        assert swapped, "the attacker never swapped the socket: nothing was raced"
    finally:
        attacker.terminate()
        attacker.wait(timeout=10)
