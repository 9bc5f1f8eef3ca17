"""PSI at production shape between real nodes: the cardinality attack of issue 14.3 played and
defeated, unbalanced and labeled PSI against plaintext, and resumes after kill -9 (issue 19)."""

from __future__ import annotations

import csv
import dataclasses
import io
import re
import sqlite3
import struct
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any, cast

import grpc
import numpy as np
import pytest

from bund.compute import psi as cpsi
from bund.compute.psi_oprf import create_query_blinding
from bund.parties.audit import SqliteAuditStore
from bund.parties.client import RemoteError
from bund.parties.follow import follow_job
from bund.parties.jobs import JobContext, JobSpec, Participant, Result
from bund.parties.lifecycle.events import PROTOCOL_PREFIX
from bund.parties.lifecycle.states import JobState, JobStatus
from bund.parties.protocols import PROTOCOLS
from bund.parties.protocols import psi_unbalanced as pu
from bund.parties.transport import PeerTimeoutError
from tests.conftest import NodeFactory
from tests.integration.test_node import wait_final

pytestmark = pytest.mark.integration

PATIENTS = [f"P{i:05d}" for i in range(200)]
#: The attacker's 12 candidates: 4 are patients.
CANDIDATES = ["P00003", "P00050", "P00120", "P00199", *(f"X{i:05d}" for i in range(8))]


def add_policy(f: NodeFactory, name: str, dataset: list[str], limits: Sequence[str] = ()) -> Path:
    """Append lines to the (only) dataset table of ``name``'s policy and to its ``[limits]``.

    A ``psi_max_set_size`` among ``limits`` replaces the factory's.
    """
    path = f.workdir / name / "policy.toml"
    text = path.read_text(encoding="utf-8")
    if any(line.startswith("psi_max_set_size") for line in limits):
        text = re.sub(r"psi_max_set_size = \d+\n", "", text)
        text = text.replace("[limits]\n", "[limits]\n" + "\n".join(limits) + "\n", 1)
    else:
        text = re.sub(r"(psi_max_set_size = \d+)", lambda m: "\n".join([m.group(1), *limits]), text)
    path.write_text(text + "\n".join(dataset) + "\n", encoding="utf-8")
    return f.workdir / name / "node.toml"


# -- issue 14.3: a cardinality member that blinds each id with its own scalar --------------------


def per_id_scalar_attacker(ctx: JobContext) -> Result | None:
    """A modified bank node: each candidate blinded with a scalar of its own.

    Against the old protocol, the hospital returned these points re-blinded, ``b·k_i·H(x_i)``,
    and with the hospital's ``b·H(y)`` the bank computed ``k_i·b·H(y)`` for every pair and
    read off which candidates are patients. It follows the new protocol as far as it must to
    get a count, and tries the same matching on everything it receives.
    """
    spec = ctx.spec
    (peer,) = (p for p in spec.parties if p != ctx.party)
    context = bytes.fromhex(spec.digest())
    items = [c.encode() for c in ctx.table().column("id")]
    scalars = [cpsi.create_blinding_key() for _ in items]
    mine = [
        cpsi.blind(cpsi.hash_to_points([x], context), k)[0]
        for x, k in zip(items, scalars, strict=True)
    ]
    header = cpsi.SetHeader(cpsi.Disclosure.CARDINALITY, len(mine), 10**6, cpsi.MAX_CHUNK_POINTS)
    ctx.send(peer, "psi/tick/0", b"\x01")  # its last (and only) tick, then its header
    ctx.send(peer, "psi/header", cpsi.encode_header(header))
    tick = 0
    while ctx.recv(peer, f"psi/tick/{tick}") != b"\x01":
        tick += 1
    theirs = cpsi.decode_header(ctx.recv(peer, "psi/header"))
    ctx.send(peer, "psi/blinded/0", b"".join(sorted(mine)))
    hospital = cpsi.validate_points(ctx.recv(peer, "psi/blinded/0"), theirs.set_size)
    returned: list[bytes] = []
    try:  # the old protocol's message 3: our own points, re-blinded by the hospital
        returned = cpsi.validate_points(ctx.recv(peer, "psi/double/0", timeout=2.0), len(mine))
    except PeerTimeoutError:
        pass
    # Re-blind the hospital's set and hand it back, as the protocol asks, so it counts for us.
    a = cpsi.create_blinding_key()
    ctx.send(peer, "psi/double/0", b"".join(sorted(cpsi.blind(hospital, a))))
    count = ctx.recv(peer, "psi/count")
    found = set(returned)
    members = [
        x.decode()
        for x, k in zip(items, scalars, strict=True)
        if found and any(v in found for v in cpsi.blind(hospital, k))
    ]
    summary = {"members_found": len(members), "double_values_received": len(returned)}
    return Result({**summary, "count_message_bytes": len(count)})


