"""Purpose keys derived from a master key with HKDF-SHA256.

Each use gets its own key (distinct ``info`` strings), so a key leaked from one
use opens nothing else, and no key is ever used for two algorithms.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MASTER_KEY_SIZE = 32


def derive_key(master_key: bytes, purpose: str, length: int = 32) -> bytes:
    """HKDF-SHA256(master_key, info="vaultstore/" + purpose)."""
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=length,
        salt=None,
        info=b"vaultstore/" + purpose.encode("ascii"),
    )
    return hkdf.derive(master_key)


@dataclass(frozen=True)
class RepoKeys:
    """The purpose keys of one repository."""

    record_id: bytes  # BLAKE3 key for record ids
    object_id: bytes  # BLAKE3 key for object ids
    seal: bytes  # AES-256-GCM key for objects (batches, leaves, nodes, change sets)
    manifest_mac: bytes  # HMAC-SHA256 key over stored manifest bytes
    manifest_seal: bytes  # AES-256-GCM key for manifest bodies

    @classmethod
    def from_master(cls, master_key: bytes) -> RepoKeys:
        """Derive every purpose key from the repository master key."""
        if len(master_key) != MASTER_KEY_SIZE:
            raise ValueError("master key must be 32 bytes")
        return cls(
            record_id=derive_key(master_key, "record-id"),
            object_id=derive_key(master_key, "object-id"),
            seal=derive_key(master_key, "object-seal"),
            manifest_mac=derive_key(master_key, "manifest-mac"),
            manifest_seal=derive_key(master_key, "manifest-seal"),
        )
