"""Fixed-width binary layouts shared by the proofs: a writer and a reader that checks every size.

Every proof message is ``magic:4 bytes | version:u8 | fields``; integers are big-endian in a width
that the header fixes (unsigned, or two's complement for signed values), so a message's length
is known from its header and a decoder refuses anything longer, shorter or out of range with
:class:`~bund.compute.errors.InvalidMessageError` before any arithmetic runs.
"""

from __future__ import annotations

import struct

import gmpy2

from bund.compute.errors import InvalidMessageError
from bund.compute.paillier import MAX_KEY_BITS, MIN_TEST_KEY_BITS, Mpz

#: Version byte of every proof layout in this package.
PROOF_VERSION = 1

_HEADER = struct.Struct(">4sB")


def byte_width(bits: int) -> int:
    """Bytes of an unsigned ``bits``-bit integer."""
    return (bits + 7) // 8


def signed_width(bits: int) -> int:
    """Bytes of a two's complement integer of magnitude below ``2^bits`` (sign bit included)."""
    return (bits + 8) // 8


class Writer:
    """Builds one message: the header, then fields in order."""

    __slots__ = ("_parts",)

    def __init__(self, magic: bytes) -> None:
        self._parts: list[bytes] = [_HEADER.pack(magic, PROOF_VERSION)]

    def u8(self, value: int) -> Writer:
        """Append an unsigned byte."""
        self._parts.append(struct.pack(">B", value))
        return self

    def u16(self, value: int) -> Writer:
        """Append an unsigned 16-bit integer."""
        self._parts.append(struct.pack(">H", value))
        return self

    def uint(self, value: int | Mpz, width: int) -> Writer:
        """Append a non-negative integer in ``width`` bytes (``OverflowError`` if it won't fit)."""
        self._parts.append(int(value).to_bytes(width, "big"))
        return self

    def sint(self, value: int | Mpz, width: int) -> Writer:
        """Append a signed integer in ``width`` bytes of two's complement."""
        self._parts.append(int(value).to_bytes(width, "big", signed=True))
        return self

    def finish(self) -> bytes:
        """The message."""
        return b"".join(self._parts)


class Reader:
    """Reads one message field by field; every read and the final length are checked.

    Args:
        data: The message.
        magic: The layout's 4-byte magic.
        what: The message's name, for error messages.

    Raises:
        InvalidMessageError: If the data is not bytes, too short, or has another magic or version.
    """

    __slots__ = ("_data", "_offset", "_what")

    def __init__(self, data: bytes, magic: bytes, what: str) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidMessageError(f"a {what} is bytes")
        self._data = bytes(data)
        self._what = what
        if len(self._data) < _HEADER.size:
            raise InvalidMessageError(f"a {what} message is too short")
        found, version = _HEADER.unpack_from(self._data)
        if found != magic or version != PROOF_VERSION:
            raise InvalidMessageError(
                f"not a version-{PROOF_VERSION} {what}: the peer runs an incompatible Bund version"
            )
        self._offset = _HEADER.size

    def _take(self, size: int) -> bytes:
        end = self._offset + size
        if end > len(self._data):
            raise InvalidMessageError(f"the {self._what} message is truncated")
        chunk = self._data[self._offset : end]
        self._offset = end
        return chunk

    def u8(self) -> int:
        """Read an unsigned byte."""
        value: int = self._take(1)[0]
        return value

    def u16(self) -> int:
        """Read an unsigned 16-bit integer."""
        value: int = struct.unpack(">H", self._take(2))[0]
        return value

    def modulus_bits(self) -> int:
        """Read a ``u16`` modulus size and refuse one outside the sizes any key may have."""
        bits = self.u16()
        if not MIN_TEST_KEY_BITS <= bits <= MAX_KEY_BITS:
            raise InvalidMessageError(
                f"the {self._what} declares a {bits}-bit modulus, outside "
                f"[{MIN_TEST_KEY_BITS}, {MAX_KEY_BITS}]"
            )
        return bits

    def uint(self, width: int) -> Mpz:
        """Read a non-negative integer of ``width`` bytes."""
        return gmpy2.mpz.from_bytes(self._take(width), "big")

    def sint(self, width: int) -> Mpz:
        """Read a two's complement integer of ``width`` bytes."""
        return gmpy2.mpz(int.from_bytes(self._take(width), "big", signed=True))

    def end(self) -> None:
        """Refuse trailing bytes."""
        if self._offset != len(self._data):
            raise InvalidMessageError(
                f"the {self._what} message has {len(self._data) - self._offset} trailing bytes"
            )
