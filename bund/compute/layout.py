r"""The header every binary layout of Bund starts with: a 4-byte magic, a version byte, zero bytes.

Each wire message and resume state that is not protobuf (Paillier keys and vectors, PSI headers,
masked vectors, secure-aggregation messages, the protocols' own messages) begins with the same
few bytes: an ASCII magic that names the layout, one version byte, and in some layouts reserved
bytes that must be zero. :class:`Header` writes them in one place and checks them in one place,
so every decoder refuses a foreign or newer message with the same kind of message, naming the
layout and what it found. The fields after the header stay with each layout's encoder.

>>> DOC = Header(b"BDOC", 1, reserved=3)
>>> data = DOC.pack(b"body")
>>> data
b'BDOC\x01\x00\x00\x00body'
>>> DOC.split(data, "a doc message")
b'body'
>>> try:  # doctest: +ELLIPSIS
...     DOC.split(b"BDOC\x02\x00\x00\x00", "a doc message")
... except InvalidMessageError as exc:
...     print(exc)
a doc message has magic b'BDOC' version 2, not b'BDOC' version 1: the peer runs an ...
"""

from __future__ import annotations

from dataclasses import dataclass

from bund.compute.errors import BundError, InvalidMessageError

#: Bytes of a magic.
MAGIC_BYTES = 4


@dataclass(frozen=True)
class Header:
    """The fixed start of one binary layout.

    Attributes:
        magic: Four ASCII bytes that name the layout on the wire.
        version: The layout's version (one byte); a decoder accepts only its own.
        reserved: How many zero bytes follow the version; a decoder refuses any that is not zero,
            so a later version may give them a meaning.
    """

    magic: bytes
    version: int
    reserved: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.magic, bytes) or len(self.magic) != MAGIC_BYTES:
            raise ValueError(f"a magic is {MAGIC_BYTES} bytes")
        if not 0 <= self.version <= 0xFF:
            raise ValueError("a version is one byte")
        if not 0 <= self.reserved <= 16:
            raise ValueError("a header reserves 0 to 16 bytes")

    @property
    def size(self) -> int:
        """Bytes of the header: magic, version and reserved bytes."""
        return MAGIC_BYTES + 1 + self.reserved

    def pack(self, *body: bytes) -> bytes:
        """The header followed by the parts of ``body`` (the layout's fields, already packed)."""
        return b"".join((self.magic, bytes((self.version,)), bytes(self.reserved), *body))

    def split(
        self,
        data: bytes | bytearray | memoryview,
        what: str,
        *,
        error: type[BundError] = InvalidMessageError,
    ) -> bytes:
        """Check that ``data`` starts with this header and return the bytes after it.

        Args:
            data: The received message or saved state.
            what: The layout in words, as the error message starts with it (``"a masked
                vector"``).
            error: The class to raise; :class:`~bund.compute.errors.InvalidMessageError` unless
                the decoder's callers expect another (a key's, for example).

        Raises:
            InvalidMessageError: (or ``error``) If ``data`` is shorter than the header, or its
                magic, version or reserved bytes are not this header's.
        """
        data = bytes(data)
        if len(data) < self.size:
            raise error(
                f"{what} is {len(data)} bytes, shorter than its {self.size}-byte "
                f"{self.magic!r} header"
            )
        magic, version = data[:MAGIC_BYTES], data[MAGIC_BYTES]
        if magic != self.magic or version != self.version:
            raise error(
                f"{what} has magic {magic!r} version {version}, not {self.magic!r} version "
                f"{self.version}: the peer runs an incompatible Bund version; upgrade the older "
                "node"
            )
        if any(data[MAGIC_BYTES + 1 : self.size]):
            raise error(
                f"{what} has non-zero reserved bytes after its {self.magic!r} version "
                f"{self.version} header: the peer runs an incompatible Bund version; upgrade the "
                "older node"
            )
        return data[self.size :]
