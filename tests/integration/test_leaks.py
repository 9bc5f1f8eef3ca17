"""No raw identifier of the demo data appears in any byte a node sends (captured at transport)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from bund.parties import client as client_module
from bund.parties import servicers
from bund.parties.demo import PARTIES
from bund.parties.demo_data import write_demo_data
from bund.parties.jobs import JobSpec, Participant
from bund.parties.lifecycle.states import JobState
from tests.conftest import NodeFactory
from tests.integration.test_node import wait_final


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every request a node's client sends and every response a node's servicer returns."""
    sent: list[bytes] = []
    original_call = client_module.NodeClient._call

    def capture_call(
        self: Any, service: str, method: str, request: Any, response: Any, timeout: Any = None
    ) -> Any:
        sent.append(request.SerializeToString())
        return original_call(self, service, method, request, response, timeout)

    original_handler = servicers.grpc.unary_unary_rpc_method_handler

    def capture_handler(
        behavior: Callable[[bytes, Any], bytes], **kw: Any
    ) -> grpc.RpcMethodHandler:
        def wrapped(raw: bytes, context: Any) -> bytes:
            out = behavior(raw, context)
            sent.append(out)
            return out

        return original_handler(wrapped, **kw)

    monkeypatch.setattr(client_module.NodeClient, "_call", capture_call)
    monkeypatch.setattr(servicers.grpc, "unary_unary_rpc_method_handler", capture_handler)
    return sent


@pytest.mark.parametrize("mode", ["intersection", "cardinality"])
def test_no_raw_id_in_any_byte_a_node_sends(
    node_factory: NodeFactory, captured: list[bytes], mode: str
) -> None:
    data_dir = node_factory.workdir / "data"
    write_demo_data(data_dir)
    from bund.parties.data import load_csv

    bank, tax = PARTIES[0], PARTIES[1]
    bank_ids = load_csv(data_dir / bank.csv).column(bank.id_column)
    tax_ids = load_csv(data_dir / tax.csv).column(tax.id_column)
    node_factory.start(
        "bank", {"loans": {"company_id": list(bank_ids)}}, ("tax",), {"loans": ["psi"]}
    )
    node_factory.start(
        "tax", {"filings": {"company_id": list(tax_ids)}}, ("bank",), {"filings": ["psi"]}
    )
    spec = JobSpec(
        protocol="psi",
        participants=(
            Participant("bank", "member", "loans", {"id": "company_id"}),
            Participant("tax", "member", "filings", {"id": "company_id"}),
        ),
        receivers=("bank",),
        purpose="leak test",
        requester="bank",
        params={"mode": mode},
    )
    with node_factory.client("bank") as c:
        job_id = c.submit(spec)
        status = wait_final(c, job_id, timeout=120)
        assert status.state is JobState.SUCCEEDED, status.error
        captured_before_result = list(captured)
        c.result(job_id)  # the operator reading its own result is not "a node sending to a peer"
    blob = b"\x00".join(captured_before_result)
    assert len(blob) > 32 * (len(bank_ids) + len(tax_ids)), "capture must hold the blinded sets"
    for raw in set(bank_ids) | set(tax_ids):
        needle = raw.encode()
        assert needle not in blob, raw
        assert hashlib.sha256(needle).digest() not in blob, raw
