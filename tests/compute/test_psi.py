"""ECDH-PSI maths: hashing, blinding, validation, intersection, header layout."""

from __future__ import annotations

import copy
import hashlib
import pickle
from collections.abc import Callable, Sequence
from typing import TypeVar

import gmpy2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.bindings import crypto_core_ed25519_from_uniform

from bund.compute.errors import InvalidMessageError, InvalidPointError
from bund.compute.executor import Executor, InlineExecutor, ProcessExecutor, ThreadExecutor
from bund.compute.psi import (
    FIELD_PRIME,
    HASH_DOMAIN,
    LOW_ORDER_POINTS,
    MAX_CHUNK_POINTS,
    Disclosure,
    SetHeader,
    as_point_array,
    blind,
    blind_array,
    bucket_of,
    cardinality,
    create_blinding_key,
    decode_header,
    encode_header,
    hash_and_blind,
    hash_and_blind_array,
    hash_to_points,
    intersect_indices,
    normalise_ids,
    validate_point_array,
    validate_points,
)

T = TypeVar("T")
R = TypeVar("R")
P = FIELD_PRIME
A = 486662
#: Order of the prime-order subgroup of Curve25519.
ELL = 2**252 + 27742317777372353535851937790883648493
CTX = b"job-1"

# Ids that overlap often: case, surrounding whitespace and non-ASCII all matter.
POOL = [
    "91310000MA1FL0001",
    "91310000MA1FL0002",
    " 91310000MA1FL0001 ",
    "abc",
    "ABC",
    "公司-7",
    "",
    "   ",
    "x,y",
    'q"uote',
]
ids = st.lists(st.sampled_from(POOL) | st.text(max_size=5), max_size=16)


def ladder(k: int, u: int) -> tuple[int, int]:
    """Projective (X:Z) of [k]P on Curve25519 from u(P), RFC 7748 ladder without clamping."""
    x2, z2, x3, z3, swap = 1, 0, u, 1, 0
    for t in reversed(range(k.bit_length())):
        bit = (k >> t) & 1
        if swap ^ bit:
            x2, x3, z2, z3 = x3, x2, z3, z2
        swap = bit
        a, b, c, d = x2 + z2, x2 - z2, x3 + z3, x3 - z3
        aa, bb, da, cb = a * a % P, b * b % P, d * a % P, c * b % P
        e = aa - bb
        x3, z3 = (da + cb) ** 2 % P, u * (da - cb) ** 2 % P
        x2, z2 = aa * bb % P, e * (aa + 121665 * e) % P
    if swap:
        x2, z2 = x3, z3
    return x2, z2


def as_int(point: bytes) -> int:
    return int.from_bytes(point, "little")


def as_point(u: int) -> bytes:
    return u.to_bytes(32, "little")


def twist_point() -> bytes:
    u = next(u for u in range(2, 100) if gmpy2.jacobi(u**3 + A * u * u + u, P) == -1)
    return as_point(u)


def plaintext(values: list[str]) -> set[str]:
    return {v.strip() for v in values if v.strip()}


def run_two_parties(a_ids: list[str], b_ids: list[str]) -> tuple[list[bytes], list[int], int]:
    """Both parties' maths in one process, as the protocol does it over the wire."""
    a_items, b_items = normalise_ids(a_ids).items, normalise_ids(b_ids).items
    ka, kb = create_blinding_key(), create_blinding_key()
    ya = b"".join(blind(hash_to_points(a_items, CTX), ka))
    yb = b"".join(blind(hash_to_points(b_items, CTX), kb))
    za = blind(validate_points(ya, len(a_items)), kb)  # B re-blinds A's set and returns it
    wa = blind(validate_points(yb, len(b_items)), ka)  # A re-blinds B's set for itself
    za = validate_points(b"".join(za), len(a_items))
    return a_items, intersect_indices(za, wa), cardinality(za, wa)


@settings(max_examples=40, deadline=None)
@given(ids, ids)
def test_matches_plaintext_intersection(a_ids: list[str], b_ids: list[str]) -> None:
    a_items, positions, size = run_two_parties(a_ids, b_ids)
    expected = plaintext(a_ids) & plaintext(b_ids)
    assert {a_items[i].decode() for i in positions} == expected
    assert size == len(expected)


