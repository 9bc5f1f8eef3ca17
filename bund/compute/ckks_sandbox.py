"""A worker process that parses and computes on CKKS objects, so a crafted input cannot kill a node.

TenSEAL and SEAL are native code: a malformed context or ciphertext that trips a bug there
could crash or hang the whole process. Every TenSEAL object a peer sends is therefore parsed,
checked (``bund.compute.ckks.load_public_context`` / ``load_vector``) and computed on only inside a
:class:`CkksSandbox` worker: a child interpreter with an address-space cap
(``RLIMIT_AS``, set by the child before it reads any input) and no core dumps. The parent
waits for each answer with a deadline; a crash, a hang, or a cap hit becomes an
:class:`~compute.errors.InvalidMessageError` and the node carries on.

A secret context is created *inside* the worker (``keygen``) and never leaves it: the parent
receives the public context to send, ciphertexts, and flooded, rounded integers — never a raw
decryption and never the secret key.

Wire between parent and worker (pipes, nothing pickled): a frame is a ``u32`` part count then
each part as ``u64`` length and bytes, all big-endian; part 0 is a UTF-8 JSON header
(``{"op": …}`` in a request, ``{"ok": true, …}`` or ``{"ok": false, "error": class, "message":
…}`` in an answer), the other parts are opaque byte strings (serialised TenSEAL objects, or
little-endian float64/int64 arrays).

Operations: ``keygen`` (degree, relin → public context), ``encrypt`` (float64 columns →
ciphertexts), ``decrypt`` (ciphertexts, sizes, level, sigma, precision → flooded int64 arrays),
``load`` (a peer's public context, relin), ``evaluate`` (model table, features, ranges, size,
one ciphertext per feature → the logits' ciphertext and its error bound).
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, BinaryIO

import numpy as np

from bund.compute import errors

#: Largest frame either side accepts (a request holds at most a context or a batch of vectors).
MAX_FRAME_BYTES = 256 << 20
#: Largest number of parts in a frame.
MAX_PARTS = 1024
#: Default address-space cap of a worker (TenSEAL, numpy and one N = 16384 context fit easily).
DEFAULT_MEMORY_BYTES = 3 << 30
#: Default deadline of one operation, in seconds.
DEFAULT_TIMEOUT_S = 120.0
#: Errors a worker may report by name; anything else is reported as a malformed message.
_REPORTABLE = {
    cls.__name__: cls
    for cls in (
        errors.InvalidKeyError,
        errors.InvalidCiphertextError,
        errors.InvalidInputError,
        errors.InvalidMessageError,
    )
}


class SandboxError(errors.InvalidMessageError):
    """The CKKS worker crashed, hung past its deadline or hit its memory cap on a peer's data."""


def encode_frame(header: Mapping[str, Any], blobs: Sequence[bytes] = ()) -> bytes:
    """One frame: the JSON header, then the blobs, each length-prefixed."""
    parts = [json.dumps(header, separators=(",", ":")).encode(), *blobs]
    out = [len(parts).to_bytes(4, "big")]
    for part in parts:
        out += [len(part).to_bytes(8, "big"), bytes(part)]
    return b"".join(out)


def _read_exact(stream: BinaryIO, count: int) -> bytes:
    data = stream.read(count)
    if data is None or len(data) != count:
        raise EOFError("the stream ended inside a frame")
    return data


def read_frame(stream: BinaryIO) -> tuple[dict[str, Any], list[bytes]]:
    """Read one frame (blocking), checking its part count and sizes against the caps."""
    count = int.from_bytes(_read_exact(stream, 4), "big")
    if not 1 <= count <= MAX_PARTS:
        raise errors.InvalidMessageError(f"a sandbox frame has 1-{MAX_PARTS} parts")
    parts: list[bytes] = []
    total = 0
    for _ in range(count):
        size = int.from_bytes(_read_exact(stream, 8), "big")
        total += size
        if total > MAX_FRAME_BYTES:
            raise errors.InvalidMessageError(f"a sandbox frame is at most {MAX_FRAME_BYTES} B")
        parts.append(_read_exact(stream, size))
    header = json.loads(parts[0])
    if not isinstance(header, dict):
        raise errors.InvalidMessageError("a sandbox frame header is a JSON object")
    return header, parts[1:]


