"""Executors: a contract suite that every back-end passes, the spec factory, batch splitting."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from compute.executor import (
    Executor,
    InlineExecutor,
    ProcessExecutor,
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
    "spec", ["ray", "ray://head:10001", "gpu", "inline:2", "thread:0", "thread:x", ""]
)
def test_unknown_or_malformed_specs_are_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="inline|positive"):
        create_executor(spec)


def test_the_refusal_names_the_accepted_specs() -> None:
    with pytest.raises(ValueError, match=r"'inline', 'thread\[:N\]', 'process\[:N\]'"):
        create_executor("ray")
    with pytest.raises(TypeError):
        create_executor(2)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ThreadExecutor(0)


@given(items=st.lists(st.integers(), max_size=50), parts=st.integers(1, 10))
def test_split_evenly(items: list[int], parts: int) -> None:
    chunks = split_evenly(items, parts)
    assert [x for chunk in chunks for x in chunk] == items
    assert len(chunks) == min(parts, len(items))
    assert all(chunks)
    if chunks:
        sizes = [len(c) for c in chunks]
        assert max(sizes) - min(sizes) <= 1
