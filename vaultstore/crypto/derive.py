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
once; per index only the last, non-hardened level runs (one HMAC-SHA512 and a
scalar addition), then one secp256k1 point multiplication (libsecp256k1 via
``coincurve``) and one ed25519 key (OpenSSL). Large inputs are verified in
chunks by a process pool; the account nodes reach the workers through the
pool's pipe, never through argv or the environment.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import multiprocessing
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from itertools import islice
from typing import Any

from coincurve import PublicKey
from Crypto.Hash import RIPEMD160, keccak
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

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
    tweak = int.from_bytes(digest[:32], "big")
    key = (tweak + parent.key) % SECP256K1_ORDER
    if tweak >= SECP256K1_ORDER or key == 0:
        # Probability below 2^-127; BIP-32 says the index is then invalid.
        raise IntegrityError(f"BIP-32 index {index & MAX_INDEX} is invalid for seed")
    return key, digest[32:]


def account_node(seed: bytes, path: tuple[int, ...]) -> Node:
    """The node at ``path`` below the BIP-32 root of ``seed``."""
    digest = hmac.digest(b"Bitcoin seed", seed, "sha512")
    node = _node(int.from_bytes(digest[:32], "big"), digest[32:])
    for index in path:
        node = _node(*_child(node, index))
    return node


def evm_address(private_key: bytes) -> str:
    """The EIP-55 address of a secp256k1 private key."""
    public = PublicKey.from_valid_secret(private_key).format(compressed=False)
    raw = keccak.new(digest_bits=256, data=public[1:]).digest()[-20:]
    return eip55(raw.hex())


def eip55(hex_address: str) -> str:
    """``0x`` + 40 hex digits with EIP-55 checksum casing."""
    lower = hex_address.lower()
    digest = keccak.new(digest_bits=256, data=lower.encode("ascii")).hexdigest()
    return "0x" + "".join(
        char.upper() if digest[i] in "89abcdef" else char
        for i, char in enumerate(lower)
    )


def xrp_address(private_key: bytes) -> str:
    """The classic XRPL address of the ed25519 key the recipe derives."""
    secret = hashlib.sha512(private_key[:16]).digest()[:32]
    public = Ed25519PrivateKey.from_private_bytes(secret).public_key()
    account = _ripemd160(hashlib.sha256(b"\xed" + public.public_bytes_raw()).digest())
    return base58check(b"\x00" + account)


def base58check(payload: bytes) -> str:
    """Base58check in the XRPL alphabet."""
    data = payload + hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4]
    number = int.from_bytes(data, "big")
    out = bytearray()
    while number:
        number, digit = divmod(number, 58)
        out.append(XRPL_ALPHABET[digit])
    zeros = len(data) - len(data.lstrip(b"\x00"))
    out.extend(XRPL_ALPHABET[0:1] * zeros)
    return out[::-1].decode("ascii")


def _ripemd160(data: bytes) -> bytes:
    return RIPEMD160.new(data).digest()


class WalletDeriver:
    """Derives (EVM, XRP) addresses for indexes below two fixed account nodes."""

    def __init__(self, evm_account: Node, xrp_account: Node) -> None:
        self._evm = evm_account
        self._xrp = xrp_account

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
        evm_key, _ = _child(self._evm, index)
        xrp_key, _ = _child(self._xrp, index)
        return (
            evm_address(evm_key.to_bytes(32, "big")),
            xrp_address(xrp_key.to_bytes(32, "big")),
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
    nodes = (deriver._evm, deriver._xrp)
    bad: list[str] = []
    count = 0
    pending: deque[Future[list[str]]] = deque()
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_worker_init, initargs=nodes
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
