"""SecAgg with drop-outs: Shamir shares, masking, unmasking up to the threshold, wire checks."""

from __future__ import annotations

import pickle
import secrets

import numpy as np
import pytest

from bund.compute.dp import dropout_secagg
from bund.compute.errors import InvalidKeyError, InvalidMessageError

CTX = b"job/step-0"


def _drbg() -> dropout_secagg.Drbg:
    return dropout_secagg.Drbg(secrets.token_bytes(32))


@pytest.mark.parametrize(("t", "n"), [(1, 1), (2, 3), (3, 5), (5, 9)])
def test_any_threshold_of_shares_rebuilds_the_secret(t: int, n: int) -> None:
    secret = secrets.randbits(256)
    shares = dropout_secagg.split_secret(secret, t, range(1, n + 1), _drbg())
    for start in range(n - t + 1):
        subset = {x: shares[x] for x in list(shares)[start : start + t]}
        assert dropout_secagg.combine_shares(subset, t) == secret


def test_fewer_shares_than_the_threshold_are_refused() -> None:
    shares = dropout_secagg.split_secret(12345, 3, [1, 2, 3, 4], _drbg())
    with pytest.raises(dropout_secagg.DropoutError):
        dropout_secagg.combine_shares({1: shares[1], 2: shares[2]}, 3)


def test_a_share_below_the_threshold_does_not_fix_the_secret() -> None:
    # Two different secrets can give the same single share: one share reveals nothing alone.
    rng = _drbg()
    a = dropout_secagg.split_secret(1, 2, [1, 2], rng)
    b = dropout_secagg.split_secret(2, 2, [1, 2], rng)
    assert a[1] != b[1] or a[2] != b[2]
    assert dropout_secagg.combine_shares({1: a[1], 2: a[2]}, 2) == 1


class Round:
    """n clients with fresh seeds going through the protocol's phases in memory."""

    def __init__(self, n: int, t: int, length: int = 5) -> None:
        self.t = t
        self.clients = {
            i: dropout_secagg.RoundSecrets.from_seed(secrets.token_bytes(32))
            for i in range(1, n + 1)
        }
        self.values = {i: np.arange(length, dtype=np.int64) * i - 7 for i in self.clients}
        self.roster = {i: c.advertised(CTX) for i, c in self.clients.items()}

    def run(self, drop_before_share=(), drop_before_upload=(), drop_before_answer=()) -> np.ndarray:
        shared = [i for i in self.roster if i not in drop_before_share]
        boxes = {i: self.clients[i].share(i, self.roster, self.t, CTX) for i in shared}
        opened = {}
        for i in shared:
            inbox = {j: boxes[j][i] for j in shared if j != i}
            opened[i] = self.clients[i].open_inbox(i, self.roster, self.t, inbox, CTX)
        survivors_keys = {j: self.roster[j] for j in shared}
        masked = {
            i: self.clients[i].mask(i, self.values[i], survivors_keys, CTX)
            for i in shared
            if i not in drop_before_upload
        }
        dropped = [i for i in shared if i not in masked]
        reveals = {
            i: opened[i].reveal(i, sorted(masked), dropped)
            for i in masked
            if i not in drop_before_answer
        }
        return dropout_secagg.unmask(masked, self.roster, reveals, self.t, CTX, shared=shared)

    def expected(self, included) -> list[int]:
        return sum(self.values[i] for i in included).tolist()


def test_without_dropouts_the_server_learns_the_sum() -> None:
    r = Round(4, 3)
    assert r.run().tolist() == r.expected([1, 2, 3, 4])


def test_masked_vectors_look_nothing_like_the_inputs() -> None:
    r = Round(3, 2)
    keys = dict(r.roster)
    masked = r.clients[1].mask(1, r.values[1], keys, CTX)
    assert not np.array_equal(masked.view(np.int64), r.values[1])


@pytest.mark.parametrize("phase", ["share", "upload", "answer"])
def test_up_to_n_minus_t_clients_may_drop_at_any_phase(phase: str) -> None:
    r = Round(5, 3)
    gone = (2, 4)
    total = r.run(**{f"drop_before_{phase}": gone})
    included = [1, 3, 5] if phase in ("share", "upload") else [1, 2, 3, 4, 5]
    assert total.tolist() == r.expected(included)


