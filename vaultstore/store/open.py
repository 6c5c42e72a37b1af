"""Turn a repository location into a :class:`Store`.

Accepted locations:

- a filesystem path (relative or absolute) or ``file:///absolute/path`` →
  :class:`~vaultstore.store.local.LocalStore`;
- ``s3://bucket`` or ``s3://bucket/prefix`` → :class:`~vaultstore.store.s3.S3Store`,
  configured by :class:`StoreOptions` (endpoint for S3-compatible services,
  region, checksum mode, multipart threshold, retries, addressing style).

The backends are imported on demand, so a local-only run never loads boto3.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Literal

from vaultstore.errors import MisuseError
from vaultstore.store.base import Store

ChecksumMode = Literal["when_required", "when_supported"]
AddressingStyle = Literal["auto", "path", "virtual"]

MiB = 1 << 20


@dataclass(frozen=True)
class StoreOptions:
    """How to talk to a remote destination (ignored by the local store).

    ``checksum`` is botocore's ``request_checksum_calculation`` and
    ``response_checksum_validation``: ``"when_required"`` (the default here)
    sends the CRC32 checksum headers only where S3 demands them, which many
    S3-compatible services need; ``"when_supported"`` sends them on every
    request, as AWS S3 itself accepts.

    ``max_attempts`` bounds every request, including the first; waits between
    attempts grow as ``backoff_base * 2**n`` capped at ``backoff_cap``, with full
    jitter. Real S3 needs ``part_size`` ≥ 5 MiB; tests use tiny values.
    """

    endpoint_url: str | None = None
    region: str | None = None
    checksum: ChecksumMode = "when_required"
    multipart_threshold: int = 64 * MiB
    part_size: int = 16 * MiB
    max_attempts: int = 5
    backoff_base: float = 0.25
    backoff_cap: float = 8.0
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    addressing_style: AddressingStyle = "auto"

    def __post_init__(self) -> None:
        if self.checksum not in ("when_required", "when_supported"):
            raise MisuseError(f"unknown checksum mode {self.checksum!r}")
        if self.addressing_style not in ("auto", "path", "virtual"):
            raise MisuseError(f"unknown addressing style {self.addressing_style!r}")
        if self.max_attempts < 1:
            raise MisuseError("max_attempts must be at least 1")
        if self.part_size < 1 or self.multipart_threshold < 1:
            raise MisuseError("part size and multipart threshold must be positive")


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` → ``("bucket", "some/prefix/")``.

    Raises:
        MisuseError: not an ``s3://`` URL or no bucket.
    """
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise MisuseError(f"not an S3 repository location: {url!r}")
    if parsed.query or parsed.fragment:
        raise MisuseError(f"unexpected query or fragment in {url!r}")
    prefix = parsed.path.strip("/")
    return parsed.netloc, (prefix + "/" if prefix else "")


def open_store(url: str, options: StoreOptions | None = None) -> Store:
    """The store for a repository location (a path, ``file://`` or ``s3://``).

    Raises:
        MisuseError: an empty location or an unsupported scheme.
    """
    if not url:
        raise MisuseError("no repository location given")
    options = options or StoreOptions()
    scheme = urllib.parse.urlsplit(url).scheme

    if scheme == "s3":
        from vaultstore.store.s3 import S3Store

        bucket, prefix = parse_s3_url(url)
        return S3Store(bucket, prefix, options)

    from vaultstore.store.local import LocalStore

    if scheme == "file":
        parsed = urllib.parse.urlsplit(url)
        if parsed.netloc not in ("", "localhost"):
            raise MisuseError(f"file:// location on another host: {url!r}")
        return LocalStore(urllib.parse.unquote(parsed.path))
    # One-letter schemes are Windows drive letters, not URLs.
    if scheme and len(scheme) > 1:
        raise MisuseError(f"unsupported repository location scheme {scheme!r}")
    return LocalStore(url)
