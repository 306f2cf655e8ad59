"""quotagate: refuse mail for full mailboxes during the SMTP transaction."""

from __future__ import annotations


def __getattr__(name: str) -> str:
    """``__version__`` from the installed package's metadata, so pyproject.toml holds the only copy
    of the number; read on demand, since importlib.metadata costs every command ~40 ms to import."""
    if name == "__version__":
        from importlib.metadata import version

        return version("quotagate")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