def hospital_and_attacker(f: NodeFactory, trusted: bool = False) -> None:
    registry = {
        **PROTOCOLS,
        "psi": dataclasses.replace(PROTOCOLS["psi"], roles={"member": per_id_scalar_attacker}),
    }
    f.start(
        "bank",
        {"applicants": {"id": CANDIDATES}},
        ("hospital-a",),
        registry=registry,
        budget_epsilon="1",
    )
    config = f.write_config(
        "hospital-a",
        {"patients": {"patient_id": PATIENTS}},
        ("bank",),
        level="restricted-personal",
        budget_epsilon="1",
    )
    add_policy(f, "hospital-a", ['trusted_counterparties = ["bank"]'] if trusted else [])
    f.run("hospital-a", config)


def count_spec(receivers: tuple[str, ...] = ("bank",), **params: str) -> JobSpec:
    return JobSpec(
        protocol="psi",
        participants=(
            Participant("bank", "member", "applicants", {"id": "id"}),
            Participant("hospital-a", "member", "patients", {"id": "patient_id"}),
        ),
        receivers=receivers,
        purpose="how many applicants are patients",
        requester="bank",
        params={"mode": "cardinality", **params},
    )


def charged(f: NodeFactory, name: str) -> Fraction:
    db = sqlite3.connect(f.workdir / name / "state" / "budget.db")
    try:
        return sum((Fraction(e) for (e,) in db.execute("SELECT epsilon FROM charges")), Fraction())
    finally:
        db.close()


def test_a_per_id_scalar_member_no_longer_learns_which_candidates_are_patients(
    node_factory: NodeFactory,
) -> None:
    f = node_factory
    hospital_and_attacker(f)
    with f.client("bank") as bank:
        job_id = bank.submit(count_spec(epsilon="1/2"))
        status = wait_final(bank, job_id)
        assert status.state is JobState.SUCCEEDED, status.error
        got = bank.result(job_id).summary
    # The hospital counted itself and never sent the bank a double-blinded value.
    assert got["double_values_received"] == 0 and got["members_found"] == 0
    received = [
        str(r.fields["tag"])
        for r in f.nodes["bank"].audit_store.read()
        if r.job_id == job_id and r.event == "message_received"
    ]
    assert received and not [t for t in received if t.startswith("psi/double")]
    assert "psi/count" in received
    # The count it released was noised at ε = 1/2, charged to the hospital's own ledger.
    f.wait_closed(job_id)
    assert charged(f, "hospital-a") == Fraction(1, 2)
    finished = [
        r.fields
        for r in f.nodes["hospital-a"].audit_store.read()
        if r.job_id == job_id and r.event == f"{PROTOCOL_PREFIX}psi.finished"
    ]
    assert finished and finished[0]["noise_epsilon"] == "1/2"


@pytest.mark.parametrize(
    ("spec_args", "words"),
    [
        ({}, "only with noise"),  # an exact count of a padded set is one candidate's membership
        ({"receivers": ("bank", "hospital-a"), "epsilon": "1/2"}, "make bank the only receiver"),
    ],
)
def test_the_hospital_refuses_an_exact_count_or_to_receive_one(
    node_factory: NodeFactory, spec_args: dict[str, object], words: str
) -> None:
    f = node_factory
    hospital_and_attacker(f)
    with f.client("bank") as bank:
        job_id = bank.submit(count_spec(**spec_args))  # type: ignore[arg-type]
        status = wait_final(bank, job_id)
    assert status.state is JobState.REFUSED and words in status.error
    assert charged(f, "hospital-a") == 0


