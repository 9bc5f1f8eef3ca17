"""The protocols' own binary layouts keep their bytes: each is pinned to what it encoded before.

Every expected value below was captured from the encoders as they stood before the layouts shared
one header helper (``bund.compute.layout``); a change to a magic, a version or a field fails here.
"""

from __future__ import annotations

import numpy as np
import pytest

from bund.compute import ckks
from bund.compute.errors import InvalidMessageError
from bund.parties.protocols import ckks_scoring as cs
from bund.parties.protocols import fed_dp_sgd as fd
from bund.parties.protocols import vertical_alignment as va
from bund.parties.protocols import vertical_lr as vl


def test_fed_dp_sgd_step_and_exhausted_bytes() -> None:
    data = fd.encode_go(1, 7, np.array([0.5, -1.0]))
    assert data.hex() == "4246444701010000000700000002000000000000e03f000000000000f0bf"
    kind, round_, weights = fd.decode_go(data, 2)
    assert (kind, round_, weights.tolist()) == (1, 7, [0.5, -1.0])
    assert fd._EXHAUSTED.hex() == "4246445801000000"


def test_vertical_aligned_rows_bytes() -> None:
    data = va.encode_rows([4, 0, 2])
    assert data.hex() == "4256414c0100000003000000040000000000000002"
    assert va.decode_rows(data, 5).tolist() == [4, 0, 2]
    for broken, points in ((data, 4), (va.encode_rows([1, 1]), 5), (data[:-1], 5)):
        with pytest.raises(InvalidMessageError, match="aligned row list"):
            va.decode_rows(broken, points)


def test_vertical_metadata_bytes() -> None:
    doc = {"features": 3, "names": ["a", "b"]}
    data = va.encode_meta(doc)
    assert data.hex() == "42574f4501" + b'{"features":3,"names":["a","b"]}'.hex()
    assert va.decode_meta(data) == doc


def test_vertical_lr_integer_vector_bytes() -> None:
    values = [1, -2, 3, 2**62]
    scores = vl._encode_ints(vl._SCORES_MAGIC, values, 8)
    assert scores.hex() == (
        "42564c530108000000040000000000000001fffffffffffffffe00000000000000034000000000000000"
    )
    assert vl._decode_ints(vl._SCORES_MAGIC, scores, 8, 4) == values
    unmask = vl._encode_ints(vl._UNMASK_MAGIC, [5, -6], 3)
    assert unmask.hex() == "42564c55010300000002000005fffffa"
    assert vl._decode_ints(vl._UNMASK_MAGIC, unmask, 3, 2) == [5, -6]


def test_ckks_scoring_layout_bytes() -> None:
    ranges = [(0.0, 1.0), (-2.5, 3.0)]
    context = cs.encode_context(8192, 10, ranges, b"context")
    assert context.hex() == (
        "42434b4301000020000000000a000200000000000000003ff0000000000000c004000000000000"
        "4008000000000000636f6e74657874"
    )
    plan = cs.Plan("h", "i", ("f", "g"), "logistic", 8192, 0.01)
    assert cs.decode_context(context, plan) == (10, ranges, b"context")
    vector = cs.encode_vector(1, 2, 3, b"vector")
    assert vector.hex() == "42434b560100000001000200000003766563746f72"
    assert cs.decode_vector(vector, 1, 2, 3) == b"vector"
    result = cs.encode_result(1, 3, 2.0**-10, b"result")
    assert result.hex() == "42434b5a0100000001000000033f50000000000000726573756c74"
    assert cs.decode_result(result, 1, 3) == (2.0**-10, b"result")
    released = cs.Released(["p1", "p02"], [1, -2], ckks.PRECISION_BITS, 0.01, 0.001)
    scores = cs.encode_scores(released)
    assert scores.hex() == (
        "42434b53010c3f847ae147ae147b3f50624dd2f1a9fc000000020002703100000000000000010003703032"
        "fffffffffffffffe"
    )
    assert cs.decode_scores(scores, 2) == released
