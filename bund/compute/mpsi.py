r"""Multi-party PSI maths: a Diffie–Hellman OPRF, zero-sharing, OPPRF hints over an OKVS.

The construction is the OPPRF-with-zero-sharing multi-party PSI of Kolesnikov, Matania, Pinkas,
Rosulek and Trieu ("Practical multi-party private set intersection from symmetric-key
techniques", CCS 2017), in the star form of Nevo, Trieu and Yanai ("Simple, fast malicious
multiparty private set intersection", CCS 2021), made semi-honest and instantiated with the
Diffie–Hellman OPRF of :mod:`bund.compute.psi` and the band OKVS of :mod:`bund.compute.okvs`. One
*leader* (it learns the intersection) and ``m >= 2`` *members*:

1. **Zero-sharing.** Every pair of members agrees on a PRF key by an ephemeral X25519 exchange
   (:class:`ZeroSharingKey`). Member ``i``'s share of an id ``x`` is
   ``S_i(x) = XOR over the other members j of PRF(k_ij, x)``; every pair's term appears in exactly
   two shares, so ``XOR_i S_i(x) = 0`` for every ``x`` (:func:`zero_shares`).
2. **OPPRF to the leader.** Member ``i`` has an OPRF key ``k_i``; ``F_i(x) = H2(x, k_i·H(x))``
   (:func:`oprf_values`, ``H`` the hash to Curve25519 of :func:`bund.compute.psi.hash_to_points`).
   The leader obtains ``F_i(y)`` for each of its ids by a blinded evaluation: it sends
   ``r·H(y)``, the member returns ``k_i·r·H(y)``, the leader multiplies by ``r^-1 mod ℓ``
   (:class:`QueryBlind`). The member sends a *hint*: an OKVS that decodes each of its ids ``x``
   to ``F_i(x) XOR S_i(x)`` (:func:`encode_hint`).
3. **Reconstruction.** For each of its ids ``y`` the leader computes
   ``Ŝ_i(y) = decode(hint_i, y) XOR F_i(y)``, which is ``S_i(y)`` if member ``i`` holds ``y`` and
   pseudorandom otherwise, and keeps ``y`` when ``XOR_i Ŝ_i(y) = 0`` (:func:`matches`; a false
   match has probability ``2^-128`` per id).

What the leader sees of member ``i`` at an id ``y`` it holds is ``Ŝ_i(y)``. Unless every member
holds ``y``, each ``Ŝ_i(y)`` contains a PRF value under a key the leader does not have (a pair
key with a member that lacks ``y``, or ``F_i(y)`` itself masking a decode of a uniformly random
table), so the values are jointly pseudorandom and say nothing about which members hold ``y``:
no pairwise intersection. ``docs/protocols/psi-multi.md`` has the argument, the coalitions, and
what a deviating party can do.

Group arithmetic. The OPRF runs on X25519 exactly as :mod:`bund.compute.psi` blinds: OpenSSL's
constant-time X25519 through ``cryptography``. X25519 clamps every scalar to ``2^254 + 8t``
(``0 <= t < 2^251``), so it can multiply by ``r^-1`` only if ``r^-1 mod ℓ`` has such a
representative. :func:`query_blind` draws ``r`` (clamped) until ``r^-1 mod ℓ`` (libsodium's
constant-time ``crypto_core_ed25519_scalar_invert``) plus a multiple of ``ℓ`` is ``0 mod 8`` and
in ``[2^254, 2^255)``; half the draws qualify. Both scalars are multiples of 8, so the torsion of
a hashed point vanishes at the first multiplication and ``u·k·r·H(y) = k·H(y)`` in the
prime-order subgroup. Choosing the representative takes a few Python integer operations, once
per job, and a rejected draw reveals nothing about the accepted one.

Secrets. A party's whole randomness for one job derives from one :class:`MpsiSecret` (32 bytes
from ``os.urandom``; SHAKE-256 under domain-separated labels): its OPRF key, its query blind, its
zero-sharing key, its hints' seeds and their random fill. Saved (sealed) before the first message,
it makes a resumed party re-send byte-identical messages. Like the PSI blinding key, it refuses
``pickle`` and ``copy``; the scalars reach out-of-process executors only as
:mod:`bund.compute.psi` passes them.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from nacl.bindings import crypto_core_ed25519_scalar_invert, crypto_core_ed25519_scalar_reduce

from bund.compute import okvs
from bund.compute.errors import InvalidMessageError, InvalidPointError
from bund.compute.executor import Executor
from bund.compute.layout import Header
from bund.compute.psi import BlindingKey, blind, hash_and_blind

#: Bytes of a party's job secret.
SECRET_BYTES = 32
#: Bytes of a zero-sharing public key (an X25519 public key).
PUBLIC_KEY_BYTES = 32
#: Bytes of an id's tag in the result the leader sends.
TAG_BYTES = 16
#: Most cells in one wire message of a hint: 131,072 cells of 16 bytes = 2 MiB.
HINT_CHUNK_CELLS = 1 << 17
#: Order of the prime subgroup of Curve25519.
GROUP_ORDER = 2**252 + 27742317777372353535851937790883648493
#: Fresh seeds an encoding may try before giving up (each fails with probability <= 2^-40).
MAX_ENCODING_ATTEMPTS = 8

_DOMAIN = b"bund/mpsi/v1\x00"
_HINT = Header(b"BOKV", 1, reserved=2)
_HINT_FIELDS = struct.Struct(">BQQ16s")  # band width, keys, start positions, seed
_TAGS = Header(b"BMPR", 1)
_COUNT = struct.Struct(">I")

Values = okvs.Values


class MpsiSecret:
    """One party's secret randomness for one multi-party PSI job; never serialisable.

    Every key, blind, seed and random fill the party uses in the job derives from it, so saving it
    (sealed, in the node's resume store) before the first message is enough to resume.
    """

    __slots__ = ("_raw",)

    def __init__(self, raw: bytes) -> None:
        if len(raw) != SECRET_BYTES:
            raise ValueError(f"a multi-party PSI secret is {SECRET_BYTES} bytes")
        self._raw = bytes(raw)

    def __repr__(self) -> str:
        return "MpsiSecret(<secret>)"

    def derive(self, label: bytes, size: int = 32) -> bytes:
        """``size`` bytes of SHAKE-256 over this secret and ``label`` (domain-separated)."""
        xof = hashlib.shake_256(_DOMAIN + self._raw + len(label).to_bytes(2, "big") + label)
        return xof.digest(size)

    def export_for_resume(self) -> bytes:
        """The 32 bytes, for the node's sealed resume store only; never for a message."""
        return self._raw

    @classmethod
    def from_resume_state(cls, raw: bytes) -> MpsiSecret:
        """The secret saved by :meth:`export_for_resume`."""
        return cls(raw)

    def __reduce__(self) -> NoReturn:
        raise TypeError("a multi-party PSI secret never leaves the process that made it")

    def __copy__(self) -> NoReturn:
        raise TypeError("a multi-party PSI secret is not copied")

    def __deepcopy__(self, memo: object) -> NoReturn:
        raise TypeError("a multi-party PSI secret is not copied")


def create_mpsi_secret() -> MpsiSecret:
    """A fresh secret from the OS CSPRNG, for one job only."""
    return MpsiSecret(os.urandom(SECRET_BYTES))


def oprf_key(secret: MpsiSecret) -> BlindingKey:
    """A member's OPRF key ``k``: an X25519 scalar (clamped by OpenSSL)."""
    return BlindingKey(X25519PrivateKey.from_private_bytes(secret.derive(b"oprf-key")))


def _clamp(raw: bytes) -> bytes:
    out = bytearray(raw)
    out[0] &= 248
    out[31] = (out[31] & 127) | 64
    return bytes(out)


@dataclass(frozen=True)
class QueryBlind:
    """The leader's blind ``r`` and its inverse ``u`` (``u·r = 1 mod ℓ``), both X25519 scalars."""

    blind_key: BlindingKey
    unblind_key: BlindingKey

    def blind_items(
        self, items: Sequence[bytes], context: bytes, executor: Executor | None = None
    ) -> list[bytes]:
        """``r·H(y)`` for each id: the query, uniformly random in the subgroup to its reader."""
        return hash_and_blind(items, context, self.blind_key, executor)

    def unblind(self, answers: Sequence[bytes], executor: Executor | None = None) -> list[bytes]:
        """``u·(k·r·H(y)) = k·H(y)``: the OPRF points, from a member's validated answers."""
        return blind(answers, self.unblind_key, executor)


def query_blind(secret: MpsiSecret) -> QueryBlind:
    """Draw the leader's ``r`` until X25519 can also multiply by ``r^-1 mod ℓ``.

    A clamped scalar is ``2^254 + 8t``; we need such a representative of ``r^-1 mod ℓ``:
    ``r^-1 + jℓ`` with ``j`` fixed mod 8 by the ``0 mod 8`` condition, accepted when it lies in
    ``[2^254, 2^255)`` (about half the draws). The inversion is libsodium's constant-time one.
    """
    for attempt in range(256):
        raw = _clamp(secret.derive(b"query-blind/" + attempt.to_bytes(2, "big")))
        reduced = crypto_core_ed25519_scalar_reduce(raw + bytes(32))
        inverse = int.from_bytes(crypto_core_ed25519_scalar_invert(reduced), "little")
        for j in range(8):
            candidate = inverse + j * GROUP_ORDER
            if candidate % 8 == 0 and 2**254 <= candidate < 2**255:
                return QueryBlind(
                    BlindingKey(X25519PrivateKey.from_private_bytes(raw)),
                    BlindingKey(
                        X25519PrivateKey.from_private_bytes(candidate.to_bytes(32, "little"))
                    ),
                )
    raise AssertionError("no invertible blind in 256 draws (probability 2^-256)")


class ZeroSharingKey:
    """A member's ephemeral X25519 key for agreeing a zero-sharing PRF key with each member."""

    __slots__ = ("_key",)

    def __init__(self, secret: MpsiSecret) -> None:
        self._key = X25519PrivateKey.from_private_bytes(secret.derive(b"zero-sharing-key"))

    def __repr__(self) -> str:
        return "ZeroSharingKey(<secret>)"

    def __reduce__(self) -> NoReturn:
        raise TypeError("a zero-sharing key never leaves the process that made it")

    def public_bytes(self) -> bytes:
        """The 32-byte public key sent to every other member."""
        return self._key.public_key().public_bytes_raw()

    def pairwise_seed(self, peer_public: bytes, context: bytes, me: str, peer: str) -> bytes:
        """The PRF key this member shares with ``peer``: HKDF-SHA256 of the X25519 secret.

        Both sides derive the same 32 bytes (the names enter in sorted order), bound to the job
        through ``context``.

        Raises:
            InvalidPointError: The peer's key is not 32 bytes or is of low order.
        """
        if len(peer_public) != PUBLIC_KEY_BYTES:
            raise InvalidPointError(
                f"{peer}'s zero-sharing key is {len(peer_public)} bytes, not {PUBLIC_KEY_BYTES}"
            )
        try:
            shared = self._key.exchange(X25519PublicKey.from_public_bytes(peer_public))
        except ValueError:
            raise InvalidPointError(
                f"{peer}'s zero-sharing key is of low order; its payload is invalid and the job "
                "must stop"
            ) from None
        first, second = sorted((me, peer))
        info = _DOMAIN + b"zero-sharing\x00" + first.encode() + b"\x00" + second.encode()
        return HKDF(SHA256(), 32, salt=context, info=info).derive(shared)


def _digests(parts: Sequence[bytes]) -> Values:
    return np.frombuffer(b"".join(parts), dtype="<u8").reshape(-1, 2).astype(np.uint64)


def zero_shares(items: Sequence[bytes], seeds: Sequence[bytes]) -> Values:
    """``S(x) = XOR_j PRF(seed_j, x)`` for each id: this member's share of zero.

    ``PRF`` is BLAKE2b-128 keyed with the pair's seed. Over all members the shares of any ``x``
    XOR to zero, since each pair's term appears in exactly two shares.
    """
    out = np.zeros((len(items), 2), dtype=np.uint64)
    blake = hashlib.blake2b
    for seed in seeds:
        if items:
            out ^= _digests(
                [blake(x, digest_size=16, key=seed, person=b"bund-mpsi-zs").digest() for x in items]
            )
    return out


def oprf_values(items: Sequence[bytes], points: Sequence[bytes]) -> Values:
    """``F(x) = H2(x, k·H(x))``: BLAKE2b-128 over the OPRF point and the id, one per id."""
    if len(items) != len(points):
        raise ValueError("one OPRF point per id")
    if not items:
        return np.zeros((0, 2), dtype=np.uint64)
    blake = hashlib.blake2b
    return _digests(
        [
            blake(p + x, digest_size=16, person=b"bund-mpsi-oprf").digest()
            for x, p in zip(items, points, strict=True)
        ]
    )


def encode_hint(
    items: Sequence[bytes], values: Values, secret: MpsiSecret, label: bytes
) -> tuple[okvs.OkvsParams, Values]:
    """An OKVS of ``items -> values`` with seed and fill derived from ``secret`` and ``label``.

    Deterministic for a given secret, so a resumed member sends the same bytes. Each attempt
    fails with probability at most 2^-40 and the next uses a fresh seed.

    Raises:
        OkvsEncodingError: After :data:`MAX_ENCODING_ATTEMPTS` failures (probability 2^-320).
    """
    for attempt in range(MAX_ENCODING_ATTEMPTS):
        tag = label + b"/" + attempt.to_bytes(1, "big")
        params = okvs.okvs_params(len(items), secret.derive(b"hint-seed/" + tag, okvs.SEED_BYTES))
        fill = secret.derive(b"hint-fill/" + tag, okvs.VALUE_BYTES * params.columns)
        try:
            return params, okvs.encode(items, values, params, fill)
        except okvs.OkvsEncodingError:
            continue
    raise okvs.OkvsEncodingError(
        f"no encoding in {MAX_ENCODING_ATTEMPTS} attempts: are the ids distinct?"
    )


def matches(shares: Sequence[Values]) -> list[int]:
    """Positions whose values XOR to zero across all members: the ids every member holds."""
    if not shares:
        raise ValueError("matching needs at least one member's values")
    acc = shares[0].copy()
    for other in shares[1:]:
        acc ^= other
    return np.flatnonzero((acc == 0).all(axis=1)).tolist()


def result_tags(items: Sequence[bytes], context: bytes) -> list[bytes]:
    """Each id's tag in the result: BLAKE2b-128 keyed with the job context.

    A member that receives the result maps each tag to its own id; the tags of ids it does not
    hold are never sent.
    """
    blake = hashlib.blake2b
    return [blake(x, digest_size=TAG_BYTES, key=context, person=b"bund-mpsi-tag").digest()
            for x in items]  # fmt: skip


# --- wire layouts -----------------------------------------------------------------------------


def encode_hint_header(params: okvs.OkvsParams) -> bytes:
    """The message before a hint's cells: 40 bytes.

    Layout: magic ``b"BOKV"`` (4), version 1 (1), reserved zero (2), band width (1), keys (8),
    start positions (8), seed (16); integers big-endian. The cells follow in
    ``ceil(columns / HINT_CHUNK_CELLS)`` messages of 16 bytes per cell (low word, high word,
    little-endian), ``columns = starts + width - 1``.
    """
    return _HINT.pack(_HINT_FIELDS.pack(params.width, params.keys, params.starts, params.seed))


def decode_hint_header(payload: bytes, keys: int) -> okvs.OkvsParams:
    """Check a hint's header against the set size its sender announced.

    The shape must be exactly :func:`bund.compute.okvs.okvs_params` of ``keys``: a sender cannot
    choose a narrower band (a weaker encoding) or a larger table.

    Raises:
        InvalidMessageError: If the layout, version or shape is wrong.
    """
    body = _HINT.split(payload, "a multi-party PSI hint header")
    if len(body) != _HINT_FIELDS.size:
        raise InvalidMessageError(f"a hint header is {_HINT.size + _HINT_FIELDS.size} bytes")
    width, count, starts, seed = _HINT_FIELDS.unpack(body)
    expected = okvs.okvs_params(keys, seed)
    if (count, starts, width) != (expected.keys, expected.starts, expected.width):
        raise InvalidMessageError(
            f"the hint's shape (keys {count}, starts {starts}, width {width}) is not the one for "
            f"the {keys} ids its sender announced (starts {expected.starts}, width "
            f"{expected.width})"
        )
    return expected


def hint_chunk_sizes(params: okvs.OkvsParams) -> list[int]:
    """Cells in each message of a hint, in order."""
    full, rest = divmod(params.columns, HINT_CHUNK_CELLS)
    return [HINT_CHUNK_CELLS] * full + ([rest] if rest else [])


def encode_tags(tags: Sequence[bytes]) -> bytes:
    """The result the leader sends a receiving member: 9 bytes, then 16 per common id.

    Layout: magic ``b"BMPR"`` (4), version 1 (1), count (4, big-endian), then each common id's
    tag (:func:`result_tags`), in ascending order of the ids.
    """
    if any(len(t) != TAG_BYTES for t in tags):
        raise ValueError(f"a tag is {TAG_BYTES} bytes")
    return _TAGS.pack(_COUNT.pack(len(tags)), *tags)


def decode_tags(payload: bytes, own_tags: Sequence[bytes]) -> list[int]:
    """Map a received result to positions in ``own_tags`` (this member's ids), in received order.

    Raises:
        InvalidMessageError: If the layout or length is wrong, or a tag is unknown or repeated:
            the leader may only name ids this member holds, each once.
    """
    body = _TAGS.split(payload, "a multi-party PSI result")
    if len(body) < _COUNT.size:
        raise InvalidMessageError("a multi-party PSI result is too short")
    (count,) = _COUNT.unpack_from(body)
    if count > len(own_tags) or len(body) != _COUNT.size + TAG_BYTES * count:
        raise InvalidMessageError("the multi-party PSI result has the wrong length")
    where = {tag: i for i, tag in enumerate(own_tags)}
    out: list[int] = []
    for at in range(_COUNT.size, len(body), TAG_BYTES):
        position = where.pop(body[at : at + TAG_BYTES], None)
        if position is None:
            raise InvalidMessageError(
                "the multi-party PSI result names an id this member does not hold, or one id "
                "twice; the leader deviated and the job must stop"
            )
        out.append(position)
    return out
