"""vaultstore: backup and disaster recovery for AI-agent wallet fleets."""

__version__ = "0.1.0"
__all__ = ["__version__"]
