"""The JSON encoder of payloads and bodies: orjson where it can, the standard library where not."""

import json

from engine.jsontext import json_bytes, json_text


def test_compact_and_utf8_like_the_standard_library():
    row = {"id": "cus_1", "name": "Zoë ✓", "amount": 12.5, "tags": ["a", {"b": None}]}
    expected = json.dumps(row, separators=(",", ":"), ensure_ascii=False)
    assert json_text(row) == expected
    assert json_bytes(row) == expected.encode()


def test_integers_beyond_64_bits_are_kept_exactly():
    row = {"id": "cus_1", "amount": 2**70}
    assert json.loads(json_text(row))["amount"] == 2**70
    assert json.loads(json_bytes(row))["amount"] == 2**70