def test_a_trusted_counterparty_gets_an_exact_count(node_factory: NodeFactory) -> None:
    f = node_factory
    f.start("bank", {"applicants": {"id": CANDIDATES}}, ("hospital-a",))
    config = f.write_config(
        "hospital-a", {"patients": {"patient_id": PATIENTS}}, ("bank",), level="restricted-personal"
    )
    add_policy(f, "hospital-a", ['trusted_counterparties = ["bank"]'])
    f.run("hospital-a", config)
    with f.client("bank") as bank:
        job_id = bank.submit(count_spec())
        status = wait_final(bank, job_id)
        assert status.state is JobState.SUCCEEDED, status.error
        assert bank.result(job_id).summary["intersection_size"] == 4


# -- issue 19.2 and 19.3: unbalanced and labeled PSI ---------------------------------------------

FIRMS = [f"91310000MA{i:08d}" for i in range(4_000)]
APPLICANTS = [f"91310000MA{i:08d}" for i in range(3_900, 4_100)]


def registry_and_bank(
    f: NodeFactory, max_queries: int = 1_000, spawn: bool = False, ids: list[str] = FIRMS
) -> None:
    firms = {
        "uscc": ids,
        "registered_capital": [str(i * 1000) for i in range(len(ids))],
        "years_active": [str(i % 40) for i in range(len(ids))],
        "owner_name": ["name"] * len(ids),
    }
    configs = {
        "registry": f.write_config("registry", {"firms": firms}, ("bank",)),
        "bank": f.write_config("bank", {"applicants": {"cid": APPLICANTS}}, ("registry",)),
    }
    add_policy(
        f,
        "registry",
        ['payload_columns = ["registered_capital", "years_active"]'],
        [f"psi_unbalanced_max_queries = {max_queries}"],
    )
    for name, config in configs.items():
        if spawn:
            f.spawn(name, config)
        else:
            f.run(name, config)


def unbalanced_spec(phase: str, payload: dict[str, str], setup_job: str | None = None) -> JobSpec:
    querier = (
        Participant("bank", "querier", "applicants", {"id": "cid"})
        if phase == "query"
        else Participant("bank", "querier")
    )
    params: dict[str, str] = {"phase": phase}
    if setup_job:
        params["setup_job"] = setup_job
    return JobSpec(
        protocol="psi_unbalanced",
        participants=(
            Participant("registry", "holder", "firms", {"id": "uscc", **payload}),
            querier,
        ),
        receivers=("bank",),
        purpose="credit checks of applicants",
        requester="bank",
        params=params,
    )


LABELS = {"payload.capital": "registered_capital", "payload.years": "years_active"}


