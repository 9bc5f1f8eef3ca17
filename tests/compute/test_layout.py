"""The layout header helper, and the binary layouts of compute that keep their bytes through it.

Every expected encoding below was captured from the encoders as they stood before the layouts
shared one header helper; a change to a magic, a version, a field or their order fails here first.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import gmpy2
import numpy as np
import pytest

from bund.compute import insecure, psi
from bund.compute import paillier as pl
from bund.compute.dp import dropout_secagg as sa
from bund.compute.dp import pairwise_masks as pm
from bund.compute.errors import InvalidKeyError, InvalidMessageError
from bund.compute.layout import Header

_P = gmpy2.next_prime(3 * 2**126)
_Q = gmpy2.next_prime(3 * 2**126 + 2**100)
_N = _P * _Q
PUBLIC = pl.PublicKey(_N, gmpy2.powmod(_N * _N - 4, _N, _N * _N))
ADV = sa.Advertised(bytes(range(32)), bytes(range(1, 33)), bytes(range(2, 34)))

KEY_HEX = (
    "424e504b0101009000000c0000000000000000000001da00000b50000000000000000000013edf3a6f6f8233be"
    "55f462c103828bb1bc3c51e3743f4ecd9c91747b464906c17f01b1de578f6530a18c0e85f36bccf592b319ee61"
    "b3f88de11788caec5ce0c91d89"
)


HEADER = Header(b"BTST", 2, reserved=2)


def test_pack_writes_magic_version_and_zero_bytes_then_the_body() -> None:
    assert HEADER.size == 7
    assert HEADER.pack() == b"BTST\x02\x00\x00"
    assert HEADER.pack(b"ab", b"", b"c") == b"BTST\x02\x00\x00abc"
    assert Header(b"BTST", 1).pack(b"x") == b"BTST\x01x"


def test_split_returns_the_body_of_any_bytes_like() -> None:
    data = HEADER.pack(b"body")
    for given in (data, bytearray(data), memoryview(data)):
        body = HEADER.split(given, "a test message")
        assert body == b"body" and isinstance(body, bytes)
    assert HEADER.split(HEADER.pack(), "a test message") == b""


@pytest.mark.parametrize(
    ("data", "found"),
    [
        (b"BTST\x02\x00", "is 6 bytes, shorter than its 7-byte b'BTST' header"),
        (b"", "is 0 bytes, shorter than its 7-byte b'BTST' header"),
        (b"BTSX\x02\x00\x00body", "has magic b'BTSX' version 2, not b'BTST' version 2"),
        (b"BTST\x03\x00\x00body", "has magic b'BTST' version 3, not b'BTST' version 2"),
        (b"BTST\x02\x00\x01body", "has non-zero reserved bytes after its b'BTST' version 2"),
    ],
)
def test_split_refuses_naming_the_layout_and_what_it_found(data: bytes, found: str) -> None:
    with pytest.raises(InvalidMessageError) as caught:
        HEADER.split(data, "a test message")
    assert str(caught.value).startswith(f"a test message {found}")


def test_split_raises_the_class_the_decoder_asks_for() -> None:
    with pytest.raises(InvalidKeyError, match="^a saved key has magic b'XXXX'"):
        HEADER.split(b"XXXX\x02\x00\x00", "a saved key", error=InvalidKeyError)


@pytest.mark.parametrize(
    ("magic", "version", "reserved"),
    [(b"BTS", 1, 0), (b"BTSTX", 1, 0), ("BTST", 1, 0), (b"BTST", 256, 0), (b"BTST", -1, 0),
     (b"BTST", 1, -1), (b"BTST", 1, 17)],
)  # fmt: skip
def test_a_header_is_four_magic_bytes_a_version_byte_and_few_zeros(
    magic: bytes, version: int, reserved: int
) -> None:
    with pytest.raises(ValueError):
        Header(magic, version, reserved)


@pytest.fixture
def small_keys() -> Iterator[None]:
    """The pinned Paillier key has 256 bits: parsing it needs the test-only switch."""
    insecure.enable_insecure_test_parameters()
    yield
    insecure.disable_insecure_test_parameters()


def test_paillier_public_key_bytes(small_keys: None) -> None:
    data = PUBLIC.to_bytes()
    assert data == bytes.fromhex(KEY_HEX)
    assert pl.PublicKey.from_bytes(data) == PUBLIC


def test_paillier_resume_state_bytes(small_keys: None) -> None:
    data = pl.PrivateKey(PUBLIC, _P, _Q).export_for_resume()
    assert data == bytes.fromhex(KEY_HEX + "c00000000000000000000000000000b5")
    assert pl.PrivateKey.from_resume_state(data).public_key == PUBLIC


def test_paillier_vector_bytes() -> None:
    values = [1, 2, _N * _N - 1]
    data = pl.encode_ciphertexts(PUBLIC, values, frac_bits=16)
    assert data[:27].hex() == "424e50430180af652536cb67a5ba8e5f1128c902e4001000000003"
    assert hashlib.sha256(data).hexdigest() == (
        "bae273ff15c17b193401ac0e097e102410774720f8e49fe90a9883a2cd95d694"
    )
    assert pl.decode_ciphertexts(PUBLIC, data, frac_bits=16, max_count=3) == values


def test_psi_header_bytes() -> None:
    header = psi.SetHeader(psi.Disclosure.INTERSECTION, 12345, 2**40, 4096)
    data = psi.encode_header(header)
    assert data.hex() == "42505349010100000000000000003039000001000000000000001000"
    assert psi.decode_header(data) == header


def test_pairwise_mask_layout_bytes() -> None:
    key = pm.encode_public_key(bytes(range(32)))
    assert key.hex() == "4253414b01000000" + bytes(range(32)).hex()
    assert pm.decode_public_key(key) == bytes(range(32))
    vector = np.array([0, 1, 2**64 - 1, 7], dtype=np.uint64)
    data = pm.encode_vector(vector)
    assert data.hex() == (
        "42534156010000000000000400000000000000000100000000000000ffffffffffffffff0700000000000000"
    )
    assert np.array_equal(pm.decode_vector(data, 4), vector)


def test_secagg_keys_and_vector_bytes() -> None:
    keys = sa.encode_advertised(ADV)
    assert keys.hex() == "4253474b01000000" + (ADV.c_public + ADV.s_public + ADV.b_commit).hex()
    assert sa.decode_advertised(keys) == ADV
    vector = np.array([3, 2**63], dtype=np.uint64)
    data = sa.encode_vector(vector)
    assert data.hex() == "42534756010000000000000203000000000000000000000000000080"
    assert np.array_equal(sa.decode_vector(data, 2), vector)


def test_secagg_list_bytes() -> None:
    entry = (ADV.c_public + ADV.s_public + ADV.b_commit).hex()
    roster = sa.encode_roster({1: ADV, 3: ADV})
    assert roster.hex() == "42534752010000020001" + entry + "0003" + entry
    assert sa.decode_roster(roster) == {1: ADV, 3: ADV}
    boxes = {2: bytes(152), 5: bytes(range(152))}
    data = sa.encode_boxes(boxes)
    assert data == bytes.fromhex("42534753010000020002") + bytes(152) + b"\x00\x05" + bytes(
        range(152)
    )
    assert sa.decode_boxes(data) == boxes
    request = sa.encode_request([1, 2], [3])
    assert request.hex() == "4253475101000003000101000201000302"
    assert sa.decode_request(request) == ([1, 2], [3])
    reveal = sa.encode_reveal(sa.Reveal({1: 5}, {2: 2**500}))
    share_b, share_s = (5).to_bytes(66, "big"), (2**500).to_bytes(66, "big")
    assert reveal == bytes.fromhex("4253474101000002010001") + share_b + b"\x02\x00\x02" + share_s
    assert sa.decode_reveal(reveal) == sa.Reveal({1: 5}, {2: 2**500})
