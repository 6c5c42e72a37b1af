"""Manifests: one per snapshot, the commit point, stored at ``snapshots/<seq:010d>``.

Byte layout (version 1)::

    b"VSMANIF" ‖ version u8 ‖ seq u64 BE           plaintext header, 16 bytes
    SHA-256(canonical body)                          32 bytes
    sealed body                                      nonce ‖ ciphertext ‖ tag
    HMAC-SHA256(manifest MAC key, everything above)  32 bytes

The body is canonical msgpack of a map with the keys of :class:`Manifest`
(fixed order), sealed with AES-256-GCM under the manifest seal key with
associated data ``repository id ‖ b"manifest" ‖ seq``. The HMAC is checked
first (an edited manifest, even with a recomputed SHA-256, fails it), then the
body is opened, its SHA-256 compared, and the header seq matched with the body
and the store name. The snapshot id is the hex of the body's SHA-256; parents
are named by it.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import asdict, dataclass, field
from typing import Any

import msgpack

from vaultstore.crypto.aead import Sealer
from vaultstore.crypto.purpose import RepoKeys
from vaultstore.errors import IntegrityError, UnsupportedVersionError

MAGIC = b"VSMANIF"
VERSION = 1
HEADER = struct.Struct(">7sBQ")
MAC_SIZE = 32
SHA_SIZE = 32

FULL = "full"
INCREMENTAL = "incremental"


def manifest_name(seq: int) -> str:
    return f"snapshots/{seq:010d}"


def seq_from_name(name: str) -> int | None:
    tail = name.rsplit("/", 1)[-1]
    return int(tail) if name.startswith("snapshots/") and tail.isdigit() else None


@dataclass
class Manifest:
    """A snapshot's manifest (the decoded, verified body)."""

    type: str
    time_ms: int
    host: str
    seq: int
    lsn_start: int
    lsn_end: int
    parent: str | None  # snapshot id (hex SHA-256 of the parent's body)
    root: bytes | None  # full: root object id
    changes: list[bytes]  # incremental: change-set object ids
    agents: int
    records_added: int
    digest_before: bytes
    digest_after: bytes
    seed_envelope: dict[str, Any]
    bytes_added: int
    # The vault that took the snapshot (hex). Several vaults may share one
    # repository; each chains its snapshots on its own previous one.
    vault: str = ""
    # Live agents by lifecycle state ("none": no lifecycle record) at lsn_end,
    # as the journal counted them. A restore takes its counts from here
    # instead of reading every record's lifecycle. Manifests written before
    # this field existed carry None, and a restore then counts.
    states: dict[str, int] | None = None
    id: str = field(default="", compare=False)
    stored_size: int = field(default=0, compare=False)

    def body(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("id")
        data.pop("stored_size")
        data["version"] = VERSION
        return data

    def summary(self) -> dict[str, Any]:
        """JSON-friendly description for listings."""
        return {
            "id": self.id,
            "type": self.type,
            "time_ms": self.time_ms,
            "host": self.host,
            "vault": self.vault,
            "sequence": self.seq,
            "parent": self.parent,
            "lsn_start": self.lsn_start,
            "lsn_end": self.lsn_end,
            "agents": self.agents,
            "records_added": self.records_added,
            "bytes": self.bytes_added,
        }


class ManifestCodec:
    """Encodes and verifies manifests of one repository."""

    def __init__(self, repo_id: bytes, keys: RepoKeys) -> None:
        self.repo_id = repo_id
        self._mac_key = keys.manifest_mac
        self._sealer = Sealer(keys.manifest_seal)

    def _ad(self, seq: int) -> bytes:
        return self.repo_id + b"manifest" + struct.pack(">Q", seq)

    def encode(self, manifest: Manifest) -> bytes:
        """Stored bytes; sets ``manifest.id``."""
        body = msgpack.packb(manifest.body(), use_bin_type=True)
        sha = hashlib.sha256(body).digest()
        signed = (
            HEADER.pack(MAGIC, VERSION, manifest.seq)
            + sha
            + self._sealer.seal(body, self._ad(manifest.seq))
        )
        manifest.id = sha.hex()
        data = signed + hmac.new(self._mac_key, signed, hashlib.sha256).digest()
        manifest.stored_size = len(data)
        return data

    def decode(self, data: bytes, name: str) -> Manifest:
        """Verify and decode stored bytes read from ``name``.

        Raises:
            IntegrityError: MAC, seal, digest, seq or structure is wrong.
            UnsupportedVersionError: an unknown format version.
        """
        if len(data) < HEADER.size + SHA_SIZE + MAC_SIZE:
            raise IntegrityError(f"manifest {name} is truncated")
        magic, version, seq = HEADER.unpack(data[: HEADER.size])
        if magic != MAGIC:
            raise IntegrityError(f"manifest {name} has a bad magic")
        if version != VERSION:
            raise UnsupportedVersionError(
                f"manifest {name} has format version {version}"
            )
        signed, mac = data[:-MAC_SIZE], data[-MAC_SIZE:]
        expect = hmac.new(self._mac_key, signed, hashlib.sha256).digest()
        if not hmac.compare_digest(mac, expect):
            raise IntegrityError(
                f"manifest {name} failed its MAC (tampered or corrupt)"
            )
        sha = signed[HEADER.size : HEADER.size + SHA_SIZE]
        body = self._sealer.open(
            signed[HEADER.size + SHA_SIZE :], self._ad(seq), f"manifest {name}"
        )
        if hashlib.sha256(body).digest() != sha:
            raise IntegrityError(f"manifest {name} body does not match its SHA-256")
        manifest = _from_body(body, name)
        if manifest.seq != seq or seq_from_name(name) != seq:
            raise IntegrityError(f"manifest {name} sequence does not match its name")
        manifest.id = sha.hex()
        manifest.stored_size = len(data)
        return manifest


_FIELDS = (
    "type",
    "time_ms",
    "host",
    "seq",
    "lsn_start",
    "lsn_end",
    "parent",
    "root",
    "changes",
    "agents",
    "records_added",
    "digest_before",
    "digest_after",
    "seed_envelope",
    "bytes_added",
    "vault",
)


def _check_states(manifest: Manifest) -> None:
    """Raise TypeError unless ``states`` is absent or counts ``agents`` exactly."""
    states = manifest.states
    if states is None:
        return
    if (
        type(states) is not dict
        or not all(type(k) is str for k in states)
        or not all(type(v) is int and v > 0 for v in states.values())
        or sum(states.values()) != manifest.agents
    ):
        raise TypeError("states do not count the agents")


def _from_body(body: bytes, name: str) -> Manifest:
    try:
        data = msgpack.unpackb(body, raw=False, strict_map_key=False)
        if not isinstance(data, dict):
            raise TypeError("not a map")
        if data.get("version") != VERSION:
            raise UnsupportedVersionError(
                f"manifest {name} body has an unknown version"
            )
        # Manifests written before vault identities existed carry none.
        fields = {k: data[k] for k in _FIELDS if k != "vault"}
        manifest = Manifest(
            **fields, vault=data.get("vault", ""), states=data.get("states")
        )
        if not isinstance(manifest.vault, str):
            raise TypeError("vault is not a string")
        _check_states(manifest)
    except (ValueError, TypeError, KeyError, msgpack.ExtraData) as exc:
        raise IntegrityError(f"manifest {name} body is malformed") from exc
    if manifest.type not in (FULL, INCREMENTAL) or (
        manifest.type == FULL and not isinstance(manifest.root, bytes)
    ):
        raise IntegrityError(f"manifest {name} body is inconsistent")
    return manifest