def test_mixed_dropouts_within_the_bound_still_complete() -> None:
    r = Round(5, 3)
    total = r.run(drop_before_upload=(2,), drop_before_answer=(5,))
    assert total.tolist() == r.expected([1, 3, 4, 5])


@pytest.mark.parametrize("phase", ["share", "upload", "answer"])
def test_more_dropouts_than_the_bound_abort(phase: str) -> None:
    r = Round(5, 3)
    with pytest.raises(dropout_secagg.DropoutError):
        r.run(**{f"drop_before_{phase}": (1, 2, 3)})


def test_a_client_refuses_an_unmasking_request_that_could_unmask_one_vector() -> None:
    r = Round(3, 2)
    boxes = {i: c.share(i, r.roster, 2, CTX) for i, c in r.clients.items()}
    opened = r.clients[1].open_inbox(1, r.roster, 2, {2: boxes[2][1], 3: boxes[3][1]}, CTX)
    with pytest.raises(InvalidMessageError, match="overlaps"):
        opened.reveal(1, [1, 2, 3], [3])  # both secrets of client 3
    with pytest.raises(InvalidMessageError, match="overlaps"):
        opened.reveal(1, [1, 2], [])  # client 3 in neither set
    with pytest.raises(InvalidMessageError, match="alive"):
        opened.reveal(1, [2, 3], [1])


def test_tampered_or_misrouted_share_boxes_are_refused() -> None:
    r = Round(3, 2)
    boxes = {i: c.share(i, r.roster, 2, CTX) for i, c in r.clients.items()}
    bad = bytearray(boxes[2][1])
    bad[10] ^= 1
    with pytest.raises(InvalidMessageError, match="authentication"):
        r.clients[1].open_inbox(1, r.roster, 2, {2: bytes(bad), 3: boxes[3][1]}, CTX)
    with pytest.raises(InvalidMessageError, match="authentication"):
        r.clients[1].open_inbox(1, r.roster, 2, {2: boxes[2][3], 3: boxes[3][1]}, CTX)
    with pytest.raises(InvalidMessageError, match="not a peer"):
        r.clients[1].open_inbox(1, r.roster, 2, {7: boxes[2][1]}, CTX)


def test_a_wrong_share_is_caught_by_the_commitment_or_the_public_key() -> None:
    r = Round(3, 2)
    boxes = {i: c.share(i, r.roster, 2, CTX) for i, c in r.clients.items()}
    opened = {
        i: c.open_inbox(i, r.roster, 2, {j: boxes[j][i] for j in r.roster if j != i}, CTX)
        for i, c in r.clients.items()
    }
    masked = {i: r.clients[i].mask(i, r.values[i], r.roster, CTX) for i in (1, 2)}
    reveals = {i: opened[i].reveal(i, [1, 2], [3]) for i in (1, 2)}
    forged_b = dropout_secagg.Reveal(
        {**reveals[1].b, 2: (reveals[1].b[2] + 1) % dropout_secagg.PRIME}, reveals[1].s
    )
    with pytest.raises(InvalidMessageError, match="commitment|32-byte"):
        dropout_secagg.unmask({**masked}, r.roster, {1: forged_b, 2: reveals[2]}, 2, CTX)
    forged_s = dropout_secagg.Reveal(
        reveals[1].b, {3: (reveals[1].s[3] + 1) % dropout_secagg.PRIME}
    )
    with pytest.raises(InvalidMessageError, match="public key|32-byte"):
        dropout_secagg.unmask({**masked}, r.roster, {1: forged_s, 2: reveals[2]}, 2, CTX)


def test_same_seed_gives_identical_messages_so_a_resumed_client_is_no_equivocator() -> None:
    seed = secrets.token_bytes(32)
    a, b = dropout_secagg.RoundSecrets.from_seed(seed), dropout_secagg.RoundSecrets.from_seed(seed)
    other = dropout_secagg.RoundSecrets.from_seed(secrets.token_bytes(32))
    roster = {1: a.advertised(CTX), 2: other.advertised(CTX)}
    assert a.share(1, roster, 2, CTX) == b.share(1, roster, 2, CTX)
    assert np.array_equal(a.mask(1, [1, 2], roster, CTX), b.mask(1, [1, 2], roster, CTX))


