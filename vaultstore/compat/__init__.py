"""The legacy wallet-backup JSON format (compat/FORMAT.md)."""
