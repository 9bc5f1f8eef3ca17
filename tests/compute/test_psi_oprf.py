"""Unbalanced-PSI OPRF: blinded evaluation is direct evaluation; labels open only on a match."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bund.compute import psi
from bund.compute import psi_oprf as oprf
from bund.compute.errors import InvalidMessageError
from bund.compute.executor import ThreadExecutor

CONTEXT = oprf.setup_context(b"a setup")


def direct(items: list[bytes], key: psi.BlindingKey) -> list[bytes]:
    """``F_k(x)`` as the holder computes it for its own ids."""
    evaluated = b"".join(psi.blind(psi.hash_to_points(items, CONTEXT), key))
    return oprf.oprf_outputs(items, evaluated, CONTEXT)


def blinded(items: list[bytes], key: psi.BlindingKey) -> list[bytes]:
    """``F_k(x)`` as the querier obtains it: blind, let the holder evaluate, unblind."""
    q = oprf.create_query_blinding()
    points = psi.hash_and_blind_array(items, CONTEXT, q.blind)
    answers = psi.blind_array(points, key)
    return oprf.unblind_outputs(items, answers, q, CONTEXT)


@settings(max_examples=20, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=20), min_size=1, max_size=8, unique=True))
def test_blinded_evaluation_equals_direct_evaluation(items: list[bytes]) -> None:
    key = psi.create_blinding_key()
    assert blinded(items, key) == direct(items, key)
    assert direct(items, psi.create_blinding_key()) != direct(items, key)


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=32, max_size=32))
def test_a_clamped_inverse_exists_for_about_half_the_scalars_and_undoes_the_scalar(
    raw: bytes,
) -> None:
    try:
        q = oprf.QueryBlinding.from_resume_state(raw)
    except ValueError:
        return
    point = psi.hash_to_points([b"x"], b"c")
    once = psi.blind(point, psi.create_blinding_key())  # a point of the prime-order subgroup
    assert psi.blind(psi.blind(once, q.blind), q.unblind) == once
    assert oprf.QueryBlinding.from_resume_state(q.export_for_resume()).export_for_resume() == raw


def test_roughly_half_of_all_scalars_have_a_clamped_inverse() -> None:
    found = 0
    for _ in range(400):
        try:
            oprf.QueryBlinding.from_resume_state(os.urandom(32))
            found += 1
        except ValueError:
            pass
    assert 140 < found < 260


def test_holder_batches_match_the_querier_and_run_on_any_executor() -> None:
    items = [f"9131{i:014d}".encode() for i in range(50)]
    key = psi.create_blinding_key()
    labels = [oprf.encode_label([str(i), "x"], 8) for i in range(50)]
    inline = oprf.evaluate_holder_set(items, CONTEXT, key, labels)
    with ThreadExecutor(3) as ex:
        assert oprf.evaluate_holder_set(items, CONTEXT, key, labels, ex) == inline
    outputs = blinded(items[:10], key)
    keys = np.frombuffer(inline.keys, dtype="<u8")
    assert (oprf.match_keys(outputs) == keys[:10]).all()
    rows = oprf.sort_label_rows(inline.locators, inline.sealed, 8)
    table = oprf.LabelTable.from_rows(CONTEXT, 8, rows)
    assert oprf.open_labels(outputs, table, 2) == [[str(i), "x"] for i in range(10)]


def test_an_unmatched_or_foreign_output_opens_no_label() -> None:
    key = psi.create_blinding_key()
    items = [b"a", b"b"]
    batch = oprf.evaluate_holder_set(items, CONTEXT, key, [oprf.encode_label(["1"], 4)] * 2)
    table = oprf.LabelTable.from_rows(
        CONTEXT, 4, oprf.sort_label_rows(batch.locators, batch.sealed, 4)
    )
    other_key = direct([b"a"], psi.create_blinding_key())  # same id, another holder key
    assert oprf.open_labels(other_key + blinded([b"c"], key), table, 1) == [None, None]
    # Even with the right locator the payload needs F itself: a forged output fails the tag.
    outputs = direct([b"a"], key)
    forged = bytes([outputs[0][0] ^ 1]) + outputs[0][1:]
    assert oprf.open_labels([forged], table, 1) == [None]
    assert oprf.open_labels(outputs, table, 1) == [["1"]]


def test_derived_values_are_domain_separated() -> None:
    outputs = direct([b"a", b"b"], psi.create_blinding_key())
    match, locate = oprf.match_keys(outputs), oprf.locators(outputs)
    assert not set(match.tolist()) & set(locate.tolist())
    assert oprf.label_key(outputs[0])[:8] not in {int(m).to_bytes(8, "little") for m in match}


def test_labels_encode_and_refuse_what_does_not_fit() -> None:
    assert oprf.decode_label(oprf.encode_label(["", "公司", "1,2"], 20), 3) == ["", "公司", "1,2"]
    assert oprf.label_width([["ab", "c"], ["", ""]]) == 7
    with pytest.raises(ValueError, match="over the width"):
        oprf.encode_label(["abcdef"], 4)
    with pytest.raises(InvalidMessageError, match="padding"):
        oprf.decode_label(b"\x00\x01a\x01", 1)
    with pytest.raises(InvalidMessageError, match="does not decode"):
        oprf.decode_label(b"\x00\x09a", 1)


def test_label_tables_must_be_sorted_and_whole() -> None:
    row = bytes(8) + bytes(4 + oprf.SEAL_OVERHEAD)
    later = (1).to_bytes(8, "little") + bytes(4 + oprf.SEAL_OVERHEAD)
    assert len(oprf.LabelTable.from_rows(CONTEXT, 4, row + later).locators) == 2
    with pytest.raises(InvalidMessageError, match="ascending"):
        oprf.LabelTable.from_rows(CONTEXT, 4, later + row)
    with pytest.raises(InvalidMessageError, match="whole number"):
        oprf.LabelTable.from_rows(CONTEXT, 4, row[:-1])
    with pytest.raises(InvalidMessageError, match="width"):
        oprf.LabelTable.from_rows(CONTEXT, 0, b"")


def test_query_blinding_keys_refuse_to_leave_the_process() -> None:
    import pickle

    q = oprf.create_query_blinding()
    with pytest.raises(TypeError):
        pickle.dumps(q)
