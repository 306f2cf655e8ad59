"""Configuration for the MTAs quotagate serves."""
