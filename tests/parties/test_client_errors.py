"""A call that gets no answer says why in one line: wrong CA, wrong party, node down, bad name."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from bund.parties.client import NodeClient, transport_failure
from bund.parties.errors import PeerUnavailableError
from tests.conftest import Federation

U = grpc.StatusCode.UNAVAILABLE


LAST = "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:7443: "
WHO = "tax at 127.0.0.1:7443"


@pytest.mark.parametrize(
    ("details", "line"),
    [
        (
            LAST + "Tls handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:"
            "SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: unable to get local issuer",
            WHO + ": the node's certificate is not from your federation CA; check [tls] ca",
        ),
        (
            LAST + "Custom verification check failed with error: UNAUTHENTICATED: Hostname "
            "Verification Check failed.",
            WHO + ": the node there is not tax's (its certificate names another party); check "
            "the address",
        ),
        (
            LAST + "Failed to connect to remote host: Connection refused",
            WHO + " does not answer: is its node running? (connection refused)",
        ),
        (
            (
                "errors resolving tax.example:7443: [field:hostname lookup error:address lookup "
                "failed for tax.example:7443: Domain name not found]"
            ),
            WHO + ": the host name does not resolve; check the address",
        ),
        (
            LAST.replace("UNKNOWN", "UNAVAILABLE") + "Socket closed",
            WHO + " closed the connection: does it accept your certificate? (check [tls] cert "
            "and key: an operator credential of tax, or a node certificate on the roster)",
        ),
    ],
)
def test_each_transport_failure_has_its_line(details: str, line: str) -> None:
    assert transport_failure("tax", "127.0.0.1:7443", U, details, 60) == line


def test_no_answer_in_time_and_anything_else() -> None:
    late = transport_failure("tax", "h:1", grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline", 5)
    assert late == (
        "tax at h:1 did not answer within 5 s: is its node running and reachable? "
        "(DEADLINE_EXCEEDED)"
    )
    other = transport_failure("tax", "h:1", U, "something new", 5)
    assert other == "tax at h:1 does not answer: is its node running? (UNAVAILABLE: something new)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def intruder_port(federation: Federation) -> Iterator[int]:
    """A TLS server on loopback whose certificate is from another federation's CA."""
    tls = federation.tls("intruder")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    creds = grpc.ssl_server_credentials([(tls.key.read_bytes(), tls.cert.read_bytes())])
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    yield port
    server.stop(None)


def test_a_node_with_a_certificate_from_another_ca(
    federation: Federation, intruder_port: int
) -> None:
    address = f"127.0.0.1:{intruder_port}"
    with NodeClient(address, "bank", federation.operator_tls("bank"), timeout=10) as client:
        with pytest.raises(PeerUnavailableError) as refused:
            client.node_info()
    assert str(refused.value) == (
        f"bank at {address}: the node's certificate is not from your federation CA; check [tls] ca"
    )


def test_a_node_that_is_down(federation: Federation) -> None:
    address = f"127.0.0.1:{_free_port()}"
    with NodeClient(address, "tax", federation.tls("bank"), timeout=10) as client:
        with pytest.raises(PeerUnavailableError) as refused:
            client.status("0" * 32)
    assert str(refused.value) == (
        f"tax at {address} does not answer: is its node running? (connection refused)"
    )
