"""Codes as users type them (product.md, "Code batch"): 13 Crockford base32 symbols whose last one catches any
single mistyped character, read without case, spaces or dashes; shown XXXX-XXXX-XXXXX; kept as a keyed hash."""

from __future__ import annotations

import hashlib
import hmac
import random
import re

import pytest

from gateway.codes.format import ALPHABET, LENGTH, canonical, check_symbol, code_hash, new_code, shown

RANDOM_CODES = 300
SHOWN = re.compile(r"[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{5}")


def made(data: str) -> str:
    """A valid code from 12 chosen data symbols."""
    return data + check_symbol(data)


def test_the_alphabet_is_crockfords() -> None:
    assert len(ALPHABET) == len(set(ALPHABET)) == 32
    assert not set(ALPHABET) & set("ILOU")
    assert LENGTH == 13


def test_every_single_substitution_of_a_valid_code_is_rejected() -> None:
    rng = random.Random(20240611)
    codes = [new_code() for _ in range(RANDOM_CODES // 2)]
    codes += [made("".join(rng.choice(ALPHABET) for _ in range(12))) for _ in range(RANDOM_CODES // 2)]
    checked = 0
    for code in codes:
        assert canonical(code) == code
        for position in range(LENGTH):
            for symbol in ALPHABET:
                if symbol == code[position]:
                    continue
                typo = code[:position] + symbol + code[position + 1 :]
                assert canonical(typo) is None, (code, position, symbol)
                assert canonical(shown(typo).lower()) is None, (code, position, symbol)
                checked += 1
    assert checked == RANDOM_CODES * LENGTH * 31


def test_every_substitution_of_the_all_zero_and_all_last_codes_is_rejected() -> None:
    for data in ("0" * 12, "Z" * 12, ALPHABET[:12], ALPHABET[-12:]):
        code = made(data)
        for position in range(LENGTH):
            for symbol in ALPHABET.replace(code[position], ""):
                assert canonical(code[:position] + symbol + code[position + 1 :]) is None


def test_canonical_ignores_case_spaces_and_dashes() -> None:
    for _ in range(50):
        code = new_code()
        spaced = " ".join(code[i : i + 3] for i in range(0, LENGTH, 3))
        for typed in (
            code,
            code.lower(),
            shown(code),
            shown(code).lower(),
            f"  {shown(code)}  ",
            spaced,
            "-".join(code),
            code[:6].lower() + code[6:],
            shown(code).replace("-", " - "),
        ):
            assert canonical(typed) == code, typed


def test_canonical_reads_i_and_l_as_one_and_o_as_zero() -> None:
    code = made("01AB01CD10EF")
    assert canonical(code) == code
    read = {"0": "O", "1": "I"}
    assert canonical("".join(read.get(s, s) for s in code)) == code
    assert canonical("".join({"0": "o", "1": "l"}.get(s, s) for s in code)) == code
    assert canonical(code.replace("1", "L", 1).replace("1", "i", 1)) == code


def test_wrong_lengths_are_rejected() -> None:
    code = new_code()
    for typed in ("", "-", "   ", code[:-1], code[1:], code + "0", "0" + code, code + code, shown(code)[:-1]):
        assert canonical(typed) is None, typed
    for length in range(40):
        if length != LENGTH:
            assert canonical((code * 3)[:length]) is None, length
            assert canonical("0" * length) is None, length  # "0" * 13 would be a valid code


@pytest.mark.parametrize("foreign", ["U", "u", "*", "_", ".", "/", "+", "é", "Ω", "\t", "\n", "\x00", "０"])
def test_foreign_symbols_are_rejected(foreign: str) -> None:
    code = new_code()
    for position in range(LENGTH):
        assert canonical(code[:position] + foreign + code[position + 1 :]) is None, (position, foreign)
    assert canonical(code + foreign) is None


def test_shown_groups_four_four_five() -> None:
    for _ in range(200):
        code = new_code()
        display = shown(code)
        assert SHOWN.fullmatch(display), display
        assert display.replace("-", "") == code
        assert canonical(display) == code
    assert shown("0123456789ABC") == "0123-4567-89ABC"


def test_new_codes_are_thirteen_valid_symbols_and_distinct() -> None:
    codes = [new_code() for _ in range(20_000)]
    assert len(set(codes)) == len(codes)
    for code in codes:
        assert len(code) == LENGTH
        assert set(code) <= set(ALPHABET)
        assert canonical(code) == code
    # 60 random bits: every data symbol takes every value, and the check is spread as well.
    for position in range(LENGTH):
        assert {code[position] for code in codes} == set(ALPHABET), position


def test_code_hash_is_keyed() -> None:
    code = new_code()
    first, other = b"k" * 32, b"j" * 32
    hashed = code_hash(first, code)
    assert hashed == code_hash(first, code)
    assert hashed == hmac.new(first, code.encode(), hashlib.sha256).hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", hashed)
    assert code_hash(other, code) != hashed
    assert hashed != hashlib.sha256(code.encode()).hexdigest()  # not a plain (unkeyed) hash
    assert code_hash(first, new_code()) != hashed
    assert code not in hashed and code.lower() not in hashed
