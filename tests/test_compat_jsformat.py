"""JavaScript JSON.stringify formatting against outputs known from JavaScript."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from vaultstore.compat.jsformat import (
    dumps_compact,
    dumps_pretty,
    is_array_index,
    js_key_order,
    js_number,
    js_string,
)

# (value, what JavaScript's String(value) / JSON.stringify(value) writes)
JS_NUMBERS = [
    (0, "0"),
    (0.0, "0"),
    (-0.0, "0"),
    (1, "1"),
    (-1, "-1"),
    (1.0, "1"),
    (0.1, "0.1"),
    (0.1 + 0.2, "0.30000000000000004"),
    (1 / 3, "0.3333333333333333"),
    (1e-7, "1e-7"),
    (-1.5e-7, "-1.5e-7"),
    (1.234e-7, "1.234e-7"),
    (1e-6, "0.000001"),
    (0.00001, "0.00001"),
    (0.000001234, "0.000001234"),
    (123e-20, "1.23e-18"),
    (5e-324, "5e-324"),
    (1e16, "10000000000000000"),
    (2.0**53, "9007199254740992"),
    (2.0**64, "18446744073709552000"),
    (1e20, "100000000000000000000"),
    (1.2345678901234568e20, "123456789012345680000"),
    (1e21, "1e+21"),
    (1.5e21, "1.5e+21"),
    (1.7976931348623157e308, "1.7976931348623157e+308"),
    (4.35, "4.35"),
    (123.456, "123.456"),
    (-987654.321, "-987654.321"),
    (float("nan"), "null"),
    (float("inf"), "null"),
    (float("-inf"), "null"),
    (Decimal("0.1"), "0.1"),
    (Decimal("1E+400"), "null"),
    (Decimal("1.0"), "1"),
    (Decimal("1e-7"), "1e-7"),
    (2**53, "9007199254740992"),
    (-(2**53), "-9007199254740992"),
]


@pytest.mark.parametrize(("value", "expected"), JS_NUMBERS)
def test_numbers_match_javascript(value: float, expected: str) -> None:
    assert js_number(value) == expected


def test_integers_beyond_the_safe_range_become_strings() -> None:
    assert js_number(2**53 + 1) == '"9007199254740993"'
    assert js_number(-(2**70)) == '"-1180591620717411303424"'


def test_strings_escape_only_what_javascript_escapes() -> None:
    assert js_string('"\\') == '"\\"\\\\"'
    assert js_string("\b\f\n\r\t") == '"\\b\\f\\n\\r\\t"'
    assert js_string("\x00\x01\x1f") == '"\\u0000\\u0001\\u001f"'
    literal = "/ \x7f é ✓ 日本 \u2028 \u2029 \U0001f600 </script>"
    assert js_string(literal) == '"' + literal + '"'
    assert js_string("a\ud800b\udfff") == '"a\\ud800b\\udfff"'


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("0", True),
        ("7", True),
        ("20260101", True),
        ("4294967294", True),
        ("4294967295", False),
        ("007", False),
        ("-1", False),
        ("1.5", False),
        ("", False),
        ("١٢", False),
        ("1e3", False),
        (" 1", False),
    ],
)
def test_array_index_keys(key: str, expected: bool) -> None:
    assert is_array_index(key) is expected


def test_key_order_puts_index_keys_first_ascending() -> None:
    assert js_key_order(["a", "b"]) is None
    assert js_key_order(["2", "10", "x"]) is None
    assert js_key_order(["b", "10", "2", "007", "a", "0"]) == [
        "0",
        "2",
        "10",
        "b",
        "007",
        "a",
    ]


def test_compact_and_pretty_layout() -> None:
    value = {"b": [1, {}, [], {"10": None, "2": True}], "a": {}, "1": "x"}
    assert dumps_compact(value) == '{"1":"x","b":[1,{},[],{"2":true,"10":null}],"a":{}}'
    expected = json.dumps(
        {"1": "x", "b": [1, {}, [], {"2": True, "10": None}], "a": {}}, indent=2
    )
    assert dumps_pretty(value) == expected


def test_pretty_matches_python_for_plain_values_at_any_level() -> None:
    value = {"k": ["a", 1, {"z": "é\n"}], "e": []}
    nested = dumps_pretty(value, 2)
    plain = json.dumps(value, indent=2, ensure_ascii=False)
    assert nested == plain.replace("\n", "\n    ")
