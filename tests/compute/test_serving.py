"""One request to a standing scoring contract: digest, masked answers, the bank's sum."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bund.compute import serving
from bund.compute.dp.pairwise_masks import MaskingKey, create_masking_key
from bund.compute.errors import InvalidInputError, InvalidKeyError, InvalidMessageError

CONTRACT = "0123456789abcdef" * 2
NONCE = bytes(range(32))
KEYS = {name: create_masking_key() for name in ("registry", "tax", "utility")}


def publics(names: tuple[str, ...]) -> dict[str, bytes]:
    return {n: KEYS[n].public_bytes() for n in names}


def answers(
    names: tuple[str, ...],
    scores: dict[str, list[int]],
    held: dict[str, list[bool]],
    digests: dict[str, bytes],
) -> list[serving.U64Array]:
    public = publics(names)
    return [
        serving.answer_vector(scores[n], held[n], KEYS[n], n, public, digests[n]) for n in names
    ]


def test_the_digest_names_one_request_exactly() -> None:
    ids = [b"91310000A", b"B"]
    digest = serving.request_digest(CONTRACT, NONCE, ids)
    assert len(digest) == 32 and digest == serving.request_digest(CONTRACT, NONCE, list(ids))
    others = [
        serving.request_digest("f" * 32, NONCE, ids),
        serving.request_digest(CONTRACT, bytes(32), ids),
        serving.request_digest(CONTRACT, NONCE, ids[::-1]),  # the order is part of it
        serving.request_digest(CONTRACT, NONCE, [b"91310000", b"AB"]),  # and the boundaries
        serving.request_digest(CONTRACT, NONCE, ids[:1]),
    ]
    assert len({digest, *others}) == 6


@pytest.mark.parametrize(
    ("contract", "nonce", "ids", "match"),
    [
        ("ABC", NONCE, [b"a"], "32 lower-case hex"),
        (CONTRACT.upper(), NONCE, [b"a"], "32 lower-case hex"),
        (CONTRACT, NONCE[:31], [b"a"], "32 bytes"),
        (CONTRACT, NONCE, [], "1 to"),
        (CONTRACT, NONCE, [b"a"] * 2, "twice"),
        (CONTRACT, NONCE, [b""], "bytes of UTF-8"),
        (CONTRACT, NONCE, [b"x" * 257], "bytes of UTF-8"),
        (CONTRACT, NONCE, [str(i).encode() for i in range(serving.MAX_IDS + 1)], "1 to"),
    ],
)
def test_malformed_requests_are_refused(
    contract: str, nonce: bytes, ids: list[bytes], match: str
) -> None:
    with pytest.raises(InvalidInputError, match=match):
        serving.request_digest(contract, nonce, ids)


score_lists = st.lists(
    st.integers(-(serving.MAX_PARTIAL - 1), serving.MAX_PARTIAL - 1), min_size=1, max_size=20
)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), providers=st.integers(1, 3))
def test_masks_cancel_in_the_sum_of_the_very_same_request(
    data: st.DataObject, providers: int
) -> None:
    names = ("registry", "tax", "utility")[:providers]
    first = data.draw(score_lists)
    n = len(first)
    scores = {names[0]: first}
    scores.update({p: data.draw(st.lists(st.integers(-(2**40), 2**40), min_size=n, max_size=n))
                   for p in names[1:]})  # fmt: skip
    held = {p: data.draw(st.lists(st.booleans(), min_size=n, max_size=n)) for p in names}
    digest = serving.request_digest(CONTRACT, NONCE, [str(i).encode() for i in range(n)])
    totals, complete = serving.combine_answers(
        answers(names, scores, held, dict.fromkeys(names, digest)), n
    )
    for i in range(n):
        everyone = all(held[p][i] for p in names)
        assert complete[i] is everyone
        if everyone:
            assert totals[i] == sum(scores[p][i] for p in names)


def test_one_answer_alone_shows_no_score_and_no_membership() -> None:
    n = 500
    names = ("registry", "tax")
    scores = {p: [1 << 24] * n for p in names}  # one logit each: tiny next to a mask
    held = {"registry": [True] * n, "tax": [i % 2 == 0 for i in range(n)]}
    digest = serving.request_digest(CONTRACT, NONCE, [str(i).encode() for i in range(n)])
    for answer in answers(names, scores, held, dict.fromkeys(names, digest)):
        cells = answer.view(np.int64)
        assert np.abs(cells[:n].astype(np.float64)).min() > 2.0**34  # nothing within 1,024 logits
        assert (answer[n:] != 0).all()  # held or not, every indicator cell is masked


def test_the_bank_learns_that_some_provider_lacks_an_id_not_which_nor_how_many() -> None:
    n = 4000
    names = ("registry", "tax", "utility")
    scores = {p: [0] * n for p in names}
    lacking = {  # id i is lacked by one provider (which one varies) or by two or three
        "registry": [i % 4 == 0 for i in range(n)],
        "tax": [i % 4 in (1, 2) for i in range(n)],
        "utility": [i % 4 in (2, 3) for i in range(n)],
    }
    held = {p: [not x for x in lacking[p]] for p in names}
    digest = serving.request_digest(CONTRACT, NONCE, [str(i).encode() for i in range(n)])
    all_answers = answers(names, scores, held, dict.fromkeys(names, digest))
    totals, complete = serving.combine_answers(all_answers, n)
    assert not any(complete)
    indicator = sum(a.astype(object) for a in all_answers)  # exact sums, reduced below
    for how_many in (1, 2):
        rows = [i for i in range(n) if sum(lacking[p][i] for p in names) == how_many]
        words = np.array([int(indicator[n + i]) % 2**64 for i in rows], dtype=np.uint64)
        # Neither the parity nor the size of the indicator sum tells one lacking from two: each
        # is a fair bit (within 5 standard deviations: a leak would put it at 0 or 1).
        within = 5 * 0.5 / len(rows) ** 0.5
        assert abs(float((words & np.uint64(1)).mean()) - 0.5) < within
        assert abs(float((words >> np.uint64(63)).mean()) - 0.5) < within
        # And the score sum is a uniform word, not the scores of those who hold the id.
        assert np.abs(np.array(totals)[rows].astype(np.float64)).min() > 2.0**34


def test_masks_are_bound_to_the_request_so_a_mixed_request_sums_to_noise() -> None:
    # A bank that sends each provider other ids under one nonce gets sums that mean nothing.
    names = ("registry", "tax")
    n = 50
    scores = {p: list(range(n)) for p in names}
    held = {p: [True] * n for p in names}
    digests = {
        "registry": serving.request_digest(CONTRACT, NONCE, [f"a{i}".encode() for i in range(n)]),
        "tax": serving.request_digest(CONTRACT, NONCE, [f"b{i}".encode() for i in range(n)]),
    }
    totals, complete = serving.combine_answers(answers(names, scores, held, digests), n)
    assert not any(complete)
    assert np.abs(np.array(totals, dtype=np.float64)).min() > 2.0**34


def test_answers_round_trip_and_malformed_ones_are_refused() -> None:
    digest = serving.request_digest(CONTRACT, NONCE, [b"a", b"b"])
    (answer,) = answers(("tax",), {"tax": [3, 4]}, {"tax": [True, False]}, {"tax": digest})
    payload = serving.encode_answer(answer)
    assert len(payload) == 12 + 8 * 4 and payload[:4] == b"BSRV"
    assert (serving.decode_answer(payload, 2) == answer).all()
    with pytest.raises(InvalidMessageError):
        serving.decode_answer(payload, 3)
    with pytest.raises(InvalidMessageError):
        serving.decode_answer(b"BSAV" + payload[4:], 2)
    with pytest.raises(ValueError, match="one answer"):
        serving.combine_answers([answer[:2]], 2)


def test_a_provider_refuses_broken_scores_and_keys() -> None:
    digest = serving.request_digest(CONTRACT, NONCE, [b"a"])
    public = publics(("registry", "tax"))
    with pytest.raises(ValueError, match="2\\^44"):
        serving.answer_vector([serving.MAX_PARTIAL], [True], KEYS["tax"], "tax", public, digest)
    serving.answer_vector([serving.MAX_PARTIAL], [False], KEYS["tax"], "tax", public, digest)
    with pytest.raises(InvalidKeyError, match="own masking key"):
        serving.answer_vector(
            [1], [True], KEYS["tax"], "tax", {**public, "registry": public["tax"]}, digest
        )
    stranger: MaskingKey = create_masking_key()
    with pytest.raises(ValueError, match="its own public key"):
        serving.answer_vector([1], [True], stranger, "tax", public, digest)
