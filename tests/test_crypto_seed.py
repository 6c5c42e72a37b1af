"""BIP-39 mnemonics: generation, validation without leaking words, the seed."""

from __future__ import annotations

import pytest

from vaultstore.crypto.seed import (
    generate_mnemonic,
    mnemonic_to_seed,
    normalize_mnemonic,
)
from vaultstore.errors import InputError

MNEMONIC = (
    "child bird parent spare bulb come artefact noodle parade badge carpet humor "
    "excuse unaware leaf matter copy wheel fury mad dumb squeeze neutral describe"
)


@pytest.mark.parametrize("words", [12, 24])
def test_generated_mnemonics_validate(words: int) -> None:
    mnemonic = generate_mnemonic(words)
    assert len(mnemonic.split()) == words
    assert normalize_mnemonic(mnemonic) == mnemonic
    assert generate_mnemonic(words) != mnemonic


def test_generate_refuses_other_lengths() -> None:
    with pytest.raises(InputError):
        generate_mnemonic(18)


def test_normalise_collapses_case_and_whitespace() -> None:
    messy = "  " + MNEMONIC.upper().replace(" ", " \t\n ", 3) + "\n"
    assert normalize_mnemonic(messy) == MNEMONIC


@pytest.mark.parametrize("count", [11, 13, 18, 23, 25])
def test_wrong_word_count_is_named(count: int) -> None:
    words = (MNEMONIC.split() * 2)[:count]
    with pytest.raises(InputError) as caught:
        normalize_mnemonic(" ".join(words))
    assert f"has {count} words" in str(caught.value)
    assert "12 or 24" in str(caught.value)


def test_unknown_word_gives_its_position_not_the_word() -> None:
    words = MNEMONIC.split()
    words[6] = "zebrafish"
    with pytest.raises(InputError) as caught:
        normalize_mnemonic(" ".join(words))
    message = str(caught.value)
    assert "position 7" in message
    assert "zebrafish" not in message
    assert not any(word in message.split() for word in MNEMONIC.split())


def test_checksum_mismatch_is_refused() -> None:
    words = MNEMONIC.split()
    words[0], words[1] = words[1], words[0]
    with pytest.raises(InputError) as caught:
        normalize_mnemonic(" ".join(words))
    assert "checksum" in str(caught.value)


def test_seed_matches_the_bip39_reference_vector() -> None:
    # Trezor's reference vector with an empty passphrase.
    seed = mnemonic_to_seed(
        "abandon abandon abandon abandon abandon abandon abandon abandon abandon "
        "abandon abandon about"
    )
    assert seed.hex().startswith(
        "5eb00bbddcf069084889a8ab9155568165f5c453ccb85e70811aaed6f6da5fc1"
    )
