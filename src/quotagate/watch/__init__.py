"""Keeping usage fresh between scans: file-system events, polling, and delivery hints."""
