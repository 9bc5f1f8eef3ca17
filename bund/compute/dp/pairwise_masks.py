"""Secure aggregation of integer vectors by pairwise masks agreed over X25519.

Each contributor ``i`` holds a vector ``x_i`` of integers. Every pair ``(i, j)`` agrees on a
shared secret by X25519, expands it with HKDF-SHA256 and ChaCha20 into a mask vector ``m_ij``
over ``ℤ/2^64``, and the contributor whose name sorts first adds it while the other subtracts it.
Each contributor sends only ``y_i = x_i + Σ_{j>i} m_ij - Σ_{j<i} m_ji (mod 2^64)``; the masks
cancel in ``Σ y_i``, so the aggregator learns the sum and nothing else, and any single ``y_i`` is
uniformly random to everyone but ``i`` (each mask is pseudorandom to all but the pair that made
it). This is the semi-honest, no-dropout core of Bonawitz et al. (CCS 2017): a party that drops
out aborts the job.

Why masks and not additively homomorphic encryption. The statistics are short integer vectors
(at most :data:`MAX_LENGTH` cells); masking costs one X25519 exchange per pair and a ChaCha20
stream, microseconds, and the masked vector is 8 bytes a cell. Paillier would cost a 3072-bit
modular exponentiation per cell, 384 bytes a cell, and a key holder who must not be the
aggregator. See ``docs/protocols/dp-statistics.md``.

Wire layouts (documented beside their encoders): :func:`encode_public_key` and
:func:`encode_vector`.

>>> a, b = create_masking_key(), create_masking_key()
>>> keys = {"a": a.public_bytes(), "b": b.public_bytes()}
>>> ya = mask_vector([5, -2], a, "a", keys, b"job")
>>> yb = mask_vector([1, 10], b, "b", keys, b"job")
>>> unmask_sum([ya, yb])
[6, 8]
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import NoReturn

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from bund.compute.dp import masks
from bund.compute.errors import InvalidKeyError, InvalidMessageError
from bund.compute.layout import Header

#: The most cells one masked vector may carry.
MAX_LENGTH = 1 << 16
#: The most contributors one aggregation admits (keeps every honest sum far below 2^63).
MAX_CONTRIBUTORS = 64
#: The largest magnitude of one contributor's cell: 64 such cells plus noise stay below 2^63.
MAX_CELL = 1 << 56

_KDF_INFO = b"bund/secure-agg/v1/mask\x00"
_VERSION = 1
_KEY = Header(b"BSAK", _VERSION, reserved=3)
_KEY_BYTES = _KEY.size + 32
_VEC_MAGIC = b"BSAV"
_VEC_COUNT = struct.Struct(">I")

U64Array = npt.NDArray[np.uint64]


class MaskingKey:
    """A contributor's X25519 key for one job's masks, held inside OpenSSL; never serialisable."""

    __slots__ = ("_key",)

    def __init__(self, key: X25519PrivateKey) -> None:
        if not isinstance(key, X25519PrivateKey):
            raise TypeError("MaskingKey wraps an X25519PrivateKey")
        self._key = key

    def __repr__(self) -> str:
        return "MaskingKey(<secret>)"

    def __reduce__(self) -> NoReturn:
        raise TypeError("a masking key never leaves the process that made it")

    def public_bytes(self) -> bytes:
        """The 32-byte X25519 public key to send to the other contributors."""
        return self._key.public_key().public_bytes_raw()

    def export_for_resume(self) -> bytes:
        """The 32-byte secret, for the node's sealed resume store only; never for a message.

        A resumed contributor must re-send the same masked vector, so its key must survive a
        restart; the node seals resume states with AES-256-GCM under its own key at rest.
        """
        return self._key.private_bytes_raw()

    @classmethod
    def from_resume_state(cls, raw: bytes) -> MaskingKey:
        """The key saved by :meth:`export_for_resume`."""
        if len(raw) != 32:
            raise ValueError("a saved masking key is 32 bytes")
        return cls(X25519PrivateKey.from_private_bytes(raw))


def create_masking_key() -> MaskingKey:
    """A fresh key from the OS CSPRNG (through OpenSSL), for one job only."""
    return MaskingKey(X25519PrivateKey.generate())


def pair_mask(
    key: MaskingKey, me: str, peer: str, peer_public: bytes, context: bytes, length: int
) -> U64Array:
    """The mask vector that ``me`` and ``peer`` share, over ``ℤ/2^64``.

    ``HKDF-SHA256(shared, salt=context, info=INFO || len-prefixed sorted names)`` gives a 256-bit
    ChaCha20 key; the keystream (zero nonce, one key per job and pair) is read as little-endian
    uint64 words (:func:`bund.compute.dp.masks.derive_mask`). Both parties compute the same
    vector.

    Args:
        key: This contributor's masking key.
        me: This contributor's name.
        peer: The other contributor's name.
        peer_public: The other contributor's 32-byte public key.
        context: Bytes that bind the mask to one job (the spec digest).
        length: Number of cells.

    Raises:
        InvalidKeyError: If the public key is malformed or of low order.
    """
    if me == peer:
        raise ValueError("a contributor shares no mask with itself")
    if not 0 <= length <= MAX_LENGTH:
        raise ValueError(f"length must be in [0, {MAX_LENGTH}]")
    shared = masks.agree(key._key, peer_public, f"{peer}'s masking")
    info = _KDF_INFO
    for name in sorted((me, peer)):
        raw = name.encode()
        info += len(raw).to_bytes(2, "big") + raw
    return masks.derive_mask(shared, length, salt=context, info=info)


def to_u64(values: Sequence[int] | npt.NDArray[np.int64]) -> U64Array:
    """Signed cells as their residues mod 2^64 (two's complement).

    Raises:
        ValueError: If a cell's magnitude reaches :data:`MAX_CELL`.
    """
    as_int = [int(v) for v in values]
    if any(abs(v) >= MAX_CELL for v in as_int):
        raise ValueError(f"a cell reaches 2^56 in magnitude; secure aggregation needs < {MAX_CELL}")
    return np.array(as_int, dtype=np.int64).view(np.uint64)


def mask_vector(
    values: Sequence[int] | npt.NDArray[np.int64],
    key: MaskingKey,
    me: str,
    public_keys: Mapping[str, bytes],
    context: bytes,
) -> U64Array:
    """``values`` plus this contributor's signed pairwise masks, mod 2^64.

    Args:
        values: This contributor's cells (noise already added, if it adds any).
        key: This contributor's masking key.
        me: This contributor's name; ``public_keys`` must contain it.
        public_keys: Every contributor's public key by name (this one's included).
        context: Bytes that bind the masks to one job.

    Raises:
        InvalidKeyError: If a peer's key is invalid, or a peer announced this party's own key.
    """
    own = key.public_bytes()
    if public_keys.get(me) != own:
        raise ValueError("public_keys must map this contributor's name to its own public key")
    if len(public_keys) > MAX_CONTRIBUTORS:
        raise ValueError(f"at most {MAX_CONTRIBUTORS} contributors")
    out = to_u64(values).copy()
    for peer, public in sorted(public_keys.items()):
        if peer == me:
            continue
        if public == own:
            raise InvalidKeyError(f"{peer} announced this party's own masking key; stopping")
        mask = pair_mask(key, me, peer, public, context, len(out))
        out = out + mask if me < peer else out - mask
    return out


def unmask_sum(vectors: Iterable[U64Array]) -> list[int]:
    """The sum of every contributor's masked vector, mod 2^64, read as signed 64-bit cells."""
    total: U64Array | None = None
    for vector in vectors:
        total = vector.copy() if total is None else total + vector
    if total is None:
        raise ValueError("nothing to aggregate")
    return [int(v) for v in total.view(np.int64)]


