"""The vault: local state of one installation — journal, key file, sealed seed.

Layout (``docs/architecture.md``; directory 0700, files 0600)::

    vault/
      journal.db    the journal; its meta holds the two seed values below
      keyfile       a ``vaultstore-keyfile`` (crypto/keyfile.py) wrapping a
                    random 32-byte vault master key under the password

Journal meta written here:

``seed``
    The mnemonic (UTF-8), sealed with AES-256-GCM (``crypto/aead.py`` layout:
    nonce ‖ ciphertext ‖ tag) under ``HKDF(vault master key, "vault-seed")``,
    associated data ``b"vaultstore/vault-seed/v1"``.
``seed_envelope``
    Canonical JSON ``{"keyfile": <hex SHA-256 of the key file bytes>,
    "seed": <hex SHA-256 of the sealed seed value>, "envelope": {...}}``, where
    the envelope is the manifest-grade one (``crypto/envelope.py``) under the
    password. It is computed once when the seed or the password is set and
    copied into every manifest, so a backup runs one KDF, not two.

Ordering and crashes: the key file is written last (temp file, fsync, rename,
fsync of the directory) and is the commit point of ``create``. A password
change stores the new envelope first, then renames the new key file in; a seed
replacement stores the envelope first, then the sealed seed. The two hashes in
``seed_envelope`` make a crash between those steps visible (the envelope names
another key file or seed) instead of silently handing out an envelope that
the password no longer opens; rerunning the interrupted command repairs it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vaultstore import durable, faults
from vaultstore.crypto.aead import Sealer
from vaultstore.crypto.envelope import seal_seed
from vaultstore.crypto.kdf import canonical_json
from vaultstore.crypto.keyfile import create_keyfile, generate_master_key, open_keyfile
from vaultstore.crypto.password import check_password
from vaultstore.crypto.purpose import derive_key
from vaultstore.crypto.seed import normalize_mnemonic
from vaultstore.errors import (
    IntegrityError,
    LocalIOError,
    MisuseError,
    NotFoundError,
)
from vaultstore.journal import DB_NAME, Journal
from vaultstore.model import decode_record

if TYPE_CHECKING:
    from vaultstore.crypto.derive import Wallet

log = logging.getLogger(__name__)

KEYFILE_NAME = "keyfile"
SEED_META = "seed"
ENVELOPE_META = "seed_envelope"
SEED_AD = b"vaultstore/vault-seed/v1"
_MAX_KEYFILE = 64 * 1024


class Vault:
    """An open vault; :meth:`unlock` with the password before reading the seed."""

    def __init__(self, path: Path, journal: Journal, profile: str) -> None:
        self.path = path
        self.journal = journal
        self.profile = profile
        self._master: bytes | None = None

    # -- creating and opening --------------------------------------------------

    @classmethod
    def create(
        cls, path: Path | str, password: str, mnemonic: str, profile: str = "production"
    ) -> Vault:
        """Create a vault holding ``mnemonic``, unlocked, at ``path``.

        Every check and every KDF runs before anything is written; on failure
        whatever was created is removed again.

        Raises:
            MisuseError: a vault (or anything else) already exists at ``path``.
            InputError: the mnemonic is invalid.
            WeakPasswordError: the password fails the password rule.
            LocalIOError: the directory or files cannot be written.
        """
        path = Path(path)
        mnemonic = normalize_mnemonic(mnemonic)
        check_password(password)
        _refuse_existing(path)
        master, keyfile, sealed_seed, envelope = _seal_all(mnemonic, password, profile)

        made_dir = not path.exists()
        journal: Journal | None = None
        try:
            journal = Journal.create(path)
            _install(journal, path, keyfile, sealed_seed, envelope)
        except BaseException:
            if journal is not None:
                journal.close()
            _remove_partial(path, made_dir)
            raise

        vault = cls(path, journal, profile)
        vault._master = master
        log.info("created vault %s", path, extra={"event": "vault.create"})
        return vault

    @classmethod
    def adopt(
        cls, path: Path | str, password: str, mnemonic: str, profile: str = "production"
    ) -> None:
        """Make a vault of a directory that holds only a journal (restore staging).

        Writes a new key file and seals ``mnemonic`` into the journal's meta;
        the key file, written last, is the commit point.

        Raises:
            MisuseError: the directory already has a key file.
            NotFoundError: the directory holds no journal.
            InputError, WeakPasswordError: as for :meth:`create`.
        """
        cls.install(path, prepare_adoption(password, mnemonic, profile))

    @classmethod
    def install(cls, path: Path | str, adoption: Adoption) -> None:
        """:meth:`adopt` with its key derivations already run (see
        :func:`prepare_adoption`): only the writes.

        Raises:
            MisuseError: the directory already has a key file.
            NotFoundError: the directory holds no journal.
        """
        path = Path(path)
        if (path / KEYFILE_NAME).exists():
            raise MisuseError(f"a vault already exists at {path}", path=str(path))
        with Journal.open(path) as journal:
            _install(
                journal, path, adoption.keyfile, adoption.sealed_seed, adoption.envelope
            )
        log.info("adopted vault %s", path, extra={"event": "vault.adopt"})

    @classmethod
    def open(cls, path: Path | str, profile: str = "production") -> Vault:
        """Open an existing vault (locked). ``profile`` sets the KDF floor.

        Raises:
            NotFoundError: no vault at ``path``.
        """
        path = Path(path)
        if not (path / KEYFILE_NAME).is_file():
            raise NotFoundError(
                f"no vault at {path} (no key file): run `vaultstore init` first",
                path=str(path),
            )
        _warn_if_loose(path)
        return cls(path, Journal.open(path), profile)

    def close(self) -> None:
        """Close the journal and forget the master key."""
        self._master = None
        self.journal.close()

    def __enter__(self) -> Vault:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- keys and seed -----------------------------------------------------------

    def unlock(self, password: str) -> None:
        """Open the key file with ``password`` (one KDF run).

        Raises:
            WrongPasswordError: the password does not open the key file.
            IntegrityError: the key file is damaged or its KDF is below the floor.
        """
        self._master = open_keyfile(self._read_keyfile(), password, self.profile)
        log.info("vault unlocked", extra={"event": "vault.unlock"})

    @property
    def unlocked(self) -> bool:
        """Whether :meth:`unlock` succeeded."""
        return self._master is not None

    def mnemonic(self) -> str:
        """The master seed's mnemonic.

        Raises:
            MisuseError: the vault is locked.
            NotFoundError: the vault holds no seed.
            IntegrityError: the sealed seed is damaged.
        """
        sealed = self._sealed_seed()
        plain = _seed_sealer(self._require_master()).open(sealed, SEED_AD, "vault seed")
        return plain.decode("utf-8")

    def seed_envelope(self) -> dict[str, Any]:
        """The manifest-grade seed envelope (no password needed).

        Raises:
            NotFoundError: the vault holds no envelope.
            IntegrityError: the envelope is damaged, or belongs to another key
                file or seed (an interrupted password change or seed import).
        """
        raw = self.journal.get_meta(ENVELOPE_META)
        if raw is None:
            raise NotFoundError(f"vault {self.path} holds no seed envelope")
        value = _parse_envelope_value(raw)
        keyfile_hash = hashlib.sha256(self._read_keyfile()).hexdigest()
        seed_hash = hashlib.sha256(self._sealed_seed()).hexdigest()
        if value["keyfile"] != keyfile_hash or value["seed"] != seed_hash:
            raise IntegrityError(
                f"the seed envelope of vault {self.path} does not match its key file "
                "or seed (an interrupted password change or seed import?): run "
                "`vaultstore key passwd` or `vaultstore seed import --replace` again"
            )
        envelope: dict[str, Any] = value["envelope"]
        return envelope

    def change_password(self, old: str, new: str) -> None:
        """Rewrap the key file and reseal the envelope under ``new``.

        Raises:
            WeakPasswordError: ``new`` fails the rule (checked before any KDF).
            WrongPasswordError: ``old`` does not open the key file.
        """
        check_password(new)
        self.unlock(old)
        master = self._require_master()
        mnemonic = self.mnemonic()
        keyfile = create_keyfile(master, new, self.profile)
        envelope = seal_seed(mnemonic, new, self.profile)

        self.journal.set_meta(
            ENVELOPE_META, _envelope_value(keyfile, self._sealed_seed(), envelope)
        )
        faults.point("vault.passwd.before-keyfile")
        _write_private(self.path / KEYFILE_NAME, keyfile)
        log.info("vault password changed", extra={"event": "vault.passwd"})

    def replace_mnemonic(self, mnemonic: str, password: str) -> None:
        """Store another mnemonic (the caller checks the wallets first).

        Raises:
            InputError: the mnemonic is invalid.
            WrongPasswordError: the password does not open the key file.
        """
        mnemonic = normalize_mnemonic(mnemonic)
        self.unlock(password)
        sealed = _seed_sealer(self._require_master()).seal(
            mnemonic.encode("utf-8"), SEED_AD
        )
        envelope = seal_seed(mnemonic, password, self.profile)

        keyfile = self._read_keyfile()
        self.journal.set_meta(ENVELOPE_META, _envelope_value(keyfile, sealed, envelope))
        faults.point("vault.seed-import.before-seed")
        self.journal.set_meta(SEED_META, sealed)
        log.info("vault seed replaced", extra={"event": "vault.seed-replace"})

    # -- wallets -----------------------------------------------------------------

    def iter_wallets(self) -> Iterator[Wallet]:
        """(agent id, index, EVM, XRP) of every live wallet, in tree order.

        Raises:
            IntegrityError: a stored record does not decode.
        """
        with self.journal.read_view() as view:
            for _key, agent_id, _lsn, data in view.iter_by_tree_key():
                if data is None:
                    continue
                wallet = _decode_wallet(agent_id, data)
                if wallet is not None:
                    yield (
                        agent_id,
                        wallet.get("derivationIndex"),
                        wallet.get("evmAddress"),
                        wallet.get("xrpAddress"),
                    )

    def verify_wallets(
        self, workers: int = 2, mnemonic: str | None = None
    ) -> tuple[int, list[str]]:
        """(wallets checked, sorted ids of agents whose addresses do not derive).

        Checks against the vault's seed, or against ``mnemonic`` when given.

        Raises:
            MisuseError: the vault is locked (and no mnemonic was given).
        """
        if mnemonic is None:
            mnemonic = self.mnemonic()
        counter = _Counter(self.iter_wallets())
        # Imported here: address derivation pulls in libsecp256k1 and
        # pycryptodome, which commands that never derive should not pay for.
        from vaultstore.crypto.derive import verify_wallets

        bad = verify_wallets(mnemonic, counter, workers=workers)
        return counter.count, sorted(bad)

    # -- internals ---------------------------------------------------------------

    def _require_master(self) -> bytes:
        if self._master is None:
            raise MisuseError("the vault is locked: unlock it with the password first")
        return self._master

    def _sealed_seed(self) -> bytes:
        sealed = self.journal.get_meta(SEED_META)
        if sealed is None:
            raise NotFoundError(f"vault {self.path} holds no seed")
        return sealed

    def _read_keyfile(self) -> bytes:
        path = self.path / KEYFILE_NAME
        try:
            with open(path, "rb") as handle:
                data = handle.read(_MAX_KEYFILE + 1)
        except FileNotFoundError as exc:
            raise NotFoundError(f"vault key file {path} is missing") from exc
        except OSError as exc:
            raise LocalIOError(f"cannot read {path}: {exc.strerror}") from exc
        if len(data) > _MAX_KEYFILE:
            raise IntegrityError(f"vault key file {path} is too large")
        return data


class _Counter:
    """Counts the items of an iterator as they are consumed."""

    def __init__(self, items: Iterator[Wallet]) -> None:
        self._items = items
        self.count = 0

    def __iter__(self) -> Iterator[Wallet]:
        for item in self._items:
            self.count += 1
            yield item


def _decode_wallet(agent_id: str, data: bytes) -> dict[str, Any] | None:
    try:
        wallet = decode_record(data).wallet
    except (ValueError, TypeError) as exc:
        raise IntegrityError(f"record of agent {agent_id!r} does not decode") from exc
    return wallet if isinstance(wallet, dict) else None


@dataclass(frozen=True)
class Adoption:
    """What :meth:`Vault.install` writes: a new key file, and the seed sealed
    under its master key and in its envelope. Nothing here is plaintext."""

    keyfile: bytes
    sealed_seed: bytes
    envelope: bytes


def prepare_adoption(
    password: str, mnemonic: str, profile: str = "production"
) -> Adoption:
    """Every key derivation of :meth:`Vault.adopt`, and no write.

    A restore runs this on a thread while it loads the journal (Argon2id
    releases the GIL), so the derivations cost no time of their own.

    Raises:
        InputError, WeakPasswordError: as for :meth:`Vault.create`.
    """
    mnemonic = normalize_mnemonic(mnemonic)
    check_password(password)
    _, keyfile, sealed_seed, envelope = _seal_all(mnemonic, password, profile)
    return Adoption(keyfile, sealed_seed, envelope)


def _seal_all(
    mnemonic: str, password: str, profile: str
) -> tuple[bytes, bytes, bytes, bytes]:
    """(master key, key file, sealed seed, envelope value): every KDF, no writes."""
    master = generate_master_key()
    keyfile = create_keyfile(master, password, profile)
    sealed_seed = _seed_sealer(master).seal(mnemonic.encode("utf-8"), SEED_AD)
    envelope = seal_seed(mnemonic, password, profile)
    return master, keyfile, sealed_seed, _envelope_value(keyfile, sealed_seed, envelope)


def _install(
    journal: Journal, path: Path, keyfile: bytes, sealed_seed: bytes, envelope: bytes
) -> None:
    """Store the seed values, then the key file (the commit point)."""
    journal.set_meta(SEED_META, sealed_seed)
    journal.set_meta(ENVELOPE_META, envelope)
    _write_private(path / KEYFILE_NAME, keyfile)


def _seed_sealer(master: bytes) -> Sealer:
    return Sealer(derive_key(master, "vault-seed"))


def _envelope_value(
    keyfile: bytes, sealed_seed: bytes, envelope: dict[str, Any]
) -> bytes:
    return canonical_json(
        {
            "keyfile": hashlib.sha256(keyfile).hexdigest(),
            "seed": hashlib.sha256(sealed_seed).hexdigest(),
            "envelope": envelope,
        }
    )


def _parse_envelope_value(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IntegrityError("the vault's seed envelope is not valid JSON") from exc
    if not isinstance(value, dict) or set(value) != {"keyfile", "seed", "envelope"}:
        raise IntegrityError("the vault's seed envelope has an unexpected structure")
    return value


def _refuse_existing(path: Path) -> None:
    if (path / KEYFILE_NAME).exists() or (path / DB_NAME).exists():
        raise MisuseError(f"a vault already exists at {path}", path=str(path))
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise MisuseError(
            f"{path} exists and is not an empty directory; choose another vault path",
            path=str(path),
        )


def _remove_partial(path: Path, made_dir: bool) -> None:
    """Remove what a failed ``create`` wrote; the directory was empty before."""
    if made_dir:
        shutil.rmtree(path, ignore_errors=True)
        return
    for entry in path.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _write_private(path: Path, data: bytes) -> None:
    """Durably replace ``path`` with ``data`` (mode 0600): temp, fsync, rename.

    Raises:
        LocalIOError: the write, fsync or rename failed; the old file is intact.
    """
    durable.write_atomic(path, data, fault="vault.keyfile.before-rename")
    faults.point("vault.keyfile.after-sync")


def _warn_if_loose(path: Path) -> None:
    for item, loose in ((path, 0o077), (path / KEYFILE_NAME, 0o077)):
        try:
            mode = stat.S_IMODE(item.stat().st_mode)
        except OSError:
            continue
        if mode & loose:
            log.warning(
                "%s is accessible by other users (mode %o)",
                item,
                mode,
                extra={"event": "vault.loose-permissions", "path": str(item)},
            )
