"""The BIP-39 master seed: generate, normalise and validate, stretch to a seed.

Uses the ``mnemonic`` package (the reference implementation's wordlists and
checksum). Only English mnemonics of 12 or 24 words are accepted, as the
legacy service writes them: lowercase words separated by single spaces. Error
messages name word positions, never the words themselves.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

from mnemonic import Mnemonic

from vaultstore.errors import InputError

WORD_COUNTS = (12, 24)
_STRENGTH = {12: 128, 24: 256}


@lru_cache(maxsize=1)
def _english() -> Mnemonic:
    return Mnemonic("english")


def generate_mnemonic(words: int = 24) -> str:
    """A new random English mnemonic of ``words`` words (12 or 24)."""
    if words not in _STRENGTH:
        raise InputError(f"a mnemonic has 12 or 24 words, not {words}")
    return str(_english().generate(strength=_STRENGTH[words]))


def normalize_mnemonic(text: str) -> str:
    """Validate a mnemonic and return it in canonical form.

    Raises:
        InputError: wrong word count, a word not in the list (by position),
            or a checksum mismatch.
    """
    words = unicodedata.normalize("NFKD", text).lower().split()
    if len(words) not in WORD_COUNTS:
        raise InputError(f"the mnemonic has {len(words)} words; expected 12 or 24")
    known = _wordset()
    unknown = [str(i) for i, word in enumerate(words, start=1) if word not in known]
    if unknown:
        raise InputError(
            "word(s) at position "
            + ", ".join(unknown)
            + " are not in the BIP-39 English word list"
        )
    mnemonic = " ".join(words)
    if not _english().check(mnemonic):
        raise InputError(
            "the mnemonic's checksum does not match (a word is wrong or out of order)"
        )
    return mnemonic


def mnemonic_to_seed(mnemonic: str) -> bytes:
    """The 64-byte BIP-39 seed (PBKDF2-HMAC-SHA512, empty passphrase)."""
    return bytes(Mnemonic.to_seed(mnemonic, passphrase=""))


@lru_cache(maxsize=1)
def _wordset() -> frozenset[str]:
    return frozenset(_english().wordlist)
