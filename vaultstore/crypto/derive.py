"""Wallet addresses from the master seed, to verify wallets against it.

Recipe (``compat/FORMAT.md``): BIP-39 seed → BIP-32 root (HMAC-SHA512 keyed
with ``"Bitcoin seed"``), then

- EVM: ``m/44'/60'/1'/0/i``; uncompressed secp256k1 public key → Keccak-256 →
  last 20 bytes → ``0x`` + EIP-55 checksum casing;
- XRP: ``m/44'/144'/1'/0/i``; the first 16 bytes of that private key are XRPL
  family-seed entropy; the ed25519 secret is the first 32 bytes of
  SHA-512(entropy); public key ``0xED ‖ ed25519 public``; account id =
  RIPEMD-160(SHA-256(public key)); base58check in the XRPL alphabet with
  version byte 0x00.

Cost: each account node (``m/44'/60'/1'/0`` and ``m/44'/144'/1'/0``) is derived
once; per index only the last, non-hardened level runs: one HMAC-SHA512 whose
padded-key SHA-512 states were hashed once per account node, and a scalar
addition. Then one secp256k1 point multiplication (libsecp256k1 via
``coincurve``) and one ed25519 public key (libsodium via PyNaCl, which gives
the same key as OpenSSL's ``Ed25519PrivateKey``; the tests hold the two
against each other). The small hashes take the cheapest call path there is,
chosen once at import and checked against a known digest then:

- Keccak-256: pycryptodome's one-shot C function (creating a ``keccak.new``
  object costs more than hashing 64 bytes); ``keccak.new`` if that function
  is missing or answers wrongly;
- RIPEMD-160: ``hashlib`` when the OpenSSL build provides it, else
  pycryptodome;
- EIP-55 casing: two ``bytes.translate`` tables and one integer mask instead
  of a loop over the 40 characters.

Large inputs are verified in chunks by a process pool; the account nodes reach
the workers through the pool's pipe, never through argv or the environment.
The fork server preloads this module, so a worker starts without importing
the crypto libraries again. A chunk of 4096 wallets pickles to ~430 KB in
~2 ms and takes ~0.2 s to derive: the pool costs about 1 % on top.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import multiprocessing
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from itertools import islice
from typing import Any

from coincurve import PublicKey
from Crypto.Hash import RIPEMD160, keccak
from nacl.bindings import crypto_sign_seed_keypair

from vaultstore.crypto.seed import mnemonic_to_seed
from vaultstore.errors import IntegrityError, VaultstoreError

log = logging.getLogger(__name__)

SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
HARDENED = 0x80000000
MAX_INDEX = HARDENED - 1
EVM_ACCOUNT_PATH = (44 | HARDENED, 60 | HARDENED, 1 | HARDENED, 0)
XRP_ACCOUNT_PATH = (44 | HARDENED, 144 | HARDENED, 1 | HARDENED, 0)
XRPL_ALPHABET = b"rpshnaf39wBUDNEGHJKLM4PQRST7VWXYZ2bcdeCg65jkm8oFqi1tuvAxyz"
CHUNK_SIZE = 4096

Wallet = tuple[str, Any, Any, Any]  # (agent id, derivation index, evm, xrp)
Digest = Callable[[bytes], bytes]

# Known answers the import-time choices are checked against.
_KECCAK256_ABC = bytes.fromhex(
    "4e03657aea45a94fc7d47ba826c8d667c0d1e6e33a64a036ec44f58fa12d6c45"
)
_RIPEMD160_ABC = bytes.fromhex("8eb208f7e05d987a9b044a8e98c6b087f15a0bfc")

# EIP-55: a hex digit of the Keccak digest ≥ 8 upper-cases the letter at its
# position. _HIGH_NIBBLE turns each digest hex digit into 0x00 or 0xFF;
# _LETTER turns each address character into the bit that separates a-f from
# A-F (0x20), and digits into 0x00 since they have no case.
_HIGH_NIBBLE = bytes.maketrans(b"0123456789abcdef", b"\x00" * 8 + b"\xff" * 8)
_LETTER = bytes.maketrans(b"0123456789abcdef", b"\x00" * 10 + b"\x20" * 6)

# Base58 two digits at a time: 58² = 3364 entries, half the big-int divisions.
_BASE58_PAIRS = [
    bytes((XRPL_ALPHABET[i // 58], XRPL_ALPHABET[i % 58])) for i in range(58 * 58)
]

_IPAD = bytes(byte ^ 0x36 for byte in range(256))
_OPAD = bytes(byte ^ 0x5C for byte in range(256))
_SHA512_BLOCK = 128


def _keccak256_object(data: bytes) -> bytes:
    return keccak.new(digest_bits=256, data=data).digest()


def _keccak256_oneshot() -> Digest | None:
    """pycryptodome's one-shot Keccak-256, or None if this build lacks it.

    The function is not part of pycryptodome's public API, so it is looked up
    defensively and must give the known digest before it is used.
    """
    try:
        raw_lib: Any = getattr(keccak, "_raw_keccak_lib")  # noqa: B009
        raw_api: Any = __import__("Crypto.Util._raw_api", fromlist=["_raw_api"])
        oneshot = raw_lib.keccak_oneshot
        new_buffer, read_buffer = raw_api.create_string_buffer, raw_api.get_raw_buffer
        size_t, ubyte = raw_api.c_size_t, raw_api.c_ubyte
    except (ImportError, AttributeError):
        return None
    # Digest length 32, capacity 64 bytes, 24 rounds, Keccak padding 0x01.
    length, capacity, rounds, padding = size_t(32), size_t(64), ubyte(24), ubyte(1)

    def digest(data: bytes) -> bytes:
        out = new_buffer(32)
        if oneshot(data, size_t(len(data)), out, length, capacity, rounds, padding):
            # Not ValueError: that would read as a wallet mismatch.
            raise RuntimeError("pycryptodome's one-shot Keccak-256 failed")
        result: bytes = read_buffer(out)
        return result

    try:
        works = digest(b"abc") == _KECCAK256_ABC
    except (TypeError, ValueError, AttributeError, RuntimeError):
        works = False
    return digest if works else None


def _ripemd160_hashlib(data: bytes) -> bytes:
    return hashlib.new("ripemd160", data).digest()


def _ripemd160_pycryptodome(data: bytes) -> bytes:
    return RIPEMD160.new(data).digest()


def _pick_ripemd160() -> Digest:
    """hashlib's RIPEMD-160 if this OpenSSL build has it, else pycryptodome's."""
    try:
        if _ripemd160_hashlib(b"abc") == _RIPEMD160_ABC:
            return _ripemd160_hashlib
    except ValueError:  # "unsupported hash type": OpenSSL 3 without legacy
        pass
    return _ripemd160_pycryptodome


def _pick_keccak256() -> Digest:
    """The one-shot Keccak-256 if it works here, else ``keccak.new``."""
    return _keccak256_oneshot() or _keccak256_object


_keccak256 = _pick_keccak256()
_ripemd160 = _pick_ripemd160()
log.debug(
    "derivation hashes: Keccak-256 via %s, RIPEMD-160 via %s",
    "keccak.new" if _keccak256 is _keccak256_object else "the one-shot function",
    "pycryptodome" if _ripemd160 is _ripemd160_pycryptodome else "hashlib",
    extra={"event": "derive.hashes"},
)


class _HmacSha512:
    """HMAC-SHA512 (RFC 2104) under one fixed key, for many short messages.

    The two padded-key blocks are hashed once; each message then costs copies
    of those SHA-512 states and two compressions fewer than ``hmac.digest``.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) > _SHA512_BLOCK:
            key = hashlib.sha512(key).digest()
        padded = key.ljust(_SHA512_BLOCK, b"\x00")
        self._inner = hashlib.sha512(padded.translate(_IPAD))
        self._outer = hashlib.sha512(padded.translate(_OPAD))

    def digest(self, message: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


@dataclass(frozen=True)
class Node:
    """A BIP-32 private node: private scalar, chain code, compressed public key."""

    key: int
    chain: bytes
    public: bytes


def _node(key: int, chain: bytes) -> Node:
    public = PublicKey.from_valid_secret(key.to_bytes(32, "big")).format(True)
    return Node(key, chain, public)


def _child(parent: Node, index: int) -> tuple[int, bytes]:
    """The child private scalar and chain code at ``index`` (BIP-32 CKDpriv)."""
    if index & HARDENED:
        data = b"\x00" + parent.key.to_bytes(32, "big") + index.to_bytes(4, "big")
    else:
        data = parent.public + index.to_bytes(4, "big")
    digest = hmac.digest(parent.chain, data, "sha512")
    return _child_key(parent.key, digest[:32], index), digest[32:]


def _child_key(parent_key: int, tweak_bytes: bytes, index: int) -> int:
    tweak = int.from_bytes(tweak_bytes, "big")
    key = (tweak + parent_key) % SECP256K1_ORDER
    if tweak >= SECP256K1_ORDER or key == 0:
        # Probability below 2^-127; BIP-32 says the index is then invalid.
        raise IntegrityError(f"BIP-32 index {index & MAX_INDEX} is invalid for seed")
    return key


def account_node(seed: bytes, path: tuple[int, ...]) -> Node:
    """The node at ``path`` below the BIP-32 root of ``seed``."""
    digest = hmac.digest(b"Bitcoin seed", seed, "sha512")
    node = _node(int.from_bytes(digest[:32], "big"), digest[32:])
    for index in path:
        node = _node(*_child(node, index))
    return node


class _Account:
    """An account node ready for many non-hardened children."""

    def __init__(self, node: Node) -> None:
        self._key = node.key
        self._public = node.public
        self._hmac = _HmacSha512(node.chain)

    def child_secret(self, index: int) -> bytes:
        """The 32-byte private key of child ``index`` (< 2^31, not hardened)."""
        tweak = self._hmac.digest(self._public + index.to_bytes(4, "big"))[:32]
        return _child_key(self._key, tweak, index).to_bytes(32, "big")


def evm_address(private_key: bytes) -> str:
    """The EIP-55 address of a secp256k1 private key."""
    public = PublicKey.from_valid_secret(private_key).format(compressed=False)
    return _eip55(_keccak256(public[1:])[-20:].hex().encode("ascii"))


def eip55(hex_address: str) -> str:
    """``0x`` + 40 hex digits with EIP-55 checksum casing."""
    return _eip55(hex_address.lower().encode("ascii"))


def _eip55(lower: bytes) -> str:
    digest_hex = _keccak256(lower).hex().encode("ascii")[: len(lower)]
    mask = int.from_bytes(digest_hex.translate(_HIGH_NIBBLE), "big")
    flip = int.from_bytes(lower.translate(_LETTER), "big") & mask
    cased = int.from_bytes(lower, "big") ^ flip
    return "0x" + cased.to_bytes(len(lower), "big").decode("ascii")


def xrp_address(private_key: bytes) -> str:
    """The classic XRPL address of the ed25519 key the recipe derives."""
    secret = hashlib.sha512(private_key[:16]).digest()[:32]
    public, _ = crypto_sign_seed_keypair(secret)
    account = _ripemd160(hashlib.sha256(b"\xed" + public).digest())
    return base58check(b"\x00" + account)


def base58check(payload: bytes) -> str:
    """Base58check in the XRPL alphabet."""
    data = payload + hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4]
    number = int.from_bytes(data, "big")
    pairs: list[bytes] = []
    while number:
        number, pair = divmod(number, 3364)
        pairs.append(_BASE58_PAIRS[pair])
    pairs.reverse()
    # A leading zero digit of the top pair is padding; leading zero bytes of
    # the data are each one zero digit.
    digits = b"".join(pairs).lstrip(XRPL_ALPHABET[0:1])
    zeros = len(data) - len(data.lstrip(b"\x00"))
    return (XRPL_ALPHABET[0:1] * zeros + digits).decode("ascii")