@settings(max_examples=15, deadline=None)
@given(st.lists(st.binary(max_size=40), min_size=1, max_size=8, unique=True))
def test_blinding_commutes(items: list[bytes]) -> None:
    points = hash_to_points(items, CTX)
    k1, k2 = create_blinding_key(), create_blinding_key()
    assert blind(blind(points, k1), k2) == blind(blind(points, k2), k1)
    assert blind(points, k1) != blind(points, k2)


def test_hash_is_deterministic_per_context_and_differs_across_contexts() -> None:
    items = [b"91310000MA1FL0001", b"91310000MA1FL0002", b""]
    assert hash_to_points(items, CTX) == hash_to_points(items, CTX)
    other = hash_to_points(items, b"job-2")
    assert not set(other) & set(hash_to_points(items, CTX))
    assert len(set(other)) == len(items)


def test_hash_rejects_long_context() -> None:
    with pytest.raises(ValueError, match="255"):
        hash_to_points([b"x"], b"c" * 256)


def test_hash_agrees_with_libsodium_elligator2_up_to_the_cofactor() -> None:
    """[8]u(ours) is libsodium's from_uniform point (cofactor cleared) in Montgomery form."""
    for i in range(64):
        item = f"id-{i}".encode()
        digest = hashlib.sha512(HASH_DOMAIN + bytes([len(CTX)]) + CTX + item).digest()
        r = int.from_bytes(digest, "little") % P
        edwards = crypto_core_ed25519_from_uniform(as_point(r))
        y = as_int(edwards) & ((1 << 255) - 1)
        expected = (1 + y) * pow(1 - y, -1, P) % P
        x, z = ladder(8, as_int(hash_to_points([item], CTX)[0]))
        assert x * pow(z, -1, P) % P == expected


def test_hashed_points_lie_on_the_curve_and_blinding_lands_in_the_prime_order_subgroup() -> None:
    points = hash_to_points([f"id-{i}".encode() for i in range(32)], CTX)
    validate_points(b"".join(points), len(points))
    # Elligator output usually carries a torsion component; the clamped scalar removes it.
    assert any(ladder(ELL, as_int(u))[1] != 0 for u in points)
    for q in blind(points, create_blinding_key()):
        assert ladder(ELL, as_int(q))[1] == 0


def test_validate_accepts_and_splits_honest_points() -> None:
    points = blind(hash_to_points([b"a", b"b", b"c"], CTX), create_blinding_key())
    assert validate_points(b"".join(points), 3) == points
    assert validate_points(b"", 0) == []


@pytest.mark.parametrize(
    ("payload_len", "count"), [(33, 1), (31, 1), (64, 1), (32, 2), (0, 1), (32, -1)]
)
def test_validate_rejects_wrong_length_or_count(payload_len: int, count: int) -> None:
    payload = (hash_to_points([b"a", b"b", b"c"], CTX)[0] * 3)[:payload_len]
    with pytest.raises(InvalidPointError, match="expected"):
        validate_points(payload, count)


@pytest.mark.parametrize("u", [P, P + 1, 2**255 - 1, 2**255 + 9, 2**256 - 1])
def test_validate_rejects_non_canonical_u(u: int) -> None:
    with pytest.raises(InvalidPointError, match="canonical"):
        validate_points(u.to_bytes(32, "little"), 1)


def test_validate_rejects_twist_point() -> None:
    with pytest.raises(InvalidPointError, match="twist"):
        validate_points(twist_point(), 1)


@pytest.mark.parametrize("point", sorted(LOW_ORDER_POINTS))
def test_validate_rejects_low_order_points(point: bytes) -> None:
    good = hash_to_points([b"a"], CTX)[0]
    with pytest.raises(InvalidPointError, match="low order"):
        validate_points(good + point, 2)


def test_low_order_list_is_exactly_what_x25519_refuses() -> None:
    assert {as_int(p) for p in LOW_ORDER_POINTS} >= {0, 1}
    key = create_blinding_key()
    for point in LOW_ORDER_POINTS:
        with pytest.raises(InvalidPointError, match="low order"):
            blind([point], key)  # cryptography's all-zero refusal, mapped


def test_blind_maps_malformed_point_to_invalid_point_error() -> None:
    with pytest.raises(InvalidPointError):
        blind([b"\x09" * 31], create_blinding_key())


def test_validate_rejects_duplicates_within_and_across_chunks() -> None:
    a, b = hash_to_points([b"a", b"b"], CTX)
    with pytest.raises(InvalidPointError, match="repeats"):
        validate_points(a + b + a, 3)
    seen: set[bytes] = set()
    validate_points(a, 1, seen)
    with pytest.raises(InvalidPointError, match="repeats"):
        validate_points(b + a, 2, seen)


