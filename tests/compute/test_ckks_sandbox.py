"""The CKKS worker: malformed peer data, a crash and a hang each give a clear error."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import numpy as np
import pytest

from bund.compute import ckks
from bund.compute.ckks_sandbox import CkksSandbox, SandboxError, encode_frame, read_frame
from bund.compute.errors import InvalidCiphertextError, InvalidKeyError, InvalidMessageError
from bund.compute.learn.risk_model import RiskModel, model_to_columns

FEATURES = ["a", "b"]
MODEL = model_to_columns(RiskModel(tuple(FEATURES), np.array([[0.5, -0.25]]), np.array([0.1])))


@pytest.fixture(scope="module")
def hospital() -> Iterator[tuple[CkksSandbox, bytes, list[bytes]]]:
    with CkksSandbox() as sandbox:
        _, (public,) = sandbox.call("keygen", {"degree": 8192, "relin": False})
        columns = [np.array([1.0, 2.0, 3.0]), np.array([4.0, -5.0, 6.0])]
        _, vectors = sandbox.call("encrypt", {}, [c.astype("<f8").tobytes() for c in columns])
        yield sandbox, public, vectors


def _evaluate(sandbox: CkksSandbox, vectors: list[bytes]) -> tuple[float, bytes]:
    header = {"model": MODEL, "features": FEATURES, "ranges": [[0, 8], [-8, 8]], "size": 3}
    answer, (logits,) = sandbox.call("evaluate", header, vectors)
    return float(answer["error_bound"]), logits


def test_round_trip_releases_only_flooded_integers(
    hospital: tuple[CkksSandbox, bytes, list[bytes]],
) -> None:
    keys, public, vectors = hospital
    with CkksSandbox() as insurer:
        insurer.call("load", {"relin": False}, [public])
        bound, logits = _evaluate(insurer, vectors)
    header = {"sizes": [3], "level": 1, "sigma": 1e-4, "precision": 12}
    _, (out,) = keys.call("decrypt", header, [logits])
    released = np.frombuffer(out, dtype="<i8") / 4096.0
    exact = np.array([0.5 * 1 - 0.25 * 4, 0.5 * 2 + 0.25 * 5, 0.5 * 3 - 0.25 * 6]) + 0.1
    assert np.abs(released - exact).max() <= ckks.released_error_bound(bound, 1e-4, 12)


def test_malformed_peer_data_gives_clear_errors_and_the_worker_serves_on(
    hospital: tuple[CkksSandbox, bytes, list[bytes]],
) -> None:
    keys, public, vectors = hospital
    with CkksSandbox() as insurer:
        for bad in (b"\x01", public[:5000], public[:-3], bytes(reversed(public[:20000]))):
            with pytest.raises(InvalidKeyError):
                insurer.call("load", {"relin": False}, [bad])
        with pytest.raises(InvalidMessageError, match="needs a peer's context"):
            _evaluate(insurer, vectors)
        insurer.call("load", {"relin": False}, [public])
        for bad_vector in (vectors[0][:-1], vectors[0][:64], b"\x00" * 4096):
            with pytest.raises(InvalidCiphertextError):
                _evaluate(insurer, [bad_vector, vectors[1]])
        with pytest.raises(InvalidMessageError, match="unknown sandbox operation"):
            insurer.call("format_disk")
        assert _evaluate(insurer, vectors)[0] > 0  # still serving
    # The key owner refuses a result that is not at the level the model leaves it at.
    with pytest.raises(InvalidCiphertextError, match="level"):
        keys.call(
            "decrypt", {"sizes": [3], "level": 1, "sigma": 1e-4, "precision": 12}, vectors[:1]
        )


def test_a_crashed_worker_gives_a_clear_error_and_a_new_one_works(
    hospital: tuple[CkksSandbox, bytes, list[bytes]],
) -> None:
    _, public, _ = hospital
    sandbox = CkksSandbox()
    sandbox.call("load", {"relin": False}, [public])
    os.kill(sandbox.pid, signal.SIGSEGV)  # what a native crash on crafted input looks like
    with pytest.raises(SandboxError, match="died"):
        sandbox.call("load", {"relin": False}, [public])
    with pytest.raises(SandboxError, match="gone"):
        sandbox.call("load", {"relin": False}, [public])
    with CkksSandbox() as fresh:
        assert fresh.call("load", {"relin": False}, [public])[0]["degree"] == 8192


def test_a_hung_worker_is_killed_at_the_deadline(
    hospital: tuple[CkksSandbox, bytes, list[bytes]],
) -> None:
    _, public, _ = hospital
    with CkksSandbox(timeout=5.0) as sandbox:
        sandbox.call("load", {"relin": False}, [public])  # the worker is up and answering
        os.kill(sandbox.pid, signal.SIGSTOP)  # a hang: it never answers
        sandbox.timeout = 0.2
        with pytest.raises(SandboxError, match="longer than"):
            sandbox.call("load", {"relin": False}, [public])
        with pytest.raises(SandboxError, match="gone"):
            sandbox.call("load", {"relin": False}, [public])


@pytest.mark.slow
def test_memory_cap_applies_to_the_worker() -> None:
    # 160 MiB of address space holds the interpreter and numpy, not an N = 16384 key pair.
    capped = CkksSandbox(memory_bytes=160 << 20, timeout=10.0)  # a failed allocation may hang
    with capped as sandbox, pytest.raises(InvalidMessageError):
        sandbox.call("keygen", {"degree": 16384, "relin": True})
    with CkksSandbox() as sandbox:
        assert sandbox.call("keygen", {"degree": 16384, "relin": True})[1][0]


def test_frames_round_trip_and_reject_bad_counts() -> None:
    import io

    frame = encode_frame({"op": "x", "n": 1}, [b"abc", b""])
    assert read_frame(io.BytesIO(frame)) == ({"op": "x", "n": 1}, [b"abc", b""])
    with pytest.raises(InvalidMessageError):
        read_frame(io.BytesIO(b"\x00\x00\x00\x00"))
    with pytest.raises(EOFError):
        read_frame(io.BytesIO(frame[:-2]))
