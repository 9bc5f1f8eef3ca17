"""Multi-party PSI maths: the OPRF round trip, zero-sharing, hints, tags and their layouts."""

from __future__ import annotations

import copy
import os
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bund.compute import mpsi, okvs, psi
from bund.compute.errors import InvalidMessageError, InvalidPointError

CONTEXT = bytes(range(32))
ITEMS = [f"91310000MA{i:08d}".encode() for i in range(64)]


def test_query_blind_inverts_and_the_oprf_matches_the_holders_own_evaluation() -> None:
    blinds = mpsi.query_blind(mpsi.create_mpsi_secret())
    r = int.from_bytes(blinds.blind_key.export_for_resume(), "little")
    u = int.from_bytes(blinds.unblind_key.export_for_resume(), "little")
    # Both are X25519 scalars as OpenSSL uses them (clamping changes nothing), inverse mod l.
    for s in (r, u):
        assert s % 8 == 0 and 2**254 <= s < 2**255
    assert r * u % mpsi.GROUP_ORDER == 1
    key = mpsi.oprf_key(mpsi.create_mpsi_secret())
    query = blinds.blind_items(ITEMS, CONTEXT)
    answers = psi.blind(query, key)
    assert blinds.unblind(answers) == psi.hash_and_blind(ITEMS, CONTEXT, key)
    # The query itself is not the holder's evaluation, nor the plain hash.
    assert set(query).isdisjoint(psi.hash_and_blind(ITEMS, CONTEXT, key))
    assert set(query).isdisjoint(psi.hash_to_points(ITEMS, CONTEXT))


def test_the_secret_derives_everything_deterministically_and_never_serialises() -> None:
    secret = mpsi.create_mpsi_secret()
    again = mpsi.MpsiSecret.from_resume_state(secret.export_for_resume())
    assert again.derive(b"x", 100) == secret.derive(b"x", 100)
    assert secret.derive(b"x") != secret.derive(b"y")
    for blinds in (mpsi.query_blind(again), mpsi.query_blind(secret)):
        assert blinds.unblind_key.export_for_resume() == (
            mpsi.query_blind(secret).unblind_key.export_for_resume()
        )
    assert mpsi.oprf_key(again).export_for_resume() == mpsi.oprf_key(secret).export_for_resume()
    assert "secret" in repr(secret) and secret.export_for_resume().hex() not in repr(secret)
    for attempt in (pickle.dumps, copy.copy, copy.deepcopy):
        with pytest.raises(TypeError):
            attempt(secret)
    with pytest.raises(TypeError):
        pickle.dumps(mpsi.ZeroSharingKey(secret))
    with pytest.raises(ValueError, match="32 bytes"):
        mpsi.MpsiSecret(bytes(31))


@pytest.mark.parametrize("members", [2, 3, 4])
def test_zero_shares_of_all_members_xor_to_zero_and_each_looks_random(members: int) -> None:
    names = [f"m{i}" for i in range(members)]
    keys = {n: mpsi.ZeroSharingKey(mpsi.create_mpsi_secret()) for n in names}
    shares = []
    for me in names:
        seeds = [
            keys[me].pairwise_seed(keys[o].public_bytes(), CONTEXT, me, o) for o in names if o != me
        ]
        shares.append(mpsi.zero_shares(ITEMS, seeds))
    total = np.bitwise_xor.reduce(np.stack(shares), axis=0)
    assert not total.any()
    for share in shares:  # no share is zero
        assert share.all(axis=1).all()
    # Two members share one pair key, so their shares are equal; from three on, no two are.
    distinct = all(not np.array_equal(a, b) for i, a in enumerate(shares) for b in shares[i + 1 :])
    assert distinct is (members > 2)
    # Leave one member out and the XOR is far from zero: the sharing is not trivial.
    assert np.bitwise_xor.reduce(np.stack(shares[1:]), axis=0).all(axis=1).all()


def test_pairwise_seed_is_symmetric_bound_to_the_job_and_refuses_low_order_keys() -> None:
    a, b = (mpsi.ZeroSharingKey(mpsi.create_mpsi_secret()) for _ in range(2))
    ab = a.pairwise_seed(b.public_bytes(), CONTEXT, "tax", "registry")
    assert ab == b.pairwise_seed(a.public_bytes(), CONTEXT, "registry", "tax")
    assert ab != a.pairwise_seed(b.public_bytes(), bytes(32), "tax", "registry")
    for bad in (bytes(32), (1).to_bytes(32, "little"), bytes(31)):
        with pytest.raises(InvalidPointError):
            a.pairwise_seed(bad, CONTEXT, "tax", "registry")


