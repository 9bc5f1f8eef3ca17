"""Fuzz every wire decoder: any bytes give a value or a defined error, never another exception.

Decoders: ``bund.parties.wire`` (protobuf parse, then each ``*_from_proto``), and every
``from_bytes`` / ``decode_*`` of ``compute`` and ``bund/parties/protocols``. Inputs are mutations of
valid encodings (``tests/fuzz/corpus.py``), derandomised, plus one oversized input per seed. A
defined error is a ``BundError`` (what the node maps to a status) or a ``ValueError`` other than a
leaked ``UnicodeError``. CKKS loading runs in a child process (``ckks_child.py``): TenSEAL is native
code, and a crash there must fail the test, not kill the run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bund.compute import insecure, psi
from bund.compute import paillier as pl
from bund.compute.dp import dropout_secagg, pairwise_masks
from bund.compute.errors import BundError
from bund.parties import wire
from bund.parties.jobs import JobSpec, Participant
from bund.parties.lifecycle.states import JobState, JobStatus
from bund.parties.protocols import proved_key, vertical_alignment, vertical_lr
from bund.v1.audit_pb2 import AuditRecord as ProtoAuditRecord
from bund.v1.audit_pb2 import Checkpoint as ProtoCheckpoint
from bund.v1.audit_pb2 import ReadAuditLogResponse as ProtoAuditPage
from bund.v1.common_pb2 import JobSpec as ProtoJobSpec
from bund.v1.federation_pb2 import GetNodeInfoResponse as ProtoNodeInfo
from bund.v1.job_pb2 import ApprovalRequest as ProtoApprovalRequest
from bund.v1.job_pb2 import GetJobResultResponse as ProtoJobResult
from bund.v1.job_pb2 import JobStatus as ProtoJobStatus
from tests.fuzz.corpus import mutations, oversized, populate

FUZZ = settings(
    derandomize=True,
    max_examples=120,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclass(frozen=True)
class Decoder:
    """One decoder under test and the valid encodings its mutations start from."""

    decode: Callable[[bytes], object]
    seeds: Sequence[bytes]


def _spec() -> JobSpec:
    parts = (
        Participant("bank", "member", "loans", {"id": "company_id"}),
        Participant("tax", "member", "filings", {"id": "uscc"}),
    )
    return JobSpec("psi", parts, ("bank",), "fuzz", "bank", {"mode": "intersection"}, "a" * 32)


def _proto(message_type: type[Message], from_proto: Callable[[Message], object]) -> Decoder:
    def decode(data: bytes) -> object:
        return from_proto(wire.parse(message_type, data))

    return Decoder(decode, [b"", populate(message_type()).SerializeToString()])


@cache
def decoders() -> dict[str, Decoder]:
    """Every decoder by name; made once (the Paillier key needs the test-only switch)."""
    insecure.enable_insecure_test_parameters()
    public, _ = pl.generate_keypair(512)
    insecure.disable_insecure_test_parameters()
    encryptor = pl.Encryptor(public)
    vector = pl.encrypt(encryptor, [5, -7, 11], frac_bits=16)
    packed = pl.encrypt(encryptor, list(range(-20, 20))).squeeze(1 << 12)
    key = psi.create_blinding_key()
    points = b"".join(psi.hash_and_blind([b"a", b"b", b"c"], b"ctx", key))
    adv = dropout_secagg.Advertised(bytes(range(32)), bytes(range(1, 33)), bytes(range(2, 34)))
    u64 = np.arange(4, dtype=np.uint64)
    box = dropout_secagg._SHARE_CT_BYTES
    spec = _spec()
    status = JobStatus(spec, JobState.RUNNING, "blind", 1, 2, updated_at="2026-01-01T00:00:00Z")
    return {
        "psi.decode_header": Decoder(
            psi.decode_header,
            [psi.encode_header(psi.SetHeader(m, 10, 100, 4096)) for m in psi.Disclosure],
        ),
        "psi.validate_points": Decoder(
            lambda b: psi.validate_points(b, len(b) // psi.POINT_SIZE), [points]
        ),
        "psi.validate_points[count=3]": Decoder(lambda b: psi.validate_points(b, 3), [points]),
        "paillier.PublicKey.from_bytes": Decoder(pl.PublicKey.from_bytes, [public.to_bytes()]),
        "paillier.EncryptedVector.from_bytes": Decoder(
            lambda b: pl.EncryptedVector.from_bytes(public, b, frac_bits=16, max_count=64),
            [vector.to_bytes(encryptor)],
        ),
        "paillier.PackedVector.from_bytes": Decoder(
            lambda b: pl.PackedVector.from_bytes(
                public,
                b,
                slot_bits=packed.slot_bits,
                slots=packed.slots,
                count=packed.count,
                bound=packed.bound,
            ),
            [packed.to_bytes(encryptor)],
        ),
        "pairwise_masks.decode_public_key": Decoder(
            pairwise_masks.decode_public_key, [pairwise_masks.encode_public_key(bytes(range(32)))]
        ),
        "pairwise_masks.decode_vector": Decoder(
            lambda b: pairwise_masks.decode_vector(b, 4), [pairwise_masks.encode_vector(u64)]
        ),
        "dropout_secagg.decode_advertised": Decoder(
            dropout_secagg.decode_advertised, [dropout_secagg.encode_advertised(adv)]
        ),
        "dropout_secagg.decode_roster": Decoder(
            dropout_secagg.decode_roster, [dropout_secagg.encode_roster({1: adv, 3: adv})]
        ),
        "dropout_secagg.decode_boxes": Decoder(
            dropout_secagg.decode_boxes,
            [dropout_secagg.encode_boxes({2: bytes(box), 5: bytes(range(box))})],
        ),
        "dropout_secagg.decode_request": Decoder(
            dropout_secagg.decode_request, [dropout_secagg.encode_request([1, 2], [3])]
        ),
        "dropout_secagg.decode_reveal": Decoder(
            dropout_secagg.decode_reveal,
            [dropout_secagg.encode_reveal(dropout_secagg.Reveal({1: 5}, {2: 2**500}))],
        ),
        "dropout_secagg.decode_vector": Decoder(
            lambda b: dropout_secagg.decode_vector(b, 4), [dropout_secagg.encode_vector(u64)]
        ),
        "vertical_alignment.decode_meta": Decoder(
            vertical_alignment.decode_meta,
            [vertical_alignment.encode_meta({"features": 3, "names": ["a", "b"]})],
        ),
        "vertical_alignment.decode_rows": Decoder(
            lambda b: vertical_alignment.decode_rows(b, 8),
            [vertical_alignment.encode_rows([3, 0, 7])],
        ),
        "proved_key.decode_key_message": Decoder(
            proved_key.decode_key_message,
            [
                proved_key.encode_key_message(public.to_bytes(), b"proof"),
                proved_key.encode_key_message(public.to_bytes(), b""),
            ],
        ),
        "vertical_lr._decode_ints": Decoder(
            lambda b: vertical_lr._decode_ints(vertical_lr._SCORES_MAGIC, b, 8, 4),
            [vertical_lr._encode_ints(vertical_lr._SCORES_MAGIC, [1, -2, 3, 2**62], 8)],
        ),
        "wire.spec_from_proto": Decoder(
            _proto(ProtoJobSpec, wire.spec_from_proto).decode,
            [wire.spec_to_proto(spec).SerializeToString()],
        ),
        "wire.status_from_proto": Decoder(
            _proto(ProtoJobStatus, wire.status_from_proto).decode,
            [wire.status_to_proto(status).SerializeToString()],
        ),
        "wire.result_from_proto": _proto(ProtoJobResult, wire.result_from_proto),
        "wire.node_info_from_proto": _proto(ProtoNodeInfo, wire.node_info_from_proto),
        "wire.audit_record_from_proto": _proto(ProtoAuditRecord, wire.audit_record_from_proto),
        "wire.audit_page_from_proto": _proto(ProtoAuditPage, wire.audit_page_from_proto),
        "wire.approval_request_from_proto": _proto(
            ProtoApprovalRequest, lambda m: wire.approval_request_from_proto(m, "bank")
        ),
        "wire.checkpoint_from_proto": _proto(ProtoCheckpoint, wire.checkpoint_from_proto),
    }


def check(decoder: Decoder, data: bytes) -> None:
    """Decode ``data``: a value, or a defined error; anything else fails the test."""
    try:
        decoder.decode(data)
    except BundError:
        pass
    except ValueError as exc:
        if isinstance(exc, UnicodeError):
            raise AssertionError(f"undefined error {exc!r} on input {data[:64]!r}") from exc
    except Exception as exc:
        raise AssertionError(f"undefined error {exc!r} on input {data[:64]!r}") from exc


NAMES = sorted(decoders())


@pytest.fixture(autouse=True)
def _small_keys() -> None:
    """Peer keys of 512 bits get past the size check, so the fuzzer reaches the validation."""
    insecure.enable_insecure_test_parameters()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", NAMES)
@FUZZ
@given(data=st.data())
def test_mutated_input_gives_a_value_or_a_defined_error(name: str, data: st.DataObject) -> None:
    decoder = decoders()[name]
    check(decoder, data.draw(mutations(decoder.seeds), label="input"))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", NAMES)
def test_seeds_decode_and_oversized_input_is_refused(name: str) -> None:
    decoder = decoders()[name]
    for seed in decoder.seeds:
        check(decoder, seed)
        check(decoder, oversized(seed))


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "payload",
    [
        vertical_alignment.encode_meta({})[:5] + b"[" * 100_000 + b"]" * 100_000,
        vertical_alignment.encode_meta({})[:5] + b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    ],
    ids=["deep-list", "deep-object"],
)
def test_deeply_nested_metadata_is_a_defined_error(payload: bytes) -> None:
    check(decoders()["vertical_alignment.decode_meta"], payload)


@pytest.mark.timeout(120)
def test_deeply_nested_audit_fields_are_a_defined_error() -> None:
    record = populate(ProtoAuditRecord())
    record.fields_json = "[" * 100_000 + "]" * 100_000
    check(decoders()["wire.audit_record_from_proto"], record.SerializeToString())


@pytest.mark.timeout(180)
def test_ckks_loaders_in_a_child_process() -> None:
    child = Path(__file__).with_name("ckks_child.py")
    proc = subprocess.run(
        [sys.executable, str(child)], capture_output=True, text=True, timeout=170, check=False
    )
    assert proc.returncode == 0, f"the CKKS fuzz child died: {proc.returncode}\n{proc.stderr}"
    report = json.loads(proc.stdout)
    assert report["undefined"] == [], report