def test_compared_only_skips_the_twist_check_and_nothing_else() -> None:
    twist, good = twist_point(), hash_to_points([b"a"], CTX)[0]
    assert validate_points(twist, 1, compared_only=True) == [twist]
    for payload, count, message in [
        (as_point(P), 1, "canonical"),
        (as_point(1), 1, "low order"),
        (good + good, 2, "repeats"),
        (good, 2, "expected"),
    ]:
        with pytest.raises(InvalidPointError, match=message):
            validate_points(payload, count, compared_only=True)


def test_blinding_key_is_never_serialised() -> None:
    key = create_blinding_key()
    with pytest.raises(TypeError):
        pickle.dumps(key)
    with pytest.raises(TypeError):
        copy.deepcopy(key)
    with pytest.raises(TypeError):
        copy.copy(key)
    assert repr(key) == "BlindingKey(<secret>)"


def test_normalise_strips_skips_blanks_and_deduplicates() -> None:
    got = normalise_ids([" 9131 ", "9131", "", "  ", "\t公司\n", "ABC", "abc", "9131"])
    assert got.items == [b"9131", "公司".encode(), b"ABC", b"abc"]
    assert (got.blanks, got.duplicates) == (2, 2)


def test_intersection_kernels() -> None:
    own, peer = [b"a" * 32, b"b" * 32, b"c" * 32], [b"c" * 32, b"z" * 32, b"a" * 32]
    assert intersect_indices(own, peer) == [0, 2]
    assert cardinality(own, peer) == 2
    assert intersect_indices([], peer) == [] and cardinality(own, []) == 0


def test_header_round_trip_and_chunks() -> None:
    header = SetHeader(Disclosure.INTERSECTION, 2 * MAX_CHUNK_POINTS + 5, 10**6, MAX_CHUNK_POINTS)
    assert decode_header(encode_header(header)) == header
    assert header.chunk_sizes == [MAX_CHUNK_POINTS, MAX_CHUNK_POINTS, 5]
    assert SetHeader(Disclosure.CARDINALITY, 0, 0, 1).chunk_sizes == []


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b[:-1],
        lambda b: b"XPSI" + b[4:],
        lambda b: b[:4] + b"\x02" + b[5:],
        lambda b: b[:5] + b"\x07" + b[6:],
        lambda b: b[:6] + b"\x00\x01" + b[8:],
        lambda b: b[:-4] + b"\x00\x00\x00\x00",
        lambda b: b[:-4] + (MAX_CHUNK_POINTS + 1).to_bytes(4, "big"),
        lambda b: b[:8] + b"\xff" * 8 + b[16:],
    ],
)
def test_header_rejects_malformed(mutate: object) -> None:
    good = encode_header(SetHeader(Disclosure.CARDINALITY, 10, 100, 8))
    with pytest.raises(InvalidMessageError):
        decode_header(mutate(good))  # type: ignore[operator]


# --- executors: the same points wherever the batches run ---


class PicklingExecutor(Executor):
    """Runs batches here but, like a process pool or Ray, only on pickled copies of everything."""

    def __init__(self, workers: int) -> None:
        self._workers = workers
        self.sent: list[bytes] = []

    @property
    def workers(self) -> int:
        return self._workers

    def map(self, fn: Callable[[T], R], batches: Sequence[T]) -> list[R]:
        self.sent.append(pickle.dumps(fn))
        copy_of_fn: Callable[[T], R] = pickle.loads(self.sent[-1])
        return [copy_of_fn(pickle.loads(pickle.dumps(b))) for b in batches]

    def close(self) -> None:
        pass


@pytest.mark.parametrize("executor", [InlineExecutor(), ThreadExecutor(3), PicklingExecutor(4)])
def test_hash_and_blind_on_any_executor_equals_inline(executor: Executor) -> None:
    items = [f"id-{i}".encode() for i in range(37)]
    key = create_blinding_key()
    expected = blind(hash_to_points(items, CTX), key)
    assert hash_and_blind(items, CTX, key, executor) == expected
    assert blind(expected, key, executor) == blind(expected, key)
    assert hash_and_blind([], CTX, key, executor) == []
    executor.close()


