"""JavaScript ``JSON.stringify`` formatting, byte for byte.

The legacy wallet service (``compat/FORMAT.md``) writes its backups with
``JSON.stringify(value, replacer, 2)`` and checksums the compact form. Python's
``json`` module differs from it in three places, handled here:

- **Numbers** follow ECMAScript Number::toString: the shortest round-trip
  digits (the same digits ``repr(float)`` finds) laid out JavaScript's way —
  plain notation for decimal exponents in [-6, 21), otherwise ``1e-7``,
  ``1.5e+21``; ``-0`` is written ``0``; NaN and infinities are ``null``.
  ``Decimal`` values (what ijson yields) are rounded to the nearest double
  first, as JavaScript's parser would.
- **Integers** up to 2^53 in magnitude are written in decimal. Larger Python
  ints are written as decimal *strings*, as the service's replacer does for
  integers beyond the safe range: writing them as numbers would make the
  service parse them as doubles and fail the checksum.
- **Key order**: keys that are canonical array indices (``"0"``, ``"7"``,
  ``"20260101"``; not ``"007"`` or ``"-1"``; at most 2^32-2) come first in
  ascending numeric order, then all other keys in insertion order.

Strings escape only ``"``, ``\\`` and U+0000-U+001F (``\\b \\f \\n \\r \\t``,
others as lowercase ``\\u00xx``); ``/``, U+2028, non-ASCII and astral
characters stay literal. A lone surrogate (which UTF-8 cannot carry) is
escaped as ``\\udxxx``, as ES2019 well-formed ``JSON.stringify`` does.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from json.encoder import encode_basestring
from typing import Any

from vaultstore.errors import InputError

__all__ = [
    "MAX_SAFE",
    "MAX_DEPTH",
    "is_array_index",
    "js_number",
    "js_string",
    "js_key_order",
    "dumps_compact",
    "dumps_pretty",
    "dumps_pair",
    "encode_utf8",
    "fix_surrogates",
]

MAX_SAFE = 2**53
MAX_ARRAY_INDEX = 2**32 - 2
MAX_DEPTH = 200  # nesting beyond this is refused, not recursed into

_SURROGATE = re.compile("[\ud800-\udfff]")


def is_array_index(key: str) -> bool:
    """True if ``key`` is a canonical array index as JavaScript defines it."""
    if not key or not key.isascii() or not key.isdigit():
        return False
    if len(key) > 1 and key[0] == "0":
        return False
    return len(key) <= 10 and int(key) <= MAX_ARRAY_INDEX


def js_key_order(keys: list[str]) -> list[str] | None:
    """The keys in JavaScript property order, or None if already in it."""
    index_keys = [k for k in keys if k[:1].isdigit() and is_array_index(k)]
    if not index_keys:
        return None
    index_keys.sort(key=int)
    ordered = index_keys + [k for k in keys if not is_array_index(k)]
    return None if ordered == keys else ordered


def js_number(value: float | int | Decimal) -> str:
    """A number as JavaScript's Number::toString writes it."""
    if type(value) is int:
        if -MAX_SAFE <= value <= MAX_SAFE:
            return str(value)
        return encode_basestring(str(value))
    x = float(value)  # Decimal -> nearest double, as a JS parser rounds
    if math.isnan(x) or math.isinf(x):
        return "null"
    if x == 0:
        return "0"  # also -0
    if x.is_integer() and abs(x) <= MAX_SAFE:
        return str(int(x))
    return _format_double(x)


def _format_double(x: float) -> str:
    sign = "-" if x < 0 else ""
    mantissa, _, exp_text = repr(abs(x)).partition("e")
    whole, _, frac = mantissa.partition(".")
    all_digits = whole + frac
    stripped = all_digits.lstrip("0")
    # s * 10**(n - k) == |x| with k significant digits s (ECMA-262 Number::toString)
    n = len(whole) + int(exp_text or 0) - (len(all_digits) - len(stripped))
    digits = stripped.rstrip("0")
    k = len(digits)
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return sign + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * (-n) + digits
    e = n - 1
    exp = ("+" if e >= 0 else "-") + str(abs(e))
    if k == 1:
        return sign + digits + "e" + exp
    return sign + digits[0] + "." + digits[1:] + "e" + exp


def js_string(value: str) -> str:
    """A string literal as JSON.stringify writes it (lone surrogates escaped)."""
    out: str = encode_basestring(value)
    if _SURROGATE.search(out) is None:
        return out
    return fix_surrogates(out)


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return js_string(value)
    if isinstance(value, (int, float, Decimal)):
        return js_number(value)
    raise InputError(f"cannot write a value of type {type(value).__name__} as JSON")


def _items(obj: dict[str, Any]) -> list[tuple[str, Any]]:
    keys = list(obj)
    for key in keys:
        if not isinstance(key, str):
            raise InputError(f"object key {key!r} is not a string")
    order = js_key_order(keys)
    if order is None:
        return list(obj.items())
    return [(k, obj[k]) for k in order]


_KEYS: dict[str, str] = {}  # key -> encoded key, for keys that are not indices
_KEY_CACHE_LIMIT = 4096


