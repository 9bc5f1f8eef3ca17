"""Fiat–Shamir transcripts: the verifier's random challenges, derived from everything said before.

Each proof of :mod:`bund.compute.zk` is an interactive public-coin protocol of CGGMP21 made
non-interactive by hashing. A :class:`Transcript` absorbs, in order, the proof's name and
version, the statement (the modulus, the key id, the ring-Pedersen parameters, the ciphertext),
the caller's context (the job id, the role: see :func:`make_context`), the proof's parameters and
every first message of the prover, and then squeezes the challenge. A proof made for one job,
key, role or statement therefore does not verify for another.

Encoding, so that no two different transcripts hash alike (the "TSSHOCK" ambiguity of
concatenated inputs, Verichains 2023, cannot arise): the state is SHAKE-256 over a sequence of
records ``kind:u8 | len(label):u16 | label | len(data):u64 | data``, starting with the domain
``b"bund/zk/transcript/v1"`` and the protocol's name. Integers are absorbed big-endian in a fixed
width that the statement fixes (``ceil(bits/8)`` of the modulus), never in a minimal one.
A challenge is read from SHAKE-256 of a copy of the state after a ``challenge`` record that names
it; the record is then absorbed, so a second challenge differs from the first. Integers below a
bound are drawn by rejection sampling (top bits masked), so they are uniform.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator
from typing import Any

#: Domain of every Bund transcript; a new layout gets a new version here.
TRANSCRIPT_DOMAIN = b"bund/zk/transcript/v1"

_APPEND = 1
_CHALLENGE = 2
_RECORD_HEAD = struct.Struct(">BH")
_LENGTH = struct.Struct(">Q")
_PART_LENGTH = struct.Struct(">I")


def make_context(*parts: str | bytes) -> bytes:
    """Join a proof's context (job id, role, purpose...) into bytes that no other parts produce.

    Each part is length-prefixed (``u32``; text as UTF-8), so ``("ab", "c")`` and ``("a", "bc")``
    differ. Both prover and verifier build it from what the job spec fixes.

    >>> make_context("job-42", "model-holder") == make_context("job-42", "model-holde", "r")
    False
    """
    out = bytearray()
    for part in parts:
        if isinstance(part, str):
            data = part.encode("utf-8")
        elif isinstance(part, bytes):
            data = part
        else:
            raise TypeError("context parts are str or bytes")
        out += _PART_LENGTH.pack(len(data)) + data
    return bytes(out)


class Transcript:
    """A Fiat–Shamir transcript over SHAKE-256 (see the module docstring for the encoding).

    Args:
        protocol: The proof's name and version, e.g. ``"bund/zk/mod/v1"``.

    >>> t = Transcript("example/v1")
    >>> t.append_int("n", 15, 1)
    >>> 0 <= t.challenge_below("y", 15) < 15
    True
    """

    __slots__ = ("_state",)

    def __init__(self, protocol: str) -> None:
        self._state = hashlib.shake_256()
        self._record(_APPEND, "domain", TRANSCRIPT_DOMAIN)
        self._record(_APPEND, "protocol", protocol.encode("utf-8"))

    def _record(self, kind: int, label: str, data: bytes) -> None:
        name = label.encode("utf-8")
        self._state.update(_RECORD_HEAD.pack(kind, len(name)) + name)
        self._state.update(_LENGTH.pack(len(data)) + data)

    def append_bytes(self, label: str, data: bytes) -> None:
        """Absorb ``data`` under ``label``."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError("a transcript absorbs bytes")
        self._record(_APPEND, label, bytes(data))

    def append_int(self, label: str, value: int, width: int) -> None:
        """Absorb a non-negative integer as ``width`` big-endian bytes.

        Raises:
            ValueError: If ``value`` is negative or does not fit ``width`` bytes.
        """
        value = int(value)
        if value < 0 or value.bit_length() > 8 * width:
            raise ValueError(f"{value.bit_length()}-bit value does not fit {width} bytes unsigned")
        self._record(_APPEND, label, value.to_bytes(width, "big"))

    def append_signed(self, label: str, value: int, width: int) -> None:
        """Absorb a signed integer as ``width`` bytes of big-endian two's complement.

        Raises:
            OverflowError: If ``value`` does not fit.
        """
        self._record(_APPEND, label, int(value).to_bytes(width, "big", signed=True))

    def _stream(self, label: str, request: bytes) -> Iterator[bytes]:
        """The challenge stream for ``label``; the request record is absorbed at once."""
        record = label.encode("utf-8")
        head = _RECORD_HEAD.pack(_CHALLENGE, len(record)) + record
        head += _LENGTH.pack(len(request)) + request
        xof = self._state.copy()
        xof.update(head)
        self._state.update(head)
        return _squeeze(xof)

    def challenge_bytes(self, label: str, size: int) -> bytes:
        """``size`` challenge bytes."""
        if size < 0:
            raise ValueError("size is at least 0")
        stream = self._stream(label, b"bytes" + _LENGTH.pack(size))
        out = bytearray()
        while len(out) < size:
            out += next(stream)
        return bytes(out[:size])

    def challenge_ints_below(self, label: str, bound: int, count: int) -> list[int]:
        """``count`` independent uniform integers in ``[0, bound)`` (rejection sampling).

        Raises:
            ValueError: If ``bound < 1`` or ``count < 0``.
        """
        bound = int(bound)
        if bound < 1 or count < 0:
            raise ValueError("bound is at least 1 and count at least 0")
        bits = (bound - 1).bit_length()
        width = max(1, (bits + 7) // 8)
        mask = (1 << bits) - 1
        request = b"below" + _LENGTH.pack(count) + bound.to_bytes(width + 1, "big")
        stream = self._stream(label, request)
        out: list[int] = []
        buffer, offset = b"", 0
        while len(out) < count:
            if len(buffer) - offset < width:
                buffer = buffer[offset:] + next(stream)
                offset = 0
                continue
            candidate = int.from_bytes(buffer[offset : offset + width], "big") & mask
            offset += width
            if candidate < bound:
                out.append(candidate)
        return out

    def challenge_below(self, label: str, bound: int) -> int:
        """One uniform integer in ``[0, bound)``."""
        return self.challenge_ints_below(label, bound, 1)[0]

    def challenge_bits(self, label: str, count: int) -> list[int]:
        """``count`` independent challenge bits (each 0 or 1)."""
        return self.challenge_ints_below(label, 2, count)

    def challenge_signed(self, label: str, bits: int) -> int:
        """A uniform integer in ``[-2^bits, 2^bits)``."""
        if bits < 0:
            raise ValueError("bits is at least 0")
        return self.challenge_below(label, 1 << (bits + 1)) - (1 << bits)


def _squeeze(xof: Any) -> Iterator[bytes]:
    """Successive chunks of a SHAKE-256 output stream (a longer digest extends a shorter one)."""
    length, served = 1024, 0
    while True:
        block: bytes = xof.digest(length)
        yield block[served:]
        served, length = length, 2 * length