def test_only_out_of_process_executors_get_the_scalar_and_the_key_object_never() -> None:
    key = create_blinding_key()
    points = hash_to_points([b"a", b"b"], CTX)
    out_of_process = PicklingExecutor(2)
    blind(points, key, out_of_process)
    shipped = pickle.loads(out_of_process.sent[0])
    assert type(shipped.args[0]).__name__ == "_WorkerKey"
    assert "secret" in repr(shipped.args[0])
    with pytest.raises(TypeError):
        pickle.dumps(key)  # the job's key object itself still refuses


def test_process_workers_blind_like_inline_and_report_invalid_points() -> None:
    items = [f"91310000MA1K{i:06d}".encode() for i in range(300)]
    key = create_blinding_key()
    with ProcessExecutor(2) as ex:
        points = hash_and_blind(items, CTX, key, ex)
        assert points == blind(hash_to_points(items, CTX), key)
        with pytest.raises(InvalidPointError, match="low order"):
            blind([*points[:5], bytes(32)], key, ex)


def test_hash_and_blind_rejects_long_context() -> None:
    with pytest.raises(ValueError, match="255"):
        hash_and_blind([b"x"], bytes(256), create_blinding_key())
    with pytest.raises(TypeError):
        blind([], object())  # type: ignore[arg-type]


@pytest.mark.parametrize("executor", [InlineExecutor(), ThreadExecutor(3), PicklingExecutor(4)])
def test_packed_arrays_hold_exactly_the_points_of_the_lists(executor: Executor) -> None:
    items = [f"id-{i}".encode() for i in range(53)]
    key = create_blinding_key()
    expected = hash_and_blind(items, CTX, key)
    packed = hash_and_blind_array(items, CTX, key, executor)
    assert packed.dtype == "S32" and packed.tobytes() == b"".join(expected)
    assert blind_array(packed, key, executor).tobytes() == b"".join(blind(expected, key))
    assert blind_array(as_point_array(b""), key, executor).size == 0
    executor.close()


def test_buckets_in_order_each_sorted_are_the_whole_set_sorted() -> None:
    points = hash_and_blind_array(
        [f"x{i}".encode() for i in range(2000)], CTX, create_blinding_key()
    )
    for bits in (0, 1, 4, 9, 16):
        which = bucket_of(points, bits)
        assert which.min() >= 0 and which.max() < 1 << bits
        joined = b"".join(np.sort(points[which == b]).tobytes() for b in range(1 << bits))
        assert joined == b"".join(sorted(points[i : i + 1].tobytes() for i in range(2000)))
    with pytest.raises(ValueError, match="bits"):
        bucket_of(points, 17)


def test_an_ascending_set_is_checked_without_a_set_of_seen_points() -> None:
    points = sorted(
        hash_and_blind([f"x{i}".encode() for i in range(6)], CTX, create_blinding_key())
    )
    payload = b"".join(points)
    assert validate_point_array(payload, 6, ascending=True).tobytes() == payload
    tail = validate_point_array(b"".join(points[3:]), 3, ascending=True, ascending_after=points[2])
    assert tail.size == 3
    with pytest.raises(InvalidPointError, match="repeats"):
        validate_point_array(points[0] + points[0] + points[1], 3, ascending=True)
    with pytest.raises(InvalidPointError, match="repeats"):  # across the chunk boundary
        validate_point_array(b"".join(points[2:4]), 2, ascending=True, ascending_after=points[2])
    with pytest.raises(InvalidPointError, match="ascending order"):
        validate_point_array(points[1] + points[0], 2, ascending=True)
    with pytest.raises(InvalidPointError, match="ascending order"):
        validate_point_array(points[0], 1, ascending=True, ascending_after=points[5])
    # Unsorted is fine when the caller checks repeats itself; every other check still runs.
    assert validate_point_array(points[1] + points[0], 2).size == 2
    with pytest.raises(InvalidPointError, match="twist"):
        validate_point_array(twist_point(), 1)
    with pytest.raises(InvalidPointError, match="low order"):
        validate_point_array(bytes(32), 1, compared_only=True)


def test_blinding_with_the_curve_check_refuses_a_twist_point_in_its_batch() -> None:
    key = create_blinding_key()
    good = hash_and_blind_array([b"a", b"b"], CTX, key)
    assert blind_array(good, key, check_curve=True).tobytes() == blind_array(good, key).tobytes()
    bad = np.concatenate([good, as_point_array(twist_point())])
    with ThreadExecutor(2) as ex, pytest.raises(InvalidPointError, match="twist"):
        blind_array(bad, key, ex, check_curve=True)
