"""Measuring mailboxes on disk: Maildir, Maildir++ and mbox."""
