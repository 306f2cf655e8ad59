"""quotagate: refuse mail for full mailboxes during the SMTP transaction."""

# The only copy of the number: pyproject.toml builds the package metadata from it, and
# ``quotagate --version`` prints it without importing importlib.metadata (~40 ms a process).
__version__ = "0.1.0"
