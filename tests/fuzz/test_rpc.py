"""Fuzz every RPC of every bund.v1 service with raw bytes over real mTLS against one node.

A raw channel (no request serialiser) sends random, truncated, bit-flipped, deeply nested and
oversized bytes to each method, as the node's own operator and as an allowed counterparty. Every
call must end with a status the node means to give (OK, INVALID_ARGUMENT, NOT_FOUND, ...) and
never UNKNOWN or INTERNAL, which would mean an exception escaped the error translator; nor
UNAVAILABLE or DEADLINE_EXCEEDED, which would mean the node died or hung. The node must still
answer a health check afterwards. Inputs are derandomised Hypothesis draws: the same every run.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings

from bund.parties.client import channel_options
from bund.v1 import audit_pb2, federation_pb2, job_pb2, serving_pb2
from tests.conftest import NodeFactory
from tests.fuzz.corpus import mutations, populate

pytestmark = pytest.mark.integration

#: Statuses that mean the node did not handle the input as it means to.
UNDEFINED = {
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}
CALL_TIMEOUT_S = 15.0
RPC_FUZZ = settings(
    derandomize=True,
    max_examples=12,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def methods() -> list[MethodDescriptor]:
    """Every method of every service in proto/bund/v1."""
    found = []
    for module in (audit_pb2, federation_pb2, job_pb2, serving_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            found += list(service.methods)
    return found


def _nested(depth: int) -> bytes:
    """Field 1, length-delimited, nested ``depth`` times: past protobuf's recursion limit."""
    payload = b""
    for _ in range(depth):
        size = len(payload)
        varint = bytearray()
        while True:
            byte, size = size & 0x7F, size >> 7
            varint.append(byte | (0x80 if size else 0))
            if not size:
                break
        payload = b"\x0a" + bytes(varint) + payload
    return payload


@dataclass
class RawCaller:
    """Calls one node's methods with raw request bytes, as one party."""

    channel: grpc.Channel

    def call(self, method: MethodDescriptor, request: bytes) -> grpc.StatusCode:
        path = f"/{method.containing_service.full_name}/{method.name}"
        try:
            if method.server_streaming:
                stream = self.channel.unary_stream(path)(request, timeout=CALL_TIMEOUT_S)
                for _ in stream:
                    pass
            else:
                self.channel.unary_unary(path)(request, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as err:
            return err.code()  # type: ignore[no-any-return]
        return grpc.StatusCode.OK


def _channel(node_factory: NodeFactory, node: str, as_party: str) -> grpc.Channel:
    tls = node_factory.federation.tls(as_party)
    creds = grpc.ssl_channel_credentials(
        tls.ca.read_bytes(), tls.key.read_bytes(), tls.cert.read_bytes()
    )
    options = channel_options(64 << 20, node)
    return grpc.secure_channel(f"127.0.0.1:{node_factory.port(node)}", creds, options=options)


@pytest.fixture
def callers(node_factory: NodeFactory) -> Iterator[dict[str, RawCaller]]:
    node_factory.start(
        "bank",
        {"loans": {"company_id": [f"9131{i:06d}" for i in range(20)]}},
        ("tax",),
        {"loans": ["psi"]},
    )
    channels = {who: _channel(node_factory, "bank", who) for who in ("bank", "tax")}
    yield {who: RawCaller(ch) for who, ch in channels.items()}
    for ch in channels.values():
        ch.close()


def _health(caller: RawCaller) -> int:
    stub = health_pb2_grpc.HealthStub(caller.channel)
    return int(stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status)


def _record(
    bad: list[str], seen: set[grpc.StatusCode], what: str, code: grpc.StatusCode, request: bytes
) -> None:
    seen.add(code)
    if code in UNDEFINED:
        bad.append(f"{what}: {code.name} on {request[:48]!r}")


def _fuzz(
    caller: RawCaller, method: MethodDescriptor, valid: bytes
) -> list[tuple[grpc.StatusCode, bytes]]:
    """Hypothesis-drawn mutations of a valid request: the status of each call."""
    out: list[tuple[grpc.StatusCode, bytes]] = []

    @RPC_FUZZ
    @given(request=mutations([valid, b"\x0a\x00"], max_random=256))
    def fuzz(request: bytes) -> None:
        out.append((caller.call(method, request), request))

    fuzz()
    return out


@pytest.mark.timeout(240)
def test_every_rpc_answers_raw_garbage_with_a_defined_status(
    callers: dict[str, RawCaller],
) -> None:
    bad: list[str] = []
    seen: set[grpc.StatusCode] = set()
    for method in methods():
        valid = populate(message_factory.GetMessageClass(method.input_type)()).SerializeToString()
        fixed = [b"", valid, _nested(200), _nested(3), valid + b"\xff" * (9 << 20)]
        for who, caller in callers.items():
            what = f"{method.full_name} as {who}"
            for code, request in _fuzz(caller, method, valid):
                _record(bad, seen, what, code, request)
            for request in fixed:
                _record(bad, seen, what, caller.call(method, request), request)
    assert bad == [], "\n".join(bad)
    assert grpc.StatusCode.INVALID_ARGUMENT in seen and grpc.StatusCode.RESOURCE_EXHAUSTED in seen
    for caller in callers.values():
        assert _health(caller) == health_pb2.HealthCheckResponse.SERVING
