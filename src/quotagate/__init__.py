"""quotagate: refuse mail for full mailboxes during the SMTP transaction."""

__version__ = "0.1.0"
