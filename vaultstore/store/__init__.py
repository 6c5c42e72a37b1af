"""Repository destinations: one small protocol, a local and an S3 implementation."""
