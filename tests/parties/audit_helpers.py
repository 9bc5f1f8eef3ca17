"""Logs, records and tampering helpers shared by the audit tests (tests/parties/test_audit*.py)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import itertools
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import strategies as st

from bund.compute.merkle import chain_hash
from bund.parties.audit import (
    GENESIS_HASH,
    SIGNING_DOMAIN,
    AuditLog,
    AuditRecord,
    Checkpoint,
    CheckpointReport,
    MemoryAuditStore,
    check_log_against_checkpoints,
    export_jsonl,
)

PARTY = "bank"
KEY = Ed25519PrivateKey.generate()
PUB = KEY.public_key()
OTHER_KEY = Ed25519PrivateKey.generate()
REPO = Path(__file__).resolve().parents[2]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
)
field_maps = st.dictionaries(st.text(max_size=12), scalars, max_size=6)


def make_clock() -> Callable[[], str]:
    """A deterministic clock: one second later at every call."""
    ticks = itertools.count()
    base = dt.datetime(2026, 11, 24, tzinfo=dt.UTC)

    def clock() -> str:
        moment = base + dt.timedelta(seconds=next(ticks))
        return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")

    return clock


def fill(log: AuditLog, n: int) -> list[AuditRecord]:
    """A job's worth of typical records, each with distinct fields."""
    events = [
        ("job_submitted", {"protocol": "psi", "by": "bank"}),
        ("job_accepted", {"spec_sha256": "ab" * 32}),
        ("message_sent", {"peer": "tax", "tag": "psi/blinded/0", "sha256": "cd" * 32}),
        ("message_received", {"peer": "tax", "tag": "psi/blinded/1", "sha256": "ef" * 32}),
        ("job_refused", {"reason": "dataset loans is not shared with insurer"}),
        ("job_closed", {"outcome": "succeeded", "transcript_sha256": "01" * 32}),
    ]
    out = []
    for i in range(n):
        event, fields = events[i % len(events)]
        out.append(log.append(event, f"job-{i // 3}", {**fields, "seq": i, "size": 100 + i}))
    return out


def make_records(n: int, key: Ed25519PrivateKey = KEY, party: str = PARTY) -> list[AuditRecord]:
    return fill(AuditLog(MemoryAuditStore(), key, party, make_clock()), n)


RECORDS = make_records(6)
N = len(RECORDS)


def flip(data: bytes, position: int, mask: int) -> bytes:
    return data[:position] + bytes([data[position] ^ mask]) + data[position + 1 :]


def forged(index: int, prev_hash: bytes, signer: Ed25519PrivateKey | None) -> AuditRecord:
    """A record hashed exactly as the log would, signed by another key or not at all."""
    body = dataclasses.replace(
        RECORDS[0], index=index, prev_hash=prev_hash, fields={"forged": True}
    )
    record_hash = chain_hash(prev_hash, body.leaf_hash())
    signature = bytes(64) if signer is None else signer.sign(SIGNING_DOMAIN + record_hash)
    return dataclasses.replace(body, record_hash=record_hash, signature=signature)


def exported(records: list[AuditRecord]) -> bytes:
    text = io.StringIO()
    export_jsonl(records, text)
    return text.getvalue().encode()


def grown(
    n: int,
    checkpoint_at: Callable[[int], bool],
    key: Ed25519PrivateKey = KEY,
    fork_at: int | None = None,
) -> tuple[list[AuditRecord], list[Checkpoint]]:
    """A log of ``n`` records with a checkpoint at each size chosen; from ``fork_at`` on, the
    records carry other content (the same party's key: another history of the same log)."""
    log = AuditLog(MemoryAuditStore(), key, PARTY, make_clock())
    checkpoints = []
    for size in range(n + 1):
        if checkpoint_at(size):
            checkpoints.append(log.checkpoint())
        if size < n:
            forked = fork_at is not None and size >= fork_at
            log.append("message_sent", "j", {"seq": size, "fork": forked})
    return log.store.read(), checkpoints


def resign(records: list[AuditRecord], index: int, change: dict[str, object]) -> list[AuditRecord]:
    """What the key's holder can do: change record ``index`` and re-sign the chain after it."""
    out = list(records[:index])
    prev = out[-1].record_hash if out else GENESIS_HASH
    for r in records[index:]:
        body = dataclasses.replace(r, prev_hash=prev, **(change if r.index == index else {}))  # type: ignore[arg-type]
        record_hash = chain_hash(prev, body.leaf_hash())
        signature = KEY.sign(SIGNING_DOMAIN + record_hash)
        out.append(dataclasses.replace(body, record_hash=record_hash, signature=signature))
        prev = record_hash
    return out


def check(
    records: list[AuditRecord], checkpoints: list[Checkpoint], party: str = PARTY
) -> CheckpointReport:
    return check_log_against_checkpoints(records, checkpoints, PUB, party)
