"""Executors: a contract suite that every back-end passes, the spec factory, batch splitting.

The Ray back-end runs the same contract in ``tests/integration/test_ray.py`` (it needs a cluster);
here only its spec parsing, laziness and install hint, which need none.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bund.compute.executor import (
    RAY_INSTALL_HINT,
    Executor,
    InlineExecutor,
    ProcessExecutor,
    RayExecutor,
    ThreadExecutor,
    create_executor,
    split_evenly,
)


def _fail_on_three(x: int) -> int:
    if x == 3:
        raise ArithmeticError("three")
    return x


class ExecutorContract:
    """What every executor does; subclasses say how to make one."""

    __test__ = False

    def make(self) -> Executor:
        raise NotImplementedError

    @pytest.fixture
    def executor(self) -> Iterator[Executor]:
        with self.make() as ex:
            yield ex

    def test_map_keeps_order(self, executor: Executor) -> None:
        batches = list(range(12))
        assert executor.map(math.factorial, batches) == [math.factorial(b) for b in batches]

    def test_map_of_nothing_and_of_one(self, executor: Executor) -> None:
        assert executor.map(math.factorial, []) == []
        assert executor.map(math.factorial, [5]) == [120]

    def test_exceptions_propagate(self, executor: Executor) -> None:
        with pytest.raises(ArithmeticError, match="three"):
            executor.map(_fail_on_three, [1, 2, 3, 4])

    def test_close_twice(self, executor: Executor) -> None:
        executor.map(abs, [-1, -2])
        executor.close()
        executor.close()

    def test_workers(self, executor: Executor) -> None:
        assert executor.workers >= 1

    def test_in_process_only_where_nothing_is_pickled(self, executor: Executor) -> None:
        assert executor.in_process is isinstance(executor, InlineExecutor | ThreadExecutor)


class TestInline(ExecutorContract):
    __test__ = True

    def make(self) -> Executor:
        return InlineExecutor()


class TestThreads(ExecutorContract):
    __test__ = True

    def make(self) -> Executor:
        return ThreadExecutor(3)


class TestProcesses(ExecutorContract):
    __test__ = True

    def make(self) -> Executor:
        return ProcessExecutor(2)


def test_specs() -> None:
    assert isinstance(create_executor("inline"), InlineExecutor)
    with create_executor("thread:2") as ex:
        assert isinstance(ex, ThreadExecutor) and ex.workers == 2
    with create_executor("process:1") as ex:
        assert isinstance(ex, ProcessExecutor) and ex.workers == 1
    with create_executor("thread") as ex:
        assert ex.workers >= 1


@pytest.mark.parametrize(
    "spec",
    ["gpu", "inline:2", "thread:0", "thread:x", "", "ray:0", "ray:-1", "ray://", "ray://head"],
)
def test_unknown_or_malformed_specs_are_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="inline|positive|ray://HOST:PORT"):
        create_executor(spec)


def test_the_refusal_names_the_accepted_specs() -> None:
    accepted = r"'inline', 'thread\[:N\]', 'process\[:N\]', 'ray\[:N\]', 'ray://HOST:PORT'"
    with pytest.raises(ValueError, match=accepted):
        create_executor("gpu")
    with pytest.raises(TypeError):
        create_executor(2)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ThreadExecutor(0)
    with pytest.raises(TypeError):
        RayExecutor(True)


def test_ray_specs_parse_without_starting_ray() -> None:
    ray = pytest.importorskip("ray", reason="the optional extra bund[ray] is not installed")
    local = create_executor("ray:3")
    cluster = create_executor(" ray://10.0.0.7:10001 ")
    default = create_executor("ray")
    assert isinstance(local, RayExecutor) and local.workers == 3
    assert isinstance(cluster, RayExecutor) and isinstance(default, RayExecutor)
    assert default.workers >= 1
    assert not local.in_process and not cluster.in_process
    for ex in (local, cluster, default):
        ex.close()
    assert not ray.is_initialized()  # parsing and closing unused executors connect to nothing


def test_a_missing_ray_gives_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    for spec in ("ray", "ray:2", "ray://head:10001"):
        with pytest.raises(ValueError, match=re.escape(RAY_INSTALL_HINT)):
            create_executor(spec)


@given(items=st.lists(st.integers(), max_size=50), parts=st.integers(1, 10))
def test_split_evenly(items: list[int], parts: int) -> None:
    chunks = split_evenly(items, parts)
    assert [x for chunk in chunks for x in chunk] == items
    assert len(chunks) == min(parts, len(items))
    assert all(chunks)
    if chunks:
        sizes = [len(c) for c in chunks]
        assert max(sizes) - min(sizes) <= 1
