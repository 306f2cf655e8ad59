"""quotagate: refuse mail for full mailboxes during the SMTP transaction."""

from importlib.metadata import version

# From the installed package's metadata, so pyproject.toml holds the only copy of the number.
__version__ = version("quotagate")