def test_labeled_unbalanced_psi_between_nodes_matches_plaintext(node_factory: NodeFactory) -> None:
    f = node_factory
    registry_and_bank(f, max_queries=300, spawn=True)  # each node its own process
    with f.client("bank") as bank:
        setup = bank.submit(unbalanced_spec("setup", LABELS))
        status = wait_final(bank, setup, timeout=120)
        assert status.state is JobState.SUCCEEDED, status.error
        shipped = bank.result(setup).summary
        assert shipped["keys"] == 4_000 and shipped["key_version"] == 1
        query = bank.submit(unbalanced_spec("query", LABELS, setup))
        status = wait_final(bank, query, timeout=120)
        assert status.state is JobState.SUCCEEDED, status.error
        rows = list(
            csv.DictReader(io.StringIO(bank.result(query).artifacts["matches.csv"].decode()))
        )
        assert sorted(r["id"] for r in rows) == sorted(set(APPLICANTS) & set(FIRMS))
        for r in rows:
            i = FIRMS.index(r["id"])
            assert (r["capital"], r["years"]) == (str(i * 1000), str(i % 40))
        # A column the registry's policy does not release is refused at admission.
        refused = bank.submit(unbalanced_spec("query", {"payload.owner": "owner_name"}, setup))
        status = wait_final(bank, refused)
        assert status.state is JobState.REFUSED
        assert "no payload column 'owner_name'" in status.error
        assert "registered_capital" not in status.error
        # The registry answers at most 300 ids in all: the second query of 200 fails.
        again = bank.submit(unbalanced_spec("query", LABELS, setup))
        status = wait_final(bank, again, timeout=120)
        assert status.state is JobState.ABORTED, status.error
        assert "psi_unbalanced_max_queries" in status.error
    with f.client("registry") as registry:
        assert wait_final(registry, again).state is JobState.FAILED
    # A query that reaches the registry after the job failed there is answered with why, so a
    # querier whose role sends before the registry's abort reaches it ends aborted, not failed.
    with f.client("registry", "bank") as to_registry:
        with pytest.raises(RemoteError, match="psi_unbalanced_max_queries") as late:
            to_registry.deliver(again, "psi_u/query/0", b"late")
        assert late.value.code is grpc.StatusCode.ABORTED
    f.stop_all()
    prefix = f"{PROTOCOL_PREFIX}psi_unbalanced."
    store = SqliteAuditStore(f.workdir / "registry" / "state" / "audit.db")
    try:
        records = [
            (r.event.removeprefix(prefix), dict(r.fields))
            for r in store.read()
            if r.event.startswith(prefix)
        ]
    finally:
        store.close()
    assert [e for e, _ in records] == ["setup", "query"]
    assert records[0][1]["payload_columns"] == "registered_capital,years_active"
    assert records[1][1]["queries"] == 200 and records[1][1]["max_queries"] == 300


