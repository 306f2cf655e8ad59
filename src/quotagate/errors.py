"""The one base class of the failures an admin can act on.

A :class:`QuotagateError` reaches the admin as one line on stderr and exit status 2 (see
:func:`quotagate.cli.main`): its message says what went wrong and, where it can, what to do.
Anything else escaping a command is a bug and keeps its traceback.
"""

from __future__ import annotations


class QuotagateError(Exception):
    """A failure the admin can act on: a bad config, a store that cannot be used, a daemon that cannot start."""


class StartupError(QuotagateError):
    """``serve`` or ``watch`` cannot start: a port in use, a socket that cannot be created, an unknown group."""


def one_line(message: str) -> str:
    """``message`` on one line: drivers (psycopg) add hints on lines of their own."""
    return " ".join(message.split())