@settings(max_examples=20, deadline=None)
@given(st.sets(st.binary(min_size=1, max_size=8), max_size=60))
def test_a_hint_decodes_to_its_values_and_is_deterministic(key_set: set[bytes]) -> None:
    items = sorted(key_set)
    values = np.frombuffer(os.urandom(16 * len(items)), "<u8").reshape(-1, 2).astype(np.uint64)
    secret = mpsi.create_mpsi_secret()
    params, table = mpsi.encode_hint(items, values, secret, b"hint")
    assert np.array_equal(okvs.decode(table, items, params), values)
    again = mpsi.encode_hint(items, values, mpsi.MpsiSecret(secret.export_for_resume()), b"hint")
    assert again[0] == params and np.array_equal(again[1], table)


def test_matches_keeps_exactly_the_zero_xors() -> None:
    a = np.array([[1, 2], [3, 4], [5, 6]], dtype=np.uint64)
    b = np.array([[1, 2], [3, 5], [0, 6]], dtype=np.uint64)
    assert mpsi.matches([a, b]) == [0]
    assert mpsi.matches([a, b, a ^ b]) == [0, 1, 2]
    with pytest.raises(ValueError):
        mpsi.matches([])


def test_oprf_values_depend_on_the_point_and_the_id() -> None:
    points = psi.hash_to_points(ITEMS[:2], CONTEXT)
    base = mpsi.oprf_values(ITEMS[:2], points)
    assert not np.array_equal(base, mpsi.oprf_values(ITEMS[:2], points[::-1]))
    assert not np.array_equal(base[:1], mpsi.oprf_values([b"other"], points[:1]))
    with pytest.raises(ValueError):
        mpsi.oprf_values(ITEMS[:2], points[:1])


def test_hint_header_round_trip_and_refusals() -> None:
    params = okvs.okvs_params(1000, os.urandom(16))
    header = mpsi.encode_hint_header(params)
    assert len(header) == 40 and header[:5] == b"BOKV\x01"
    assert mpsi.decode_hint_header(header, 1000) == params
    # A narrower band (a weaker encoding), or a shape for another set size, is refused.
    for bad in (
        okvs.OkvsParams(1000, params.starts, params.width - 1, params.seed),
        okvs.OkvsParams(999, params.starts, params.width, params.seed),
        okvs.okvs_params(2000, params.seed),
    ):
        with pytest.raises(InvalidMessageError, match="shape"):
            mpsi.decode_hint_header(mpsi.encode_hint_header(bad), 1000)
    with pytest.raises(InvalidMessageError):
        mpsi.decode_hint_header(header[:-1], 1000)
    with pytest.raises(InvalidMessageError):
        mpsi.decode_hint_header(b"BOKV\x02" + header[5:], 1000)
    assert mpsi.hint_chunk_sizes(okvs.okvs_params(10**6, bytes(16))) == [131_072] * 12 + [27_201]


def test_result_tags_round_trip_and_refusals() -> None:
    tags = mpsi.result_tags(ITEMS, CONTEXT)
    assert len(set(tags)) == len(ITEMS) and tags != mpsi.result_tags(ITEMS, bytes(32))
    payload = mpsi.encode_tags([tags[5], tags[2]])
    assert payload[:5] == b"BMPR\x01" and len(payload) == 9 + 32
    assert mpsi.decode_tags(payload, tags) == [5, 2]
    assert mpsi.decode_tags(mpsi.encode_tags([]), tags) == []
    for bad in (
        mpsi.encode_tags([tags[1], tags[1]]),  # one id twice
        mpsi.encode_tags([os.urandom(16)]),  # an id this member does not hold
        payload[:-1],
        payload + bytes(16),
    ):
        with pytest.raises(InvalidMessageError):
            mpsi.decode_tags(bad, tags)
    with pytest.raises(InvalidMessageError, match="wrong length"):
        mpsi.decode_tags(mpsi.encode_tags(tags[:3]), tags[:2])