class WalletDeriver:
    """Derives (EVM, XRP) addresses for indexes below two fixed account nodes."""

    def __init__(self, evm_account: Node, xrp_account: Node) -> None:
        self.nodes = (evm_account, xrp_account)
        self._evm = _Account(evm_account)
        self._xrp = _Account(xrp_account)

    @classmethod
    def from_seed(cls, seed: bytes) -> WalletDeriver:
        """Derive both account nodes from a 64-byte BIP-39 seed."""
        return cls(
            account_node(seed, EVM_ACCOUNT_PATH), account_node(seed, XRP_ACCOUNT_PATH)
        )

    def addresses(self, index: int) -> tuple[str, str]:
        """The EVM and XRP addresses at ``index`` (0 … 2^31-1)."""
        if isinstance(index, bool) or not isinstance(index, int):
            raise ValueError("derivation index must be an integer")
        if not 0 <= index <= MAX_INDEX:
            raise ValueError(f"derivation index {index} is outside 0..2^31-1")
        return (
            evm_address(self._evm.child_secret(index)),
            xrp_address(self._xrp.child_secret(index)),
        )

    def mismatches(self, wallets: Iterable[Wallet]) -> list[str]:
        """Agent ids whose stored addresses differ from the derived ones."""
        bad: list[str] = []
        for agent_id, index, evm, xrp in wallets:
            try:
                derived = self.addresses(index)
            except (ValueError, IntegrityError):
                bad.append(agent_id)
                continue
            if derived != (evm, xrp):
                bad.append(agent_id)
        return bad