def header_lying_querier(ctx: JobContext) -> Result | None:
    """A modified bank node: it announces 10 ids and sends its 200 points, so that 200 answers
    (200 membership tests against the filter) would cost 10 of the registry's cap."""
    params = pu.PsiUnbalancedParams.of(ctx.spec)
    assert params.setup_job is not None
    setup = ctx.prior_result(params.setup_job, ctx.spec.protocol)
    context = bytes.fromhex(str(setup.summary["context"]))
    items = [c.encode() for c in ctx.table().column("cid")]
    points = np.sort(cpsi.hash_and_blind_array(items, context, create_query_blinding().blind))
    # psi_u/query: magic BPSQ, version 1, 3 zero bytes; setup job, key version, ids (10).
    version = int(str(setup.summary["key_version"]))
    fields = struct.pack(">16sQQ", bytes.fromhex(params.setup_job), version, 10)
    ctx.send("registry", "psi_u/query", b"BPSQ\x01\x00\x00\x00" + fields)
    ctx.send("registry", "psi_u/points/0", points.tobytes())
    answers = ctx.recv("registry", "psi_u/answers/0")
    return Result({"answers": len(answers) // cpsi.POINT_SIZE})


def test_a_querier_that_understates_its_query_gets_no_answer(node_factory: NodeFactory) -> None:
    f = node_factory
    protocols = {
        **PROTOCOLS,
        "psi_unbalanced": dataclasses.replace(
            pu.DEFINITION, roles={**pu.DEFINITION.roles, "querier": header_lying_querier}
        ),
    }
    registry_and_bank(f, max_queries=100)
    with f.client("bank") as bank:
        setup = bank.submit(unbalanced_spec("setup", {}))
        assert wait_final(bank, setup, timeout=120).state is JobState.SUCCEEDED
    f.wait_closed(setup)
    f.nodes.pop("bank").stop()  # the bank comes back with its modified querier
    f.run("bank", f.workdir / "bank" / "node.toml", protocols)
    with f.client("bank") as bank:
        query = bank.submit(unbalanced_spec("query", {}, setup))
        status = wait_final(bank, query, timeout=120)
    assert status.state is not JobState.SUCCEEDED
    with f.client("registry") as registry:
        failed = wait_final(registry, query)
    assert failed.state is JobState.FAILED and "expected 10 points" in failed.error
    f.wait_closed(query)
    received = [
        str(r.fields["tag"])
        for r in f.nodes["bank"].audit_store.read()
        if r.job_id == query and r.event == "message_received"
    ]
    assert not [t for t in received if t.startswith("psi_u/answers")]
    (counted,) = [
        r.fields
        for r in f.nodes["registry"].audit_store.read()
        if r.job_id == query and r.event == f"{PROTOCOL_PREFIX}psi_unbalanced.query"
    ]
    assert counted["queries"] == 10  # what it announced is what the cap was charged


class _Tampered:
    """A job context whose outgoing payloads pass through ``tamper(tag, payload)`` first."""

    def __init__(self, ctx: JobContext, tamper: Callable[[str, bytes], bytes]) -> None:
        self._ctx, self._tamper = ctx, tamper

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)

    def send(self, to: str, tag: str, payload: bytes) -> None:
        self._ctx.send(to, tag, self._tamper(tag, payload))


def repeating_member(message: str) -> Callable[[JobContext], Result | None]:
    """A modified tax node: chunk 1 of its ``psi/<message>/*`` starts with a copy of a point of
    chunk 0. Copied into the set it sends (``blinded``), a shared value would count twice; into
    the bank's own points it returns re-blinded (``double``), a matching value in another slot
    would make the bank report an id it does not share. Either is a repeat across chunks, which
    only a check over the whole set (ascending across chunks, or per bucket in the join) sees."""

    def run(ctx: JobContext) -> Result | None:
        copied = b""

        def tamper(tag: str, payload: bytes) -> bytes:
            nonlocal copied
            if tag == f"psi/{message}/0":
                copied = payload[-cpsi.POINT_SIZE :]
            elif tag == f"psi/{message}/1":
                payload = copied + payload[cpsi.POINT_SIZE :]
            return payload

        return PROTOCOLS["psi"].roles["member"](cast("JobContext", _Tampered(ctx, tamper)))

    return run


@pytest.mark.parametrize("message", ["blinded", "double"])
def test_a_member_that_repeats_a_point_across_chunks_is_refused_by_a_spilling_receiver(
    node_factory: NodeFactory, message: str
) -> None:
    f = node_factory
    large = [f"91310000MA{i:08d}" for i in range(70_000)]  # two chunks
    small = [f"91310000MA{i:08d}" for i in range(69_900, 70_100)]
    tax_ids, bank_ids = (large, small) if message == "blinded" else (small, large)
    spill = ["psi_max_set_size = 100000", "psi_spill_rows = 100", "psi_bucket_points = 4096"]
    paths = {
        "bank": f.write_config("bank", {"loans": {"company_id": bank_ids}}, ("tax",)),
        "tax": f.write_config("tax", {"filings": {"uscc": tax_ids}}, ("bank",)),
    }
    for name in paths:
        add_policy(f, name, [], spill)
    f.run("bank", paths["bank"])
    attacker = dataclasses.replace(PROTOCOLS["psi"], roles={"member": repeating_member(message)})
    f.run("tax", paths["tax"], {**PROTOCOLS, "psi": attacker})
    spec = JobSpec(
        protocol="psi",
        participants=(
            Participant("bank", "member", "loans", {"id": "company_id"}),
            Participant("tax", "member", "filings", {"id": "uscc"}),
        ),
        receivers=("bank",),
        purpose="bucketed alignment",
        requester="bank",
        params={"mode": "intersection"},
    )
    with f.client("bank") as bank:
        job_id = bank.submit(spec)
        status = wait_final(bank, job_id, timeout=180)
    assert status.state is JobState.FAILED
    assert "a point repeats within the set" in status.error
    f.wait_closed(job_id)
    assert not (f.workdir / "bank" / "state" / "scratch" / job_id).exists()


# -- resume after kill -9: bucketed PSI and the precomputation -----------------------------------


def events(f: NodeFactory, name: str, job_id: str) -> list[str]:
    store = SqliteAuditStore(f.workdir / name / "state" / "audit.db")
    try:
        return [r.event for r in store.read() if r.job_id == job_id]
    finally:
        store.close()


def replayed_tags(f: NodeFactory, name: str, job_id: str) -> set[str]:
    """The tags a resumed role sent or received again (its peers ignored the sends)."""
    store = SqliteAuditStore(f.workdir / name / "state" / "audit.db")
    try:
        return {
            str(r.fields["tag"])
            for r in store.read()
            if r.job_id == job_id and r.event == "message_replayed"
        }
    finally:
        store.close()


def kill_when(f: NodeFactory, victim: str, job_id: str, phase: str, done: int) -> None:
    def busy(status: JobStatus) -> bool:
        return status.phase == phase and status.done >= done

    with f.client(victim) as c:
        status = follow_job(c, job_id, until=busy, timeout=120, interval=0.02)
    assert busy(status), f"{victim} ended {status.state.value} before it was mid-{phase}"
    f.kill(victim)


@pytest.mark.parametrize("victim", ["bank", "tax"])
def test_bucketed_psi_resumes_after_kill_with_the_exact_intersection(
    node_factory: NodeFactory, victim: str
) -> None:
    f = node_factory
    bank_ids = [f"91310000MA{i:08d}" for i in range(0, 140_000)]  # three chunks each
    tax_ids = [f"91310000MA{i:08d}" for i in range(40_000, 180_000)]
    spill = ["psi_max_set_size = 200000", "psi_spill_rows = 1000", "psi_bucket_points = 4096"]
    paths = {
        "bank": f.write_config("bank", {"loans": {"company_id": bank_ids}}, ("tax",)),
        "tax": f.write_config("tax", {"filings": {"uscc": tax_ids}}, ("bank",)),
    }
    for name, path in paths.items():
        add_policy(f, name, [], spill)
        f.spawn(name, path)
    spec = JobSpec(
        protocol="psi",
        participants=(
            Participant("bank", "member", "loans", {"id": "company_id"}),
            Participant("tax", "member", "filings", {"id": "uscc"}),
        ),
        receivers=("bank",),
        purpose="bucketed alignment",
        requester="bank",
        params={"mode": "intersection"},
    )
    with f.client("bank") as bank:
        job_id = bank.submit(spec)
    kill_when(f, victim, job_id, "reblind", 1)
    f.spawn(victim, paths[victim])
    with f.client("bank") as bank:
        status = wait_final(bank, job_id, timeout=180)
        assert status.state is JobState.SUCCEEDED, status.error
        ids = bank.result(job_id).artifacts["intersection.csv"].decode().split()[1:]
    assert sorted(ids) == sorted(set(bank_ids) & set(tax_ids))
    survivor = "tax" if victim == "bank" else "bank"
    with f.client(survivor) as c:
        assert wait_final(c, job_id).state is JobState.SUCCEEDED
    f.stop_all()
    assert "job_resumed" in events(f, victim, job_id)
    assert events(f, victim, job_id).count("job_closed") == 1
    if victim == "tax":  # it resumed past its checkpoint: chunk 0's reply went once, not again
        replayed = replayed_tags(f, "tax", job_id)
        assert "psi/blinded/0" in replayed and "psi/double/0" not in replayed
    for name in ("bank", "tax"):  # the spilled buckets went with the job
        assert not (f.workdir / name / "state" / "scratch" / job_id).exists()


def test_the_precomputation_resumes_after_kill_and_the_filter_answers_exactly(
    node_factory: NodeFactory,
) -> None:
    f = node_factory
    firms = [f"91310000MA{i:08d}" for i in range(70_000)]  # five chunks of precomputation
    registry_and_bank(f, spawn=True, ids=firms)
    with f.client("bank") as bank:
        setup = bank.submit(unbalanced_spec("setup", {}))
    kill_when(f, "registry", setup, "precompute", 16_384)
    f.spawn("registry", f.workdir / "registry" / "node.toml")
    with f.client("bank") as bank:
        status = wait_final(bank, setup, timeout=180)
        assert status.state is JobState.SUCCEEDED, status.error
        query = bank.submit(unbalanced_spec("query", {}, setup))
        status = wait_final(bank, query, timeout=120)
        assert status.state is JobState.SUCCEEDED, status.error
        rows = bank.result(query).artifacts["matches.csv"].decode().split()[1:]
    assert sorted(rows) == sorted(set(APPLICANTS) & set(firms)) and len(rows) == 200
    f.stop_all()
    assert "job_resumed" in events(f, "registry", setup)
