"""The mailbox: idempotent on digest, refuses equivocation and oversize, wakes on abort."""

from __future__ import annotations

import threading

import pytest

from bund.parties.transport import (
    EquivocationError,
    InMemoryNetwork,
    JobAbortedError,
    Mailbox,
    PayloadTooLargeError,
    PeerTimeoutError,
    check_tag,
)

JOB = "0" * 32


def test_replayed_message_is_a_no_op_and_taken_once() -> None:
    box = Mailbox(1024)
    assert box.put(JOB, "tax", "psi/header", b"abc") is True
    assert box.put(JOB, "tax", "psi/header", b"abc") is False
    envelope = box.take(JOB, "tax", "psi/header", timeout=1)
    assert envelope.payload == b"abc" and envelope.sender == "tax"
    assert box.put(JOB, "tax", "psi/header", b"abc") is False  # still a replay after it was taken
    with pytest.raises(PeerTimeoutError, match="no message 'psi/header' from tax"):
        box.take(JOB, "tax", "psi/header", timeout=0.05)


def test_different_payload_under_the_same_tag_is_equivocation() -> None:
    box = Mailbox(1024)
    box.put(JOB, "tax", "t", b"one")
    with pytest.raises(EquivocationError, match="different payload"):
        box.put(JOB, "tax", "t", b"two")


def test_same_tag_from_another_sender_or_job_is_independent() -> None:
    box = Mailbox(1024)
    box.put(JOB, "tax", "t", b"one")
    box.put(JOB, "registry", "t", b"two")
    box.put("1" * 32, "tax", "t", b"three")
    assert box.take("1" * 32, "tax", "t", 1).payload == b"three"
    assert box.take(JOB, "registry", "t", 1).payload == b"two"


def test_oversized_payload_is_refused_before_it_is_kept() -> None:
    box = Mailbox(16)
    with pytest.raises(PayloadTooLargeError, match="chunks"):
        box.put(JOB, "tax", "t", b"x" * 17)
    box.put(JOB, "tax", "t", b"x" * 16)  # the same slot is still free for a valid payload


def test_abort_wakes_a_waiting_role() -> None:
    box = Mailbox(1024)
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            box.take(JOB, "tax", "t", timeout=30)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=wait)
    t.start()
    box.abort(JOB, "tax failed")
    t.join(5)
    assert not t.is_alive()
    assert isinstance(errors[0], JobAbortedError) and "tax failed" in str(errors[0])


@pytest.mark.parametrize("tag", ["", "a b", "../x", "x" * 129, "é"])
def test_bad_tags_are_refused(tag: str) -> None:
    with pytest.raises(ValueError, match="tag"):
        check_tag(tag)


def test_in_memory_network_captures_every_payload() -> None:
    net = InMemoryNetwork(["bank", "tax"])
    net.transport_for("bank").deliver(JOB, "tax", "t", b"hello")
    assert net.captured == [("bank", "tax", "t", b"hello")]
    assert net.mailboxes["tax"].take(JOB, "bank", "t", 1).payload == b"hello"