def derive_addresses(seed: bytes, index: int) -> tuple[str, str]:
    """The (EVM, XRP) addresses of ``index`` under a 64-byte BIP-39 seed."""
    return WalletDeriver.from_seed(seed).addresses(index)


def verify_wallets(
    mnemonic: str, wallets: Iterable[Wallet], workers: int = 2
) -> list[str]:
    """Agent ids (in input order) whose EVM or XRP address does not derive.

    Streams ``wallets`` in chunks; memory stays bounded by the chunks in flight.
    Uses a process pool of ``workers`` when the input is larger than one chunk.
    """
    return verify_wallet_chunks(mnemonic, _chunks(wallets), workers)


def verify_wallet_chunks(
    mnemonic: str,
    chunks: Iterator[list[Wallet]],
    workers: int = 2,
    *,
    spare_core: bool = False,
) -> list[str]:
    """:func:`verify_wallets` over wallets already grouped in lists (of about
    :data:`CHUNK_SIZE`): no Python work per wallet on the calling thread.

    With ``spare_core`` even one worker is a separate process: the caller is
    busy with other work on its own core (an import applying records) and
    deriving on a thread would compete with it for the GIL.
    """
    deriver = WalletDeriver.from_seed(mnemonic_to_seed(mnemonic))
    started = time.monotonic()
    first = next(chunks, [])
    second = next(chunks, None)
    if second is None or workers < 1 or (workers == 1 and not spare_core):
        bad: list[str] = []
        count = 0
        for chunk in _chain([first] if second is None else [first, second], chunks):
            bad.extend(deriver.mismatches(chunk))
            count += len(chunk)
    else:
        try:
            bad, count = _verify_in_pool(deriver, [first, second], chunks, workers)
        except BrokenProcessPool as exc:
            raise VaultstoreError(
                "a wallet verification worker process died (out of memory?)"
            ) from exc
    elapsed = time.monotonic() - started
    log.info(
        "verified %d wallets in %.2f s: %d mismatch(es)",
        count,
        elapsed,
        len(bad),
        extra={"event": "wallets.verified", "wallets": count, "mismatches": len(bad)},
    )
    return bad


