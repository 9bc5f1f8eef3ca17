"""The Fiat–Shamir transcript: deterministic, unambiguous, and its challenges stay in range."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bund.compute.zk.transcript import Transcript, make_context

PARTS = st.lists(st.one_of(st.text(max_size=8), st.binary(max_size=8)), max_size=4)


def _transcript(*records: tuple[str, bytes]) -> Transcript:
    t = Transcript("test/v1")
    for label, data in records:
        t.append_bytes(label, data)
    return t


def test_same_inputs_same_challenges() -> None:
    a = _transcript(("n", b"\x01\x02"), ("w", b"\x03"))
    b = _transcript(("n", b"\x01\x02"), ("w", b"\x03"))
    assert a.challenge_bytes("e", 64) == b.challenge_bytes("e", 64)
    assert a.challenge_ints_below("y", 10**50, 5) == b.challenge_ints_below("y", 10**50, 5)


@pytest.mark.parametrize(
    "other",
    [
        [("n", b"\x01"), ("w", b"\x02\x03")],  # the same bytes split differently
        [("nw", b"\x01\x02\x03")],
        [("n", b"\x01\x02\x03")],
        [("w", b"\x01\x02"), ("n", b"\x03")],  # the same data under swapped labels
        [("n", b"\x01\x02"), ("w", b"\x03"), ("", b"")],
    ],
)
def test_different_inputs_different_challenges(other: list[tuple[str, bytes]]) -> None:
    reference = _transcript(("n", b"\x01\x02"), ("w", b"\x03")).challenge_bytes("e", 32)
    assert _transcript(*other).challenge_bytes("e", 32) != reference


def test_protocol_name_separates_domains() -> None:
    assert Transcript("a/v1").challenge_bytes("e", 32) != Transcript("a/v2").challenge_bytes(
        "e", 32
    )


def test_second_challenge_differs_and_depends_on_the_first_request() -> None:
    t = Transcript("test/v1")
    first, second = t.challenge_bytes("e", 32), t.challenge_bytes("e", 32)
    assert first != second
    u = Transcript("test/v1")
    u.challenge_bytes("e", 16)  # a different request changes what follows
    assert u.challenge_bytes("e", 32) != second


def test_long_challenges_span_several_squeezes() -> None:
    a, b = Transcript("test/v1"), Transcript("test/v1")
    long_a, long_b = a.challenge_bytes("e", 5000), b.challenge_bytes("e", 5000)
    assert len(long_a) == 5000 and long_a == long_b
    assert long_a[:1024] != long_a[1024:2048]  # the stream continues, it does not repeat


@settings(max_examples=100, deadline=None)
@given(
    bound=st.integers(min_value=1, max_value=2**2100),
    count=st.integers(min_value=0, max_value=40),
    seed=st.binary(max_size=16),
)
def test_challenge_ints_lie_below_their_bound(bound: int, count: int, seed: bytes) -> None:
    t = _transcript(("seed", seed))
    values = t.challenge_ints_below("y", bound, count)
    assert len(values) == count and all(0 <= v < bound for v in values)


def test_challenges_cover_their_range() -> None:
    t = Transcript("test/v1")
    bits = t.challenge_bits("e", 2000)
    assert set(bits) == {0, 1} and 900 < sum(bits) < 1100
    small = t.challenge_ints_below("y", 3, 600)
    assert {small.count(v) > 150 for v in range(3)} == {True}
    signed = [t.challenge_signed("s", 2) for _ in range(400)]
    assert set(signed) == set(range(-4, 4))


def test_append_int_checks_its_width() -> None:
    t = Transcript("test/v1")
    t.append_int("x", 255, 1)
    with pytest.raises(ValueError):
        t.append_int("x", 256, 1)
    with pytest.raises(ValueError):
        t.append_int("x", -1, 4)
    with pytest.raises(TypeError):
        t.append_bytes("x", "text")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        t.challenge_ints_below("y", 0, 1)


@settings(max_examples=200, deadline=None)
@given(a=PARTS, b=PARTS)
def test_contexts_are_unambiguous(a: list[str | bytes], b: list[str | bytes]) -> None:
    def normal(parts: list[str | bytes]) -> list[bytes]:
        return [p.encode() if isinstance(p, str) else p for p in parts]

    assert (make_context(*a) == make_context(*b)) == (normal(a) == normal(b))


def test_context_parts_are_text_or_bytes() -> None:
    with pytest.raises(TypeError):
        make_context("job", 7)  # type: ignore[arg-type]