def _key(key: Any) -> str | None:
    """The encoded key, or None if it is index-like (the object needs reordering)."""
    encoded = _KEYS.get(key)
    if encoded is not None:
        return encoded
    if not isinstance(key, str):
        raise InputError(f"object key {key!r:.40} is not a string")
    if key[:1].isdigit() and is_array_index(key):
        return None
    encoded = encode_basestring(key)
    if len(_KEYS) < _KEY_CACHE_LIMIT:
        _KEYS[key] = encoded
    return encoded


def _pair(value: Any, level: int) -> tuple[str, str]:
    """(compact, pretty) of a dict or list; ``level`` is its nesting depth."""
    if level > MAX_DEPTH:
        raise InputError(f"JSON nested deeper than {MAX_DEPTH} levels")
    compact: list[str] = []
    pretty: list[str] = []
    if isinstance(value, dict):
        if not value:
            return "{}", "{}"
        for key, item in value.items():
            name = _KEYS.get(key)
            if name is None:
                name = _key(key)
                if name is None:  # an index-like key: JavaScript reorders
                    return _pair_reordered(value, level)
            t = type(item)
            if t is str:
                c = p = encode_basestring(item)
            elif t is int and -MAX_SAFE <= item <= MAX_SAFE:
                c = p = str(item)
            elif t is dict or t is list or isinstance(item, (dict, list, tuple)):
                c, p = _pair(item, level + 1)
            else:
                c = p = _scalar(item)
            compact.append(name + ":" + c)
            pretty.append(name + ": " + p)
        inner = "\n" + "  " * (level + 1)
        return (
            "{" + ",".join(compact) + "}",
            "{" + inner + ("," + inner).join(pretty) + "\n" + "  " * level + "}",
        )
    if not value:
        return "[]", "[]"
    for item in value:
        t = type(item)
        if t is str:
            c = p = encode_basestring(item)
        elif t is int and -MAX_SAFE <= item <= MAX_SAFE:
            c = p = str(item)
        elif t is dict or t is list or isinstance(item, (dict, list, tuple)):
            c, p = _pair(item, level + 1)
        else:
            c = p = _scalar(item)
        compact.append(c)
        pretty.append(p)
    inner = "\n" + "  " * (level + 1)
    return (
        "[" + ",".join(compact) + "]",
        "[" + inner + ("," + inner).join(pretty) + "\n" + "  " * level + "]",
    )


def _compact_fast(value: Any, level: int) -> str:
    """Compact form only (the reader's checksum needs no pretty form)."""
    if level > MAX_DEPTH:
        raise InputError(f"JSON nested deeper than {MAX_DEPTH} levels")
    parts: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            name = _KEYS.get(key)
            if name is None:
                name = _key(key)
                if name is None:
                    return _pair_reordered(value, level)[0]
            t = type(item)
            if t is str:
                parts.append(name + ":" + encode_basestring(item))
            elif t is int and -MAX_SAFE <= item <= MAX_SAFE:
                parts.append(name + ":" + str(item))
            elif isinstance(item, (dict, list, tuple)):
                parts.append(name + ":" + _compact_fast(item, level + 1))
            else:
                parts.append(name + ":" + _scalar(item))
        return "{" + ",".join(parts) + "}"
    for item in value:
        t = type(item)
        if t is str:
            parts.append(encode_basestring(item))
        elif t is int and -MAX_SAFE <= item <= MAX_SAFE:
            parts.append(str(item))
        elif isinstance(item, (dict, list, tuple)):
            parts.append(_compact_fast(item, level + 1))
        else:
            parts.append(_scalar(item))
    return "[" + ",".join(parts) + "]"


def _pair_reordered(value: dict[str, Any], level: int) -> tuple[str, str]:
    compact: list[str] = []
    pretty: list[str] = []
    for key, item in _items(value):
        c, p = _value_pair(item, level + 1)
        name = js_string(key)
        compact.append(name + ":" + c)
        pretty.append(name + ": " + p)
    inner = "\n" + "  " * (level + 1)
    return (
        "{" + ",".join(compact) + "}",
        "{" + inner + ("," + inner).join(pretty) + "\n" + "  " * level + "}",
    )


def _value_pair(value: Any, level: int) -> tuple[str, str]:
    if isinstance(value, (dict, list, tuple)):
        return _pair(value, level)
    text = _scalar(value)
    return text, text


def fix_surrogates(text: str) -> str:
    """Escape lone surrogates (which UTF-8 cannot carry) as JavaScript does."""
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def encode_utf8(text: str) -> bytes:
    """UTF-8 bytes of serialized JSON, escaping any lone surrogate first."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return fix_surrogates(text).encode("utf-8")


def dumps_compact(value: Any) -> str:
    """``JSON.stringify(value)`` (lone surrogates left for :func:`encode_utf8`)."""
    if isinstance(value, (dict, list, tuple)):
        return _compact_fast(value, 0)
    return _scalar(value)


def dumps_pretty(value: Any, level: int = 0) -> str:
    """``JSON.stringify(value, null, 2)``, as if nested ``level`` deep."""
    return _value_pair(value, level)[1]


def dumps_pair(value: Any, level: int = 0) -> tuple[str, str]:
    """(compact, pretty) serializations of one value, in one walk."""
    return _value_pair(value, level)
