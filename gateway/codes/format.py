"""One-time codes as users see them (product.md): 13 characters of Crockford base32, 60 random bits then a
check character from the same alphabet, shown ``XXXX-XXXX-XXXXX``; case, spaces and dashes are ignored on
input (and Crockford's readings of I, L as 1 and O as 0). Stored only as a keyed hash (``code_hash``).

The check character is the weighted sum of the 12 data symbols mod 32 with odd weights: an odd weight is a
unit mod 32, so changing any one symbol (the check character included) always changes the check.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_VALUE = {symbol: value for value, symbol in enumerate(ALPHABET)}
_VALUE.update({"I": 1, "L": 1, "O": 0})
DATA_SYMBOLS = 12  # 60 bits
LENGTH = DATA_SYMBOLS + 1
_WEIGHTS = [2 * i + 1 for i in range(DATA_SYMBOLS)]  # 1, 3, 5, ... 23: all odd


def check_symbol(data: str) -> str:
    total = sum(_VALUE[symbol] * weight for symbol, weight in zip(data, _WEIGHTS, strict=True))
    return ALPHABET[total % 32]


def new_code() -> str:
    """A fresh code in canonical form (13 symbols, no dashes)."""
    bits = secrets.randbits(5 * DATA_SYMBOLS)
    data = "".join(ALPHABET[(bits >> (5 * i)) & 31] for i in range(DATA_SYMBOLS))
    return data + check_symbol(data)


def shown(code: str) -> str:
    """``XXXX-XXXX-XXXXX``."""
    return f"{code[:4]}-{code[4:8]}-{code[8:]}"


def cleaned(typed: str) -> str:
    """What the user typed without case, spaces or dashes."""
    return typed.replace("-", "").replace(" ", "").upper()


def canonical(typed: str) -> str | None:
    """What the user typed, in canonical form; None when it cannot be a code (wrong length or symbols, or a
    check character that does not match)."""
    symbols = cleaned(typed)
    if len(symbols) != LENGTH or any(symbol not in _VALUE for symbol in symbols):
        return None
    code = "".join(ALPHABET[_VALUE[symbol]] for symbol in symbols)
    return code if check_symbol(code[:DATA_SYMBOLS]) == code[DATA_SYMBOLS] else None


def code_hash(key: bytes, code: str) -> str:
    """The only form a code is kept in (Redis, Postgres): HMAC-SHA256 under the deployment's code key."""
    return hmac.new(key, code.encode(), hashlib.sha256).hexdigest()