class CkksSandbox:
    """A CKKS worker process, its deadline per operation, and its memory cap.

    Use as a context manager; one job's role holds one sandbox (its state: the secret context
    at the key owner, the peer's public context at the evaluator).
    """

    def __init__(
        self, *, timeout: float = DEFAULT_TIMEOUT_S, memory_bytes: int = DEFAULT_MEMORY_BYTES
    ) -> None:
        if timeout <= 0 or memory_bytes < 128 << 20:
            raise ValueError("timeout is positive and memory_bytes at least 128 MiB")
        self.timeout = timeout
        root = str(Path(__file__).resolve().parent.parent)
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
        self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            [sys.executable, "-m", "bund.compute.ckks_sandbox", str(memory_bytes)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": path},
            close_fds=True,
        )

    @property
    def pid(self) -> int:
        """The worker's process id.

        Raises:
            SandboxError: If the worker is gone.
        """
        return self._live().pid

    def _live(self) -> subprocess.Popen[bytes]:
        """The running worker; one that exited since the last call is reported once and reaped.

        So a crash reads "died" whether the next call finds the process gone or its pipe closed,
        and the pipes are closed either way (not left to the garbage collector).
        """
        if self._proc is None:
            raise SandboxError(
                "the CKKS worker is gone (it failed on earlier input); the job cannot go on"
            )
        if self._proc.poll() is not None:
            self.close()
            raise SandboxError(
                "the CKKS worker died since its last answer (the peer's data may be crafted to "
                "crash it)"
            )
        return self._proc

    def call(
        self, op: str, header: Mapping[str, Any] | None = None, blobs: Sequence[bytes] = ()
    ) -> tuple[dict[str, Any], list[bytes]]:
        """Run ``op`` in the worker and return its answer's header and blobs.

        Raises:
            SandboxError: If the worker crashes, hangs past ``timeout`` or is gone.
            InvalidKeyError, InvalidCiphertextError, InvalidInputError, InvalidMessageError:
                As the worker's checks report them (the worker keeps serving).
        """
        proc = self._live()
        assert proc.stdin is not None and proc.stdout is not None
        deadline = time.monotonic() + self.timeout
        try:
            self._write(proc.stdin, encode_frame({**(header or {}), "op": op}, blobs), deadline)
            answer, out = self._read_answer(proc.stdout, deadline)
        except (BrokenPipeError, EOFError, OSError, ValueError):
            self.close()
            raise SandboxError(
                f"the CKKS worker died during {op!r} (the peer's data may be crafted to crash it)"
            ) from None
        if answer.get("ok") is True:
            return answer, out
        cls = _REPORTABLE.get(str(answer.get("error")), errors.InvalidMessageError)
        raise cls(str(answer.get("message", "the CKKS worker refused the input"))[:500])

    def _wait(self, fd: int, deadline: float, *, write: bool) -> None:
        """Wait until ``fd`` is ready; past the deadline, kill the worker and raise."""
        left = max(0.0, deadline - time.monotonic())
        ready = (
            select.select([], [fd], [], left)[1] if write else select.select([fd], [], [], left)[0]
        )
        if not ready:
            self.close()
            raise SandboxError(f"the CKKS worker took longer than {self.timeout:g} s")

    def _write(self, stdin: IO[bytes], frame: bytes, deadline: float) -> None:
        """Write a request frame, never blocking past the deadline: a hung worker stops reading."""
        fd = stdin.fileno()
        os.set_blocking(fd, False)
        view = memoryview(frame)
        while view:
            self._wait(fd, deadline, write=True)
            try:
                view = view[os.write(fd, view[: 1 << 20]) :]
            except BlockingIOError:
                continue

    def _read_answer(
        self, stdout: IO[bytes], deadline: float
    ) -> tuple[dict[str, Any], list[bytes]]:
        """Read one answer frame, giving up (and killing the worker) at the deadline."""
        fd = stdout.fileno()

        def take(count: int) -> bytes:
            data = bytearray()
            while len(data) < count:
                self._wait(fd, deadline, write=False)
                chunk = os.read(fd, min(count - len(data), 1 << 20))
                if not chunk:
                    raise EOFError("the worker closed its answer stream")
                data += chunk
            return bytes(data)

        count = int.from_bytes(take(4), "big")
        if not 1 <= count <= MAX_PARTS:
            raise ValueError("the worker's answer has a bad part count")
        parts = []
        for _ in range(count):
            size = int.from_bytes(take(8), "big")
            if size > MAX_FRAME_BYTES:
                raise ValueError("the worker's answer is oversized")
            parts.append(take(size))
        header = json.loads(parts[0])
        if not isinstance(header, dict):
            raise ValueError("the worker's answer header is no JSON object")
        return header, parts[1:]

    def close(self) -> None:
        """Stop the worker (its secret context, if any, dies with it)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait()

    def __enter__(self) -> CkksSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- the worker side ------------------------------------------------------------------------


class _Worker:
    """The state of one worker: its context (secret after keygen, public after load)."""

    def __init__(self) -> None:
        from bund.compute import ckks  # imported only once the memory cap is in force

        self.ckks = ckks
        self.context: Any = None

    def handle(
        self, header: dict[str, Any], blobs: list[bytes]
    ) -> tuple[dict[str, Any], list[bytes]]:
        op = header.get("op")
        handler = getattr(self, f"op_{op}", None) if isinstance(op, str) else None
        if handler is None:
            raise errors.InvalidMessageError(f"unknown sandbox operation {op!r}")
        result: tuple[dict[str, Any], list[bytes]] = handler(header, blobs)
        return result

    def _need(self, private: bool) -> Any:
        if self.context is None or self.context.is_private != private:
            kind = "a secret context (keygen)" if private else "a peer's context (load)"
            raise errors.InvalidMessageError(f"this operation needs {kind} first")
        return self.context

    def op_keygen(
        self, header: dict[str, Any], blobs: list[bytes]
    ) -> tuple[dict[str, Any], list[bytes]]:
        params = self.ckks.CkksParameters.for_scoring(int(header["degree"]))
        self.context = self.ckks.CkksContext.create(params, galois_keys=False, threads=1)
        public = self.context.serialize(galois_keys=False, relin_keys=bool(header["relin"]))
        return {}, [public]

    def op_encrypt(
        self, header: dict[str, Any], blobs: list[bytes]
    ) -> tuple[dict[str, Any], list[bytes]]:
        context = self._need(private=True)
        columns = [np.frombuffer(b, dtype="<f8") for b in blobs]
        return {}, [context.encrypt(c).serialize() for c in columns]

    def op_decrypt(
        self, header: dict[str, Any], blobs: list[bytes]
    ) -> tuple[dict[str, Any], list[bytes]]:
        context = self._need(private=True)
        sizes = [int(s) for s in header["sizes"]]
        if len(sizes) != len(blobs):
            raise errors.InvalidMessageError("one size per ciphertext")
        out = []
        for size, blob in zip(sizes, blobs, strict=True):
            vector = self.ckks.load_vector(context, blob, size=size, level=int(header["level"]))
            values = self.ckks.flood_and_round(
                vector.decrypt(), float(header["sigma"]), int(header["precision"])
            )
            out.append(values.astype("<i8").tobytes())
        return {}, out

    def op_load(
        self, header: dict[str, Any], blobs: list[bytes]
    ) -> tuple[dict[str, Any], list[bytes]]:
        if len(blobs) != 1:
            raise errors.InvalidMessageError("load takes one context")
        self.context = self.ckks.load_public_context(blobs[0], relin_keys=bool(header["relin"]))
        return {"degree": self.context.poly_modulus_degree}, []

    def op_evaluate(
        self, header: dict[str, Any], blobs: list[bytes]
    ) -> tuple[dict[str, Any], list[bytes]]:
        from bund.compute.learn.risk_model import model_from_columns

        context = self._need(private=False)
        model = model_from_columns(header["model"], [str(f) for f in header["features"]])
        size = int(header["size"])
        top = context.parameters.depth
        vectors = [self.ckks.load_vector(context, b, size=size, level=top) for b in blobs]
        ranges = [(float(lo), float(hi)) for lo, hi in header["ranges"]]
        evaluation = self.ckks.evaluate_model(model, vectors, ranges)
        return {"error_bound": evaluation.error_bound}, [evaluation.logits.serialize()]


def _serve(memory_bytes: int) -> None:
    """The worker's main loop: cap memory, then answer frames on stdin until it closes."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # Answers go to a private copy of stdout; anything native code prints goes to stderr.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    inp = sys.stdin.buffer
    worker = _Worker()
    while True:
        try:
            header, blobs = read_frame(inp)
        except (EOFError, ValueError, errors.BundError):
            return  # the parent closed the pipe (or broke the framing): nothing more to do
        try:
            answer, parts = worker.handle(header, blobs)
            answer = {**answer, "ok": True}
        except errors.BundError as exc:
            answer, parts = {"ok": False, "error": type(exc).__name__, "message": str(exc)}, []
        except MemoryError:
            answer, parts = {"ok": False, "message": "the CKKS worker hit its memory cap"}, []
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            message = f"the CKKS worker could not use the input ({type(exc).__name__})"
            answer, parts = {"ok": False, "message": message}, []
        out.write(encode_frame(answer, parts))
        out.flush()


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
