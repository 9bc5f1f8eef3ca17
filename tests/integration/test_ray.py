"""The Ray executor on a local Ray cluster: the executor contract, keys, PSI in memory and on nodes.

One local cluster (2 CPUs, no dashboard, its own temporary directory) serves the whole module;
every ``RayExecutor`` made here joins it and leaves it running. The first test instead lets an
executor start and stop a cluster of its own, as a node with ``executor = "ray:N"`` does.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator

import pytest

ray = pytest.importorskip("ray", reason="the optional extra bund[ray] is not installed")

from bund.compute import insecure  # noqa: E402 - after the skip: Ray is optional
from bund.compute import paillier as pl  # noqa: E402
from bund.compute.executor import Executor, InlineExecutor, RayExecutor  # noqa: E402
from bund.compute.psi import blind, create_blinding_key, hash_and_blind, hash_to_points  # noqa: E402
from bund.parties.data import Table  # noqa: E402
from bund.parties.jobs import JobSpec, Participant, Result, run_in_memory  # noqa: E402
from bund.parties.lifecycle.states import JobState  # noqa: E402
from bund.parties.protocols import psi  # noqa: E402
from tests.compute.test_executor import ExecutorContract  # noqa: E402
from tests.conftest import NodeFactory  # noqa: E402
from tests.integration.test_node import psi_spec, wait_final  # noqa: E402

pytestmark = pytest.mark.integration

BANK = [f"91310000MA1K{i:06d}" for i in range(0, 1200)]
TAX = [f"91310000MA1K{i:06d}" for i in range(700, 2000)]


@pytest.fixture(scope="module")
def short_temp_dir() -> Iterator[str]:
    """A temporary directory with a short path: Ray puts Unix sockets (108 bytes at most) in it."""
    temp = tempfile.mkdtemp(prefix="bund-ray-")
    yield temp
    shutil.rmtree(temp, ignore_errors=True)


def test_a_ray_executor_starts_and_stops_its_own_local_cluster(
    short_temp_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not ray.is_initialized()
    monkeypatch.setenv("RAY_TMPDIR", short_temp_dir)
    ex = RayExecutor(1)
    assert not ray.is_initialized()  # created, not yet used: nothing started
    assert ex.map(abs, [-1, -2, 3]) == [1, 2, 3]
    assert ray.is_initialized() and ray.cluster_resources()["CPU"] == 1
    ex.close()
    assert not ray.is_initialized()


@pytest.fixture(scope="module")
def ray_cluster(short_temp_dir: str) -> Iterator[None]:
    """The module's local cluster; requested by every test after the first."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=short_temp_dir)
    yield
    ray.shutdown()


class TestRay(ExecutorContract):
    __test__ = True

    @pytest.fixture(autouse=True)
    def _cluster(self, ray_cluster: None) -> None:
        """Every contract test runs on the module's cluster."""

    def make(self) -> Executor:
        return RayExecutor(2)


@pytest.mark.usefixtures("ray_cluster")
def test_closing_an_executor_leaves_a_cluster_it_joined_running() -> None:
    with RayExecutor(2) as ex:
        assert ex.map(len, [b"ab", b"c"]) == [2, 1]
    assert ray.is_initialized()


@pytest.mark.usefixtures("ray_cluster")
def test_public_paillier_kernels_run_on_ray_and_private_keys_are_refused() -> None:
    insecure.enable_insecure_test_parameters()
    public, private = pl.generate_keypair(512)
    encryptor = pl.Encryptor(public)
    values = list(range(-5, 7))
    with RayExecutor(2) as ex:
        vector = pl.encrypt(encryptor, values, executor=ex)
        assert pl.decrypt(private, vector) == values
        assert pl.decrypt(private, vector.dot(values, executor=ex)) == [sum(v * v for v in values)]
        with pytest.raises(TypeError, match="never leaves"):
            pl.decrypt(private, vector, executor=ex)
        with pytest.raises(TypeError, match="never leaves"):
            pl.encrypt(pl.Encryptor(private), values, executor=ex)


@pytest.mark.usefixtures("ray_cluster")
def test_psi_kernels_give_the_same_points_on_ray_as_inline() -> None:
    items = [x.encode() for x in BANK[:500]]
    key = create_blinding_key()
    expected = blind(hash_to_points(items, b"ctx"), key)
    with RayExecutor(2) as ex:
        assert hash_and_blind(items, b"ctx", key, ex) == expected
        assert blind(expected, key, ex) == blind(expected, key)


def _spec(mode: str) -> JobSpec:
    parts = (
        Participant("bank", "member", "loans", {"id": "company_id"}),
        Participant("tax", "member", "filings", {"id": "uscc"}),
    )
    return JobSpec("psi", parts, ("bank", "tax"), "align", "bank", {"mode": mode})


def _run(mode: str, executor: Executor) -> dict[str, Result | None]:
    tables = {
        "bank": Table.from_columns("loans", {"company_id": BANK}),
        "tax": Table.from_columns("filings", {"uscc": TAX}),
    }
    limits = {psi.LIMIT_MAX_SET_SIZE: 10_000}
    return run_in_memory(_spec(mode), psi.DEFINITION, tables, limits, executor=executor)


@pytest.mark.usefixtures("ray_cluster")
@pytest.mark.parametrize("mode", ["intersection", "cardinality"])
def test_psi_in_memory_on_ray_matches_inline_and_plaintext(mode: str) -> None:
    with RayExecutor(2) as ex:
        on_ray = _run(mode, ex)
    inline = _run(mode, InlineExecutor())
    common = sorted(set(BANK) & set(TAX))
    for party in ("bank", "tax"):
        got, ref = on_ray[party], inline[party]
        assert got is not None and ref is not None
        assert got.summary == ref.summary
        assert got.summary["intersection_size"] == len(common)
        if mode == "intersection":
            rows = got.artifacts["intersection.csv"].decode().splitlines()
            assert rows[0] == "id" and sorted(rows[1:]) == common
        else:
            assert not got.artifacts


@pytest.mark.usefixtures("ray_cluster")
def test_psi_between_two_nodes_whose_executor_is_ray(node_factory: NodeFactory) -> None:
    compute = '[compute]\nexecutor = "ray:2"'
    node_factory.start(
        "bank", {"loans": {"company_id": BANK}}, ("tax",), {"loans": ["psi"]}, extra=compute
    )
    node_factory.start(
        "tax", {"filings": {"uscc": TAX}}, ("bank",), {"filings": ["psi"]}, extra=compute
    )
    assert all(isinstance(n.manager.executor, RayExecutor) for n in node_factory.nodes.values())
    with node_factory.client("bank") as bank:
        job_id = bank.submit(psi_spec())
        status = wait_final(bank, job_id)
        assert status.state is JobState.SUCCEEDED, status.error
        result = bank.result(job_id)
    rows = result.artifacts["intersection.csv"].decode().splitlines()
    assert rows[0] == "id" and sorted(rows[1:]) == sorted(set(BANK) & set(TAX))
    node_factory.stop_all()
    assert ray.is_initialized()  # the nodes joined the test's cluster and left it running
