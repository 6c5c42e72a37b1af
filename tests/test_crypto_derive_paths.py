"""The fast derivation paths agree with straightforward reference computations.

``crypto/derive.py`` takes the cheapest call path for each step (libsodium for
ed25519, hashlib's RIPEMD-160, pycryptodome's one-shot Keccak, precomputed
HMAC states, table-driven EIP-55 and base58). Each is held here against the
textbook computation with the slower library call on many random inputs, and
each import-time fallback is exercised.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pytest
from coincurve import PublicKey
from Crypto.Hash import RIPEMD160, keccak
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.bindings import crypto_sign_seed_keypair

from vaultstore.crypto import derive
from vaultstore.crypto.derive import (
    MAX_INDEX,
    SECP256K1_ORDER,
    XRPL_ALPHABET,
    Node,
    WalletDeriver,
)
from vaultstore.crypto.seed import mnemonic_to_seed

DATA = Path(__file__).resolve().parent / "data"
MNEMONIC = (
    "child bird parent spare bulb come artefact noodle parade badge carpet humor "
    "excuse unaware leaf matter copy wheel fury mad dumb squeeze neutral describe"
)
DERIVER = WalletDeriver.from_seed(mnemonic_to_seed(MNEMONIC))

secrets = st.binary(min_size=32, max_size=32)
secp_keys = st.integers(1, SECP256K1_ORDER - 1).map(lambda k: k.to_bytes(32, "big"))
indexes = st.integers(0, MAX_INDEX)


# -- reference computations (the recipe written out, slow libraries) ----------


def ref_keccak256(data: bytes) -> bytes:
    return keccak.new(digest_bits=256, data=data).digest()


def ref_eip55(lower_hex: str) -> str:
    digest = ref_keccak256(lower_hex.encode("ascii")).hex()
    return "0x" + "".join(
        char.upper() if int(digest[i], 16) >= 8 else char
        for i, char in enumerate(lower_hex)
    )


def ref_base58check(payload: bytes) -> str:
    data = payload + hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4]
    number = int.from_bytes(data, "big")
    digits = ""
    while number:
        number, digit = divmod(number, 58)
        digits = chr(XRPL_ALPHABET[digit]) + digits
    zeros = len(data) - len(data.lstrip(b"\x00"))
    return chr(XRPL_ALPHABET[0]) * zeros + digits


def ref_evm_address(private_key: bytes) -> str:
    public = PublicKey.from_valid_secret(private_key).format(compressed=False)
    return ref_eip55(ref_keccak256(public[1:])[-20:].hex())


def ref_xrp_address(private_key: bytes) -> str:
    secret = hashlib.sha512(private_key[:16]).digest()[:32]
    public = Ed25519PrivateKey.from_private_bytes(secret).public_key()
    inner = hashlib.sha256(b"\xed" + public.public_bytes_raw()).digest()
    return ref_base58check(b"\x00" + RIPEMD160.new(inner).digest())


def ref_child_secret(parent: Node, index: int) -> bytes:
    data = parent.public + index.to_bytes(4, "big")
    digest = hmac.digest(parent.chain, data, "sha512")
    key = (int.from_bytes(digest[:32], "big") + parent.key) % SECP256K1_ORDER
    return key.to_bytes(32, "big")


def ref_addresses(index: int) -> tuple[str, str]:
    evm_node, xrp_node = DERIVER.nodes
    return (
        ref_evm_address(ref_child_secret(evm_node, index)),
        ref_xrp_address(ref_child_secret(xrp_node, index)),
    )


# -- each fast path against its reference --------------------------------------


@settings(max_examples=400)
@given(secrets)
def test_libsodium_and_openssl_give_the_same_ed25519_public_key(
    secret: bytes,
) -> None:
    openssl = Ed25519PrivateKey.from_private_bytes(secret).public_key()
    assert crypto_sign_seed_keypair(secret)[0] == openssl.public_bytes_raw()


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_the_keccak_in_use_matches_keccak_new(data: bytes) -> None:
    # Lengths up to 300 cross the 136-byte rate of Keccak-256 twice.
    assert derive._keccak256(data) == ref_keccak256(data)


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_the_ripemd160_in_use_matches_pycryptodome(data: bytes) -> None:
    assert derive._ripemd160(data) == RIPEMD160.new(data).digest()


def test_hashlib_ripemd160_is_the_one_chosen_where_openssl_has_it() -> None:
    try:
        hashlib.new("ripemd160")
    except ValueError:
        pytest.skip("this OpenSSL build has no RIPEMD-160")
    assert derive._pick_ripemd160() is derive._ripemd160_hashlib


@settings(max_examples=300)
@given(st.binary(max_size=300), st.binary(max_size=64))
def test_precomputed_hmac_sha512_matches_hmac_digest(
    key: bytes, message: bytes
) -> None:
    assert derive._HmacSha512(key).digest(message) == hmac.digest(
        key, message, "sha512"
    )


def test_hmac_sha512_with_keys_around_the_block_size() -> None:
    for size in (0, 1, 32, 64, 127, 128, 129, 256):
        key = bytes(range(size % 256)) * (size // 256) + bytes(range(size % 256))
        key = key[:size]
        for message in (b"", b"x", bytes(range(37)), bytes(200)):
            expected = hmac.digest(key, message, "sha512")
            assert derive._HmacSha512(key).digest(message) == expected


@settings(max_examples=400)
@given(st.binary(min_size=20, max_size=20))
def test_eip55_fast_path_matches_the_definition(raw: bytes) -> None:
    assert derive.eip55(raw.hex()) == ref_eip55(raw.hex())


def test_eip55_for_all_digit_and_all_letter_addresses() -> None:
    for lower in (
        "0" * 40,
        "9" * 40,
        "a" * 40,
        "f" * 40,
        "0123456789abcdef" * 2 + "a" * 8,
    ):
        assert derive.eip55(lower) == ref_eip55(lower)
        assert derive.eip55(lower.upper()) == ref_eip55(lower)


@settings(max_examples=400)
@given(st.integers(0, 24), st.binary(max_size=25))
def test_base58check_matches_the_digit_by_digit_definition(
    zeros: int, tail: bytes
) -> None:
    payload = (b"\x00" * zeros + tail)[:25]
    assert derive.base58check(payload) == ref_base58check(payload)


@settings(max_examples=300)
@given(indexes)
def test_child_secret_matches_bip32_ckdpriv(index: int) -> None:
    for account, node in zip((DERIVER._evm, DERIVER._xrp), DERIVER.nodes, strict=True):
        assert account.child_secret(index) == ref_child_secret(node, index)
        generic_key, _ = derive._child(node, index)
        assert account.child_secret(index) == generic_key.to_bytes(32, "big")


@settings(max_examples=200)
@given(secp_keys)
def test_evm_and_xrp_addresses_match_the_reference(private_key: bytes) -> None:
    assert derive.evm_address(private_key) == ref_evm_address(private_key)
    assert derive.xrp_address(private_key) == ref_xrp_address(private_key)


@settings(max_examples=200)
@given(indexes)
def test_wallet_addresses_match_the_reference_recipe(index: int) -> None:
    assert DERIVER.addresses(index) == ref_addresses(index)


def test_the_first_thousand_indexes_match_the_reference_recipe() -> None:
    for index in range(1000):
        assert DERIVER.addresses(index) == ref_addresses(index)


# -- import-time fallbacks --------------------------------------------------------


def _golden() -> list[tuple[int, str, str]]:
    backup = json.loads((DATA / "full-backup.json").read_text(encoding="utf-8"))
    return [
        (w["derivationIndex"], w["evmAddress"], w["xrpAddress"])
        for w in backup["wallets"]
    ]


def _assert_golden_derive() -> None:
    deriver = WalletDeriver.from_seed(mnemonic_to_seed(MNEMONIC))
    for index, evm, xrp in _golden():
        assert deriver.addresses(index) == (evm, xrp)


def test_ripemd160_falls_back_to_pycryptodome_without_hashlib_support(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_new = hashlib.new

    def new_without_ripemd(name: str, *args: object, **kwargs: object) -> object:
        if name.lower() == "ripemd160":
            raise ValueError(f"unsupported hash type {name}")
        return real_new(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(hashlib, "new", new_without_ripemd)
    chosen = derive._pick_ripemd160()
    assert chosen is derive._ripemd160_pycryptodome
    monkeypatch.setattr(derive, "_ripemd160", chosen)
    _assert_golden_derive()


def test_ripemd160_falls_back_when_hashlib_answers_wrongly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(derive, "_RIPEMD160_ABC", bytes(20))
    assert derive._pick_ripemd160() is derive._ripemd160_pycryptodome


class _WithoutOneShot:
    """pycryptodome's Keccak library as a build without ``keccak_oneshot``."""

    def __init__(self, lib: object) -> None:
        self._lib = lib

    def __getattr__(self, name: str) -> object:
        if name == "keccak_oneshot":
            raise AttributeError(name)
        return getattr(self._lib, name)


def test_keccak_falls_back_to_keccak_new_without_the_one_shot_function(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        keccak, "_raw_keccak_lib", _WithoutOneShot(keccak._raw_keccak_lib)
    )
    assert derive._keccak256_oneshot() is None
    chosen = derive._pick_keccak256()
    assert chosen is derive._keccak256_object
    monkeypatch.setattr(derive, "_keccak256", chosen)
    _assert_golden_derive()


def test_keccak_falls_back_when_the_one_shot_function_answers_wrongly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # SHA3-256 padding instead of Keccak's: the self-check must refuse it.
    monkeypatch.setattr(derive, "_KECCAK256_ABC", hashlib.sha3_256(b"abc").digest())
    assert derive._keccak256_oneshot() is None
    assert derive._pick_keccak256() is derive._keccak256_object