def _chunks(wallets: Iterable[Wallet]) -> Iterator[list[Wallet]]:
    it = iter(wallets)
    while chunk := list(islice(it, CHUNK_SIZE)):
        yield chunk


def _verify_in_pool(
    deriver: WalletDeriver,
    head: list[list[Wallet]],
    rest: Iterator[list[Wallet]],
    workers: int,
) -> tuple[list[str], int]:
    context = multiprocessing.get_context("forkserver")
    # The fork server imports this module (libsecp256k1, libsodium, …) once;
    # each worker forked from it starts ready instead of importing it again.
    context.set_forkserver_preload([__name__])
    bad: list[str] = []
    count = 0
    pending: deque[Future[list[str]]] = deque()
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_worker_init, initargs=deriver.nodes
    ) as pool:
        for chunk in _chain(head, rest):
            count += len(chunk)
            pending.append(pool.submit(_worker_check, chunk))
            # Bounded look-ahead: memory holds ~2 chunks per worker, not the input.
            while len(pending) > 2 * workers:
                bad.extend(pending.popleft().result())
        while pending:
            bad.extend(pending.popleft().result())
    return bad, count


def _chain(
    head: list[list[Wallet]], rest: Iterator[list[Wallet]]
) -> Iterator[list[Wallet]]:
    yield from head
    yield from rest


_worker_deriver: WalletDeriver | None = None


def _worker_init(evm_account: Node, xrp_account: Node) -> None:
    global _worker_deriver
    _worker_deriver = WalletDeriver(evm_account, xrp_account)


def _worker_check(chunk: list[Wallet]) -> list[str]:
    if _worker_deriver is None:
        raise RuntimeError("worker used before initialisation")
    return _worker_deriver.mismatches(chunk)