def encode_public_key(public: bytes) -> bytes:
    """A masking public key on the wire: 40 bytes.

    Layout: magic ``b"BSAK"`` (4), version 1 (1), reserved zero (3), X25519 public key (32).
    """
    if len(public) != 32:
        raise ValueError("an X25519 public key is 32 bytes")
    return _KEY.pack(public)


def decode_public_key(payload: bytes) -> bytes:
    """Check a peer's masking-key message and return the 32-byte key.

    Raises:
        InvalidMessageError: If the layout or version is wrong.
    """
    if len(payload) != _KEY_BYTES:
        raise InvalidMessageError(
            f"a masking-key message is {_KEY_BYTES} bytes, got {len(payload)}; the peer runs an "
            "incompatible protocol version"
        )
    return _KEY.split(payload, "a masking-key message")


def encode_u64_vector(magic: bytes, vector: U64Array, max_length: int) -> bytes:
    """A vector of ``ℤ/2^64`` cells on the wire: a 12-byte header then 8 bytes per cell.

    Layout: ``magic`` (4), version 1 (1), reserved zero (3), cell count (4, big-endian), then each
    cell as a little-endian uint64. Masked vectors here (``b"BSAV"``) and in
    ``bund.compute.dp.dropout_secagg`` (``b"BSGV"``) share it.
    """
    if vector.dtype != np.uint64 or vector.ndim != 1 or len(vector) > max_length:
        raise ValueError(f"a masked vector is a 1-D uint64 array of at most {max_length} cells")
    header = Header(magic, _VERSION, reserved=3)
    return header.pack(_VEC_COUNT.pack(len(vector)), vector.astype("<u8").tobytes())


def decode_u64_vector(magic: bytes, payload: bytes, expected_length: int) -> U64Array:
    """Check a received :func:`encode_u64_vector` layout of ``expected_length`` cells.

    Raises:
        InvalidMessageError: If the layout, version or cell count is not the expected one.
    """
    header = Header(magic, _VERSION, reserved=3)
    body = header.split(payload, "a masked vector")
    if len(body) < _VEC_COUNT.size:
        raise InvalidMessageError("a masked vector is shorter than its 12-byte header")
    (count,) = _VEC_COUNT.unpack_from(body)
    if count != expected_length or len(body) != _VEC_COUNT.size + 8 * count:
        size = header.size + _VEC_COUNT.size
        raise InvalidMessageError(
            f"masked vector announces {count} cells in {len(payload)} bytes; expected "
            f"{expected_length} cells ({size + 8 * expected_length} bytes)"
        )
    return np.frombuffer(body, dtype="<u8", offset=_VEC_COUNT.size).astype(np.uint64)


def encode_vector(vector: U64Array) -> bytes:
    """A masked vector of this module on the wire (:func:`encode_u64_vector`, ``b"BSAV"``)."""
    return encode_u64_vector(_VEC_MAGIC, vector, MAX_LENGTH)


def decode_vector(payload: bytes, expected_length: int) -> U64Array:
    """Check a received masked vector and return its cells.

    Raises:
        InvalidMessageError: If the layout, version or cell count is not the expected one.
    """
    return decode_u64_vector(_VEC_MAGIC, payload, expected_length)
