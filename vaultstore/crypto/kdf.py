"""Password-based key derivation: Argon2id with named profiles and floors.

A KDF block, stored in key files and seed envelopes, is the JSON object::

    {"name": "argon2id", "salt": "<base64, 16-64 bytes>",
     "params": {"memory_cost": <KiB>, "iterations": <t>, "lanes": <p>}}

Its canonical bytes (:meth:`KdfSpec.canonical`: sorted keys, no whitespace)
are the associated data of whatever the derived key seals, so editing any
parameter or the salt breaks authentication.

Profiles: ``production`` (64 MiB, t=3, p=4: the second RFC 9106 recommendation,
about 0.15 s on the reference machine) and ``test`` (tiny, only the CLI enables
it when ``VAULTSTORE_TESTING=1``). Each profile has a *floor*: a block whose
parameters fall below the floor of the profile the caller runs under is refused
before any KDF runs, so a downgraded file cannot make the password cheap to
guess. A *ceiling* bounds the work a hostile file can demand.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from vaultstore.errors import IntegrityError, MisuseError, UnsupportedVersionError

log = logging.getLogger(__name__)

KDF_NAME = "argon2id"
KEY_SIZE = 32
SALT_SIZE = 16
_SALT_RANGE = (16, 64)


@dataclass(frozen=True)
class KdfParams:
    """Argon2id cost parameters: memory in KiB, passes, parallel lanes."""

    memory_cost: int
    iterations: int
    lanes: int

    def below(self, floor: KdfParams) -> list[str]:
        """Names of the parameters that are lower than ``floor``'s."""
        return [
            f"{name} {getattr(self, name)} < {getattr(floor, name)}"
            for name in ("memory_cost", "iterations", "lanes")
            if getattr(self, name) < getattr(floor, name)
        ]


PROFILES: dict[str, KdfParams] = {
    "production": KdfParams(memory_cost=64 * 1024, iterations=3, lanes=4),
    "test": KdfParams(memory_cost=64, iterations=1, lanes=1),
}
FLOORS: dict[str, KdfParams] = {
    "production": KdfParams(memory_cost=64 * 1024, iterations=3, lanes=1),
    "test": KdfParams(memory_cost=8, iterations=1, lanes=1),
}
# No legitimate file asks for more; a hostile one must not exhaust the machine.
CEILING = KdfParams(memory_cost=4 * 1024 * 1024, iterations=64, lanes=64)


def profile_params(profile: str) -> KdfParams:
    """The parameters new files get under ``profile``."""
    if profile not in PROFILES:
        raise MisuseError(f"unknown KDF profile {profile!r}")
    return PROFILES[profile]


def profile_floor(profile: str) -> KdfParams:
    """The lowest parameters accepted when running under ``profile``."""
    if profile not in FLOORS:
        raise MisuseError(f"unknown KDF profile {profile!r}")
    return FLOORS[profile]


@dataclass(frozen=True)
class KdfSpec:
    """A KDF name, salt and parameters: everything needed to rederive a key."""

    salt: bytes
    params: KdfParams
    name: str = KDF_NAME

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in files."""
        return {
            "name": self.name,
            "salt": base64.b64encode(self.salt).decode("ascii"),
            "params": {
                "memory_cost": self.params.memory_cost,
                "iterations": self.params.iterations,
                "lanes": self.params.lanes,
            },
        }

    def canonical(self) -> bytes:
        """Canonical bytes of the block, used as associated data."""
        return canonical_json(self.to_dict())

    @classmethod
    def from_dict(cls, block: Any, what: str) -> KdfSpec:
        """Parse and bound-check a stored KDF block.

        Raises:
            UnsupportedVersionError: the KDF is not one this build knows.
            IntegrityError: the block is malformed or asks for absurd work.
        """
        if not isinstance(block, dict) or set(block) != {"name", "salt", "params"}:
            raise IntegrityError(f"{what}: malformed KDF block")
        if block["name"] != KDF_NAME:
            raise UnsupportedVersionError(f"{what}: unsupported KDF {block['name']!r}")
        salt = decode_b64(block["salt"], f"{what}: KDF salt")
        if not _SALT_RANGE[0] <= len(salt) <= _SALT_RANGE[1]:
            raise IntegrityError(f"{what}: KDF salt has {len(salt)} bytes")
        params = _parse_params(block["params"], what)
        return cls(salt=salt, params=params)

    def check_floor(self, floor_profile: str, what: str) -> None:
        """Refuse parameters below the floor or above the ceiling.

        Raises:
            IntegrityError: a parameter is outside the accepted range.
        """
        low = self.params.below(profile_floor(floor_profile))
        if low:
            raise IntegrityError(
                f"{what}: KDF parameters below the accepted floor ({', '.join(low)})"
            )
        high = CEILING.below(self.params)
        if high or self.params.memory_cost < 8 * self.params.lanes:
            raise IntegrityError(f"{what}: KDF parameters outside the accepted range")


def new_spec(profile: str) -> KdfSpec:
    """A fresh random salt with the parameters of ``profile``."""
    return KdfSpec(salt=os.urandom(SALT_SIZE), params=profile_params(profile))


def derive(spec: KdfSpec, password: str) -> bytes:
    """Run the KDF: 32 bytes from the UTF-8 password under ``spec``."""
    kdf = Argon2id(
        salt=spec.salt,
        length=KEY_SIZE,
        iterations=spec.params.iterations,
        lanes=spec.params.lanes,
        memory_cost=spec.params.memory_cost,
    )
    log.debug(
        "argon2id m=%d t=%d p=%d",
        spec.params.memory_cost,
        spec.params.iterations,
        spec.params.lanes,
        extra={"event": "kdf.derive"},
    )
    return kdf.derive(password.encode("utf-8"))


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no whitespace, ASCII: the bytes every MAC and AD covers."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode("ascii")


def decode_b64(value: Any, what: str) -> bytes:
    """Strict standard base64 of a stored field.

    Raises:
        IntegrityError: not a string of valid base64.
    """
    if not isinstance(value, str):
        raise IntegrityError(f"{what} is not a base64 string")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise IntegrityError(f"{what} is not valid base64") from exc


def _parse_params(params: Any, what: str) -> KdfParams:
    names = ("memory_cost", "iterations", "lanes")
    if not isinstance(params, dict) or set(params) != set(names):
        raise IntegrityError(f"{what}: malformed KDF parameters")
    values = [params[name] for name in names]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise IntegrityError(f"{what}: KDF parameters must be integers")
    return KdfParams(*values)