def test_round_secrets_never_pickle_and_hide_in_repr() -> None:
    s = dropout_secagg.RoundSecrets.from_seed(bytes(32))
    with pytest.raises(TypeError):
        pickle.dumps(s)
    assert "secret" in repr(s)


def test_rosters_with_low_order_or_repeated_keys_are_refused() -> None:
    r = Round(3, 2)
    low_order = dropout_secagg.Advertised(bytes(32), bytes(32), bytes(32))
    roster = {**r.roster, 2: low_order}
    with pytest.raises(InvalidKeyError):
        r.clients[1].share(1, roster, 2, CTX)
    twin = {**r.roster, 3: r.roster[2]}
    with pytest.raises(InvalidKeyError, match="share a public key"):
        r.clients[1].share(1, twin, 2, CTX)
    with pytest.raises(dropout_secagg.DropoutError):
        r.clients[1].share(1, {1: r.roster[1]}, 2, CTX)
    with pytest.raises(InvalidMessageError, match="misquotes"):
        r.clients[1].share(1, {**r.roster, 1: r.roster[2]}, 2, CTX)


def test_wire_layouts_round_trip_and_refuse_malformed_payloads() -> None:
    r = Round(3, 2)
    assert dropout_secagg.decode_roster(dropout_secagg.encode_roster(r.roster)) == r.roster
    adv = r.roster[1]
    assert dropout_secagg.decode_advertised(dropout_secagg.encode_advertised(adv)) == adv
    boxes = r.clients[1].share(1, r.roster, 2, CTX)
    assert dropout_secagg.decode_boxes(dropout_secagg.encode_boxes(boxes)) == boxes
    assert dropout_secagg.decode_request(dropout_secagg.encode_request([3, 1], [2])) == (
        [1, 3],
        [2],
    )
    reveal = dropout_secagg.Reveal({1: 5, 3: 7}, {2: 9})
    assert dropout_secagg.decode_reveal(dropout_secagg.encode_reveal(reveal)) == reveal
    vector = np.arange(4, dtype=np.uint64)
    assert np.array_equal(
        dropout_secagg.decode_vector(dropout_secagg.encode_vector(vector), 4), vector
    )
    bad_cases = [
        (dropout_secagg.decode_advertised, dropout_secagg.encode_advertised(adv)[:-1]),
        (dropout_secagg.decode_advertised, b"XXXX" + dropout_secagg.encode_advertised(adv)[4:]),
        (dropout_secagg.decode_roster, dropout_secagg.encode_roster(r.roster) + b"\x00"),
        (dropout_secagg.decode_boxes, dropout_secagg.encode_boxes(boxes)[:-3]),
        (lambda b: dropout_secagg.decode_vector(b, 5), dropout_secagg.encode_vector(vector)),
        (dropout_secagg.decode_request, dropout_secagg.encode_request([1], [])[:-1] + b"\x09"),
        (
            dropout_secagg.decode_reveal,
            dropout_secagg.encode_reveal(dropout_secagg.Reveal({1: dropout_secagg.PRIME - 1}, {}))[
                :-66
            ]
            + b"\xff" * 66,
        ),
    ]
    for decode, payload in bad_cases:
        with pytest.raises(InvalidMessageError):
            decode(payload)
    doubled = dropout_secagg.encode_roster(r.roster)
    header, body = doubled[:8], doubled[8:]
    twice = header[:6] + (4).to_bytes(2, "big") + body + body[:98]
    with pytest.raises(InvalidMessageError, match="twice"):
        dropout_secagg.decode_roster(twice)
    out_of_range = dropout_secagg.encode_request([1], [])[:-3] + (99).to_bytes(2, "big") + b"\x01"
    with pytest.raises(InvalidMessageError, match="outside"):
        dropout_secagg.decode_request(out_of_range)


def test_quantisation_clips_rounds_and_refuses_overflowing_parameters() -> None:
    q = dropout_secagg.quantize([0.5, -3.0, 100.0], bound=4.0, frac_bits=8)
    assert q.tolist() == [128, -768, 1024]
    assert dropout_secagg.dequantize(q, 8).tolist() == [0.5, -3.0, 4.0]
    dropout_secagg.check_capacity(64, 1024.0, 24)
    with pytest.raises(ValueError, match="overflows"):
        dropout_secagg.check_capacity(64, 2.0**40, 24)
    with pytest.raises(ValueError):
        dropout_secagg.quantize([float("nan")], 1.0, 8)
