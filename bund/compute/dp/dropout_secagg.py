"""Secure aggregation that survives drop-outs: SecAgg (Bonawitz et al., CCS 2017), semi-honest.

Each client ``i`` of a round (an index ``1..n``) holds an integer vector ``x_i``. Per round it
derives, from one 32-byte seed drawn from ``secrets``, two X25519 keys, ``c_i`` (to encrypt
shares) and ``s_i`` (to agree pairwise masks), and a 32-byte self-mask seed ``b_i``. It sends

    y_i = x_i + PRG(b_i) + Σ_{j>i} PRG(s_ij) − Σ_{j<i} PRG(s_ij)   (mod 2^64)

where ``s_ij = X25519(s_i, S_j)``, after giving every other client a ``t``-of-``n`` Shamir share of
``s_i``'s private key and of ``b_i``, each encrypted for its receiver with AES-GCM under a key from
``X25519(c_i, C_j)``. To unmask, the server asks the survivors for shares of ``b_j`` of every
client whose ``y_j`` it holds and of ``s_j`` of every client whose ``y_j`` it lacks, never both
for one client (each client checks this before answering, and answers once). With ``t`` shares
it rebuilds those secrets, removes the self-masks and the dropped clients' pairwise masks, and
learns ``Σ x_i`` over the survivors and nothing else. Up to ``n − t`` clients may drop out at
any point after announcing their keys.

Shamir sharing is over the prime field ``GF(2^521 − 1)`` (:func:`split_secret`,
:func:`combine_shares`), big enough for a 32-byte secret in one share. Every random choice of a
client (keys, ``b``, share polynomials) comes from its round seed through HKDF and ChaCha20
(:class:`Drbg`), so a role that restores the seed from its resume state re-sends byte-identical
messages; AES-GCM keys are used once per direction and round, so a fixed nonce is safe.

Floats enter by :func:`quantize`: each coordinate clipped to ``±bound`` and rounded to
``frac_bits`` fractional bits. :func:`check_capacity` refuses parameters for which
``clients · bound · 2^frac_bits`` reaches ``2^63``, so the sum of honest vectors never wraps.

Wire layouts are documented beside their encoders; every decoder checks magic, version, sizes,
indices and key validity. ``docs/protocols/secure-aggregation.md`` has the threat model.

>>> ctx, n, t = b"job/round-1", 3, 2
>>> clients = {i: RoundSecrets.from_seed(bytes([i]) * 32) for i in (1, 2, 3)}
>>> roster = {i: c.advertised(ctx) for i, c in clients.items()}
>>> boxes = {i: c.share(i, roster, t, ctx) for i, c in clients.items()}
>>> inbox = {i: {j: boxes[j][i] for j in roster if j != i} for i in roster}
>>> opened = {i: c.open_inbox(i, roster, t, inbox[i], ctx) for i, c in clients.items()}
>>> y = {i: c.mask(i, [10 * i, -i], roster, ctx) for i, c in clients.items() if i != 3}
>>> reveal = {i: opened[i].reveal(i, survivors=[1, 2], dropped=[3]) for i in (1, 2)}
>>> unmask(y, roster, reveal, t, ctx).tolist()
[30, -3]
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NoReturn

import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from bund.compute.dp import masks, pairwise_masks
from bund.compute.errors import InvalidKeyError, InvalidMessageError
from bund.compute.layout import Header

#: The Mersenne prime 2^521 − 1: the field of the Shamir shares.
PRIME = (1 << 521) - 1
#: Bytes of one share value (an element of the field, big-endian).
SHARE_BYTES = 66
#: Bytes of a round seed, a self-mask seed and an X25519 key.
SEED_BYTES = 32
#: The most clients one round admits (indices are 1..MAX_CLIENTS).
MAX_CLIENTS = 64
#: The most cells one masked vector may carry.
MAX_LENGTH = 1 << 20

U64Array = npt.NDArray[np.uint64]
I64Array = npt.NDArray[np.int64]

_VERSION = 1
_KEYS = Header(b"BSGK", _VERSION, reserved=3)
_KEYS_BYTES = _KEYS.size + 3 * 32
# A list message's header: magic, version, kind (0 in version 1: a reserved byte), then a count.
_ROSTER = Header(b"BSGR", _VERSION, reserved=1)
_BOX = Header(b"BSGS", _VERSION, reserved=1)
_REQ = Header(b"BSGQ", _VERSION, reserved=1)
_REVEAL = Header(b"BSGA", _VERSION, reserved=1)
_LIST_COUNT = struct.Struct(">H")
_VEC_MAGIC = b"BSGV"
_SHARE_PT = struct.Struct(">HH66s66s")
_SHARE_CT_BYTES = _SHARE_PT.size + 16  # AES-GCM tag
_INFO = b"bund/secagg/v1/"
_NONCE = bytes(12)  # each AES-GCM key encrypts exactly one message (see ``_box_key``)
_REVEAL_B = 1
_REVEAL_S = 2


class DropoutError(InvalidMessageError):
    """Too few clients are left to unmask a round: more dropped out than the threshold allows."""


# --- randomness, expansion and Shamir over GF(2^521 - 1) -------------------------------------


def _hkdf(secret: bytes, context: bytes, label: bytes, length: int = 32) -> bytes:
    return HKDF(hashes.SHA256(), length, context, _INFO + label).derive(secret)


def expand_mask(key: bytes, length: int) -> U64Array:
    """``length`` pseudorandom words mod 2^64 from a 32-byte key (ChaCha20 keystream)."""
    if not 0 <= length <= MAX_LENGTH:
        raise ValueError(f"length must be in [0, {MAX_LENGTH}]")
    return masks.keystream_words(key, length)


class Drbg:
    """A deterministic random bit generator over ChaCha20, for a client's choices in one round.

    Its key comes from the client's round seed, itself from ``secrets``; re-deriving from the
    saved seed reproduces every choice, so a resumed client re-sends identical messages.
    """

    __slots__ = ("_buffer", "_key", "_used")

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("a DRBG key is 32 bytes")
        self._key = key
        self._buffer = b""
        self._used = 0

    def __reduce__(self) -> NoReturn:
        raise TypeError("a DRBG never leaves the process that made it")

    def read(self, n: int) -> bytes:
        """The next ``n`` bytes of the stream."""
        need = self._used + n
        if need > len(self._buffer):
            self._buffer = masks.keystream(self._key, max(2 * need, 4096))
        out = self._buffer[self._used : need]
        self._used = need
        return out

    def below(self, bound: int) -> int:
        """A uniform integer in ``[0, bound)`` by rejection sampling."""
        bits = bound.bit_length()
        while True:
            value = int.from_bytes(self.read((bits + 7) // 8), "big") & ((1 << bits) - 1)
            if value < bound:
                return value


def split_secret(secret: int, threshold: int, xs: Iterable[int], rng: Drbg) -> dict[int, int]:
    """Shamir ``threshold``-of-``n`` shares of ``secret`` at the points ``xs`` (each in 1..p−1).

    Any ``threshold`` shares determine the secret; fewer reveal nothing about it.
    """
    points = list(xs)
    if not 0 <= secret < PRIME:
        raise ValueError("the secret must be a field element")
    if not 1 <= threshold <= len(points) or len(set(points)) != len(points):
        raise ValueError("need distinct points, at least threshold of them")
    if any(not 0 < x < PRIME for x in points):
        raise ValueError("share points must be non-zero field elements")
    coefficients = [secret] + [rng.below(PRIME) for _ in range(threshold - 1)]
    shares = {}
    for x in points:
        y = 0
        for c in reversed(coefficients):
            y = (y * x + c) % PRIME
        shares[x] = y
    return shares


def combine_shares(shares: Mapping[int, int], threshold: int) -> int:
    """The secret behind ``threshold`` or more shares (Lagrange interpolation at zero).

    Raises:
        DropoutError: If fewer than ``threshold`` shares are given.
        InvalidMessageError: If a point or value is not a field element.
    """
    if len(shares) < threshold:
        raise DropoutError(f"{len(shares)} shares cannot rebuild a {threshold}-of-n secret")
    points = sorted(shares)[:threshold]
    if any(not 0 < x < PRIME or not 0 <= shares[x] < PRIME for x in points):
        raise InvalidMessageError("a share is not a field element")
    secret = 0
    for x in points:
        num, den = 1, 1
        for other in points:
            if other != x:
                num = num * other % PRIME
                den = den * (other - x) % PRIME
        secret = (secret + shares[x] * num * pow(den, -1, PRIME)) % PRIME
    return secret


# --- quantisation ------------------------------------------------------------------------------


def check_capacity(clients: int, bound: float, frac_bits: int) -> None:
    """Refuse parameters whose honest sum could wrap mod 2^64 (or leave the signed range).

    Raises:
        ValueError: If ``clients · bound · 2^frac_bits`` reaches ``2^62`` (a bit of headroom
            below ``2^63`` for rounding).
    """
    if not 1 <= clients <= MAX_CLIENTS or bound <= 0 or not 0 <= frac_bits <= 40:
        raise ValueError("need 1..64 clients, a positive bound and 0..40 fractional bits")
    if clients * bound * 2.0**frac_bits >= 2.0**62:
        raise ValueError(
            f"{clients} clients × bound {bound} × 2^{frac_bits} overflows 63-bit sums; lower "
            "the bound or the fractional bits"
        )


def quantize(values: npt.ArrayLike, bound: float, frac_bits: int) -> I64Array:
    """Clip each value to ``[−bound, bound]`` and round it to ``frac_bits`` fractional bits."""
    array = np.clip(np.asarray(values, dtype=np.float64), -bound, bound)
    if not np.all(np.isfinite(array)):
        raise ValueError("cannot quantise NaN")
    return np.rint(array * 2.0**frac_bits).astype(np.int64)


def dequantize(values: I64Array, frac_bits: int) -> npt.NDArray[np.float64]:
    """Fixed-point integers back to floats."""
    return values.astype(np.float64) / 2.0**frac_bits


# --- a client's round secrets ------------------------------------------------------------------


@dataclass(frozen=True)
class Advertised:
    """What a client announces for a round: its two X25519 public keys and a commitment to b."""

    c_public: bytes
    s_public: bytes
    b_commit: bytes


def _commit(b: bytes, context: bytes) -> bytes:
    return hashlib.sha256(_INFO + b"commit\x00" + context + b).digest()


def _box_key(shared: bytes, sender: int, receiver: int, context: bytes) -> bytes:
    """One AES-256-GCM key per (round, sender, receiver): each encrypts one message only."""
    return _hkdf(shared, context, b"share" + struct.pack(">HH", sender, receiver))


def _self_mask(b: bytes, context: bytes, length: int) -> U64Array:
    return masks.derive_mask(b, length, salt=context, info=_INFO + b"self")


def _signed_pair_mask(
    key: X25519PrivateKey, i: int, j: int, public: bytes, context: bytes, length: int
) -> U64Array:
    """The mask ``i`` adds (``i < j``) or subtracts (``i > j``) for the pair ``(i, j)``."""
    shared = masks.agree(key, public, f"client {j}'s")
    info = _INFO + b"pair" + struct.pack(">HH", *sorted((i, j)))
    mask = masks.derive_mask(shared, length, salt=context, info=info)
    return mask if i < j else (np.uint64(0) - mask).astype(np.uint64)


class RoundSecrets:
    """A client's secrets for one round, all derived from one 32-byte seed; never serialisable.

    The caller draws the seed with ``secrets.token_bytes(32)`` and saves it before the
    first message, so a resumed client derives the same keys, self-mask and shares.
    """

    __slots__ = ("_b", "_c", "_rng", "_s", "_seed")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != SEED_BYTES:
            raise ValueError("a round seed is 32 bytes")
        self._seed = seed
        self._c = X25519PrivateKey.from_private_bytes(_hkdf(seed, b"", b"c-key"))
        self._s = X25519PrivateKey.from_private_bytes(_hkdf(seed, b"", b"s-key"))
        self._b = _hkdf(seed, b"", b"b-seed")
        self._rng = Drbg(_hkdf(seed, b"", b"shamir"))

    @classmethod
    def from_seed(cls, seed: bytes) -> RoundSecrets:
        """The round's secrets from its seed."""
        return cls(seed)

    def __repr__(self) -> str:
        return "RoundSecrets(<secret>)"

    def __reduce__(self) -> NoReturn:
        raise TypeError("round secrets never leave the process that made them")

    def advertised(self, context: bytes) -> Advertised:
        """The public keys and commitment to send to the server."""
        return Advertised(
            self._c.public_key().public_bytes_raw(),
            self._s.public_key().public_bytes_raw(),
            _commit(self._b, context),
        )

    def share(
        self, me: int, roster: Mapping[int, Advertised], threshold: int, context: bytes
    ) -> dict[int, bytes]:
        """This client's encrypted shares of ``s`` and ``b`` for every other client in ``roster``.

        Raises:
            InvalidKeyError: If a peer's key is invalid or repeats another's.
        """
        check_roster(roster, threshold, me, self.advertised(context))
        s_shares, b_shares = self._shares(roster, threshold)
        boxes = {}
        for j, peer in sorted(roster.items()):
            if j == me:
                continue
            shared = masks.agree(self._c, peer.c_public, f"client {j}'s share")
            plain = _SHARE_PT.pack(
                me,
                j,
                s_shares[j].to_bytes(SHARE_BYTES, "big"),
                b_shares[j].to_bytes(SHARE_BYTES, "big"),
            )
            aad = struct.pack(">HH", me, j) + context
            boxes[j] = AESGCM(_box_key(shared, me, j, context)).encrypt(_NONCE, plain, aad)
        return boxes

    def _shares(
        self, roster: Mapping[int, Advertised], threshold: int
    ) -> tuple[dict[int, int], dict[int, int]]:
        """The Shamir shares of ``s`` and ``b`` at every roster index, always drawn alike."""
        rng = Drbg(_hkdf(self._seed, b"", b"shamir"))
        s_secret = int.from_bytes(self._s.private_bytes_raw(), "big")
        s_shares = split_secret(s_secret, threshold, sorted(roster), rng)
        b_shares = split_secret(int.from_bytes(self._b, "big"), threshold, sorted(roster), rng)
        return s_shares, b_shares

    def open_inbox(
        self,
        me: int,
        roster: Mapping[int, Advertised],
        threshold: int,
        inbox: Mapping[int, bytes],
        context: bytes,
    ) -> OpenedShares:
        """Decrypt and check the shares other clients sent this one, and add its own.

        Raises:
            InvalidMessageError: If a box is from an unknown client, fails authentication or
                carries the wrong indices.
        """
        s_own, b_own = self._shares(roster, threshold)
        opened = OpenedShares(me, {me: s_own[me]}, {me: b_own[me]})
        for sender, box in sorted(inbox.items()):
            if sender == me or sender not in roster:
                raise InvalidMessageError(f"a share box from {sender}, who is not a peer")
            if len(box) != _SHARE_CT_BYTES:
                raise InvalidMessageError(f"client {sender}'s share box has the wrong size")
            shared = masks.agree(self._c, roster[sender].c_public, f"client {sender}'s share")
            aad = struct.pack(">HH", sender, me) + context
            try:
                plain = AESGCM(_box_key(shared, sender, me, context)).decrypt(_NONCE, box, aad)
            except InvalidTag:
                raise InvalidMessageError(
                    f"client {sender}'s share box fails authentication: altered or misrouted"
                ) from None
            got_sender, got_receiver, s_raw, b_raw = _SHARE_PT.unpack(plain)
            s_y, b_y = int.from_bytes(s_raw, "big"), int.from_bytes(b_raw, "big")
            if (got_sender, got_receiver) != (sender, me) or s_y >= PRIME or b_y >= PRIME:
                raise InvalidMessageError(f"client {sender}'s share box is malformed")
            opened.s[sender], opened.b[sender] = s_y, b_y
        return opened

    def mask(
        self,
        me: int,
        values: Sequence[int] | I64Array,
        survivors: Mapping[int, Advertised],
        context: bytes,
    ) -> U64Array:
        """``values`` plus the self-mask and the pairwise masks with every other client, mod 2^64.

        ``survivors`` are the clients whose shares reached the server (this one included).
        """
        out = np.asarray(values, dtype=np.int64).view(np.uint64).copy()
        if out.ndim != 1 or len(out) > MAX_LENGTH:
            raise ValueError(f"a vector of at most {MAX_LENGTH} cells")
        out += _self_mask(self._b, context, len(out))
        for j, peer in sorted(survivors.items()):
            if j != me:
                out += _signed_pair_mask(self._s, me, j, peer.s_public, context, len(out))
        return out


@dataclass
class OpenedShares:
    """The shares a client holds after opening its inbox: of every sender's ``s`` and ``b``.

    It answers one unmasking request per round (:meth:`reveal`); the protocol saves the
    request it answered so a resumed client answers the same one again, and no other.
    """

    me: int
    s: dict[int, int] = field(default_factory=dict)
    b: dict[int, int] = field(default_factory=dict)

    def reveal(self, me: int, survivors: Iterable[int], dropped: Iterable[int]) -> Reveal:
        """The shares of ``b`` of each survivor and of ``s`` of each dropped client.

        This is the check that keeps the server from unmasking one client: the two sets must be
        disjoint and cover exactly the clients whose shares this one holds, so the server never
        gets both secrets of the same client from an honest one.

        Raises:
            InvalidMessageError: If the request overlaps, misses or invents clients, or drops
                this client while asking it to answer.
        """
        alive, gone = set(survivors), set(dropped)
        if me != self.me or me not in alive:
            raise InvalidMessageError("the unmasking request does not count this client alive")
        if alive & gone or alive | gone != set(self.s):
            raise InvalidMessageError(
                "the unmasking request overlaps or does not match the clients whose shares this "
                "client holds: refusing, as answering could unmask one client's vector"
            )
        return Reveal({j: self.b[j] for j in sorted(alive)}, {j: self.s[j] for j in sorted(gone)})


@dataclass(frozen=True)
class Reveal:
    """One client's answer to the unmasking request: share values by the client they belong to."""

    b: Mapping[int, int]
    s: Mapping[int, int]


def check_roster(
    roster: Mapping[int, Advertised], threshold: int, me: int, own: Advertised
) -> None:
    """Check the round's roster as the server relayed it.

    Raises:
        DropoutError: If fewer than ``threshold`` clients are in it.
        InvalidMessageError: If an index is out of range, this client is missing or misquoted.
        InvalidKeyError: If two clients announce the same key.
    """
    if len(roster) < threshold:
        raise DropoutError(
            f"only {len(roster)} clients announced keys; the round needs {threshold}"
        )
    if len(roster) > MAX_CLIENTS or any(not 1 <= i <= MAX_CLIENTS for i in roster):
        raise InvalidMessageError(f"roster indices must lie in 1..{MAX_CLIENTS}")
    if roster.get(me) != own:
        raise InvalidMessageError("the roster misquotes this client's own keys")
    keys = [a.c_public for a in roster.values()] + [a.s_public for a in roster.values()]
    if len(set(keys)) != len(keys):
        raise InvalidKeyError("two roster entries share a public key; the round must stop")


def _rebuild(shares: Mapping[int, int], threshold: int, what: str) -> bytes:
    value = combine_shares(shares, threshold)
    if value >= 1 << (8 * SEED_BYTES):
        raise InvalidMessageError(f"the shares of {what} rebuild no 32-byte secret: bad shares")
    return value.to_bytes(SEED_BYTES, "big")


def unmask(
    masked: Mapping[int, U64Array],
    roster: Mapping[int, Advertised],
    reveals: Mapping[int, Reveal],
    threshold: int,
    context: bytes,
    shared: Iterable[int] | None = None,
) -> I64Array:
    """The sum of the survivors' vectors: rebuild their self-masks and the dropped clients' keys.

    Args:
        masked: The masked vectors received, by client (the survivors).
        roster: Every client's announced keys (at least those that shared).
        reveals: The answers to the unmasking request, by responder (survivors only).
        threshold: Shares needed to rebuild a secret.
        context: The round's context bytes, as the clients used them.
        shared: The clients whose shares were forwarded (default: the roster); those of them
            without a masked vector are the dropped clients whose pairwise masks are removed.

    Raises:
        DropoutError: If fewer than ``threshold`` survivors answered.
        InvalidMessageError: If a reveal does not match the request, or a rebuilt secret
            contradicts its client's announced key or commitment.
    """
    survivors = set(masked)
    dropped = set(roster if shared is None else shared) - survivors
    if not survivors or len(reveals) < threshold or len(survivors) < threshold:
        raise DropoutError(
            f"{len(survivors)} masked vectors and {len(reveals)} answers, but unmasking needs "
            f"{threshold}: too many clients dropped out"
        )
    lengths = {len(v) for v in masked.values()}
    if len(lengths) != 1:
        raise InvalidMessageError("masked vectors of different lengths")
    (length,) = lengths
    for responder, reveal in reveals.items():
        if responder not in survivors or set(reveal.b) != survivors or set(reveal.s) != dropped:
            raise InvalidMessageError(f"client {responder}'s answer does not match the request")
    total = np.zeros(length, dtype=np.uint64)
    for vector in masked.values():
        total += vector
    for j in sorted(survivors):
        b = _rebuild({r: rv.b[j] for r, rv in reveals.items()}, threshold, f"client {j}'s b")
        if not hmac.compare_digest(_commit(b, context), roster[j].b_commit):
            raise InvalidMessageError(f"the rebuilt self-mask of client {j} fails its commitment")
        total -= _self_mask(b, context, length)
    for j in sorted(dropped):
        raw = _rebuild({r: rv.s[j] for r, rv in reveals.items()}, threshold, f"client {j}'s s")
        key = X25519PrivateKey.from_private_bytes(raw)
        if key.public_key().public_bytes_raw() != roster[j].s_public:
            raise InvalidMessageError(f"the rebuilt mask key of client {j} fails its public key")
        for i in sorted(survivors):
            total += _signed_pair_mask(key, j, i, roster[i].s_public, context, length)
    return total.view(np.int64)


# --- wire layouts ------------------------------------------------------------------------------


def encode_advertised(adv: Advertised) -> bytes:
    """A client's keys message: 104 bytes.

    Layout: magic ``b"BSGK"`` (4), version 1 (1), reserved zero (3), X25519 public key ``c``
    (32), X25519 public key ``s`` (32), SHA-256 commitment to ``b`` (32).
    """
    return _KEYS.pack(adv.c_public, adv.s_public, adv.b_commit)


def decode_advertised(payload: bytes) -> Advertised:
    """Check a keys message.

    Raises:
        InvalidMessageError: If the size, magic or version is wrong.
    """
    if len(payload) != _KEYS_BYTES:
        raise InvalidMessageError(f"a keys message is {_KEYS_BYTES} bytes, got {len(payload)}")
    body = _KEYS.split(payload, "a secure-aggregation keys message")
    return Advertised(body[:32], body[32:64], body[64:])


def _encode_list(header: Header, entries: Sequence[bytes]) -> bytes:
    return header.pack(_LIST_COUNT.pack(len(entries)), *entries)


def _decode_list(payload: bytes, header: Header, size: int, what: str) -> list[bytes]:
    body = header.split(payload, f"a {what} message")
    if len(body) < _LIST_COUNT.size:
        raise InvalidMessageError(f"a {what} message is shorter than its header")
    (count,) = _LIST_COUNT.unpack_from(body)
    if count > MAX_CLIENTS * MAX_CLIENTS or len(body) != _LIST_COUNT.size + count * size:
        raise InvalidMessageError(f"a {what} message announces {count} entries of {size} bytes")
    body = body[_LIST_COUNT.size :]
    return [body[k * size : (k + 1) * size] for k in range(count)]


def _index(raw: bytes, what: str) -> int:
    value = int.from_bytes(raw, "big")
    if not 1 <= value <= MAX_CLIENTS:
        raise InvalidMessageError(f"a {what} names client {value}, outside 1..{MAX_CLIENTS}")
    return value


def _unique(pairs: Iterable[tuple[int, object]], what: str) -> None:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise InvalidMessageError(f"a {what} names a client twice")


def encode_roster(roster: Mapping[int, Advertised]) -> bytes:
    """The server's roster: a 8-byte header then 98 bytes per client.

    Layout: magic ``b"BSGR"`` (4), version 1 (1), kind 0 (1), count (2, big-endian); each entry
    the client's index (2) then its keys message body (``c``, ``s``, commitment: 96).
    """
    return _encode_list(
        _ROSTER,
        [
            struct.pack(">H", i) + a.c_public + a.s_public + a.b_commit
            for i, a in sorted(roster.items())
        ],
    )


def decode_roster(payload: bytes) -> dict[int, Advertised]:
    """Check a roster message (indices in range and distinct).

    Raises:
        InvalidMessageError: If the layout is wrong.
    """
    entries = _decode_list(payload, _ROSTER, 98, "roster")
    pairs = [(_index(e[:2], "roster"), Advertised(e[2:34], e[34:66], e[66:98])) for e in entries]
    _unique(pairs, "roster")
    return dict(pairs)


def encode_boxes(boxes: Mapping[int, bytes]) -> bytes:
    """Encrypted shares, by peer index: a 8-byte header then 2 + 152 bytes per box.

    Layout: magic ``b"BSGS"`` (4), version 1 (1), kind 0 (1), count (2); each entry the peer's
    index (2: the receiver in a client's upload, the sender in a client's inbox) and the AES-GCM
    ciphertext of (sender 2, receiver 2, share of ``s`` 66, share of ``b`` 66) with its 16-byte
    tag.
    """
    if any(len(box) != _SHARE_CT_BYTES for box in boxes.values()):
        raise ValueError(f"a share box is {_SHARE_CT_BYTES} bytes")
    return _encode_list(_BOX, [struct.pack(">H", i) + box for i, box in sorted(boxes.items())])


def decode_boxes(payload: bytes) -> dict[int, bytes]:
    """Check a share-box message.

    Raises:
        InvalidMessageError: If the layout is wrong or a peer appears twice.
    """
    entries = _decode_list(payload, _BOX, 2 + _SHARE_CT_BYTES, "share-box")
    pairs = [(_index(e[:2], "share box"), e[2:]) for e in entries]
    _unique(pairs, "share-box list")
    return dict(pairs)


def encode_request(survivors: Iterable[int], dropped: Iterable[int]) -> bytes:
    """The unmasking request: 8-byte header then 3 bytes per client.

    Layout: magic ``b"BSGQ"`` (4), version 1 (1), kind 0 (1), count (2); each entry the client's
    index (2) and 1 if its masked vector arrived (reveal ``b``) or 2 if not (reveal ``s``).
    """
    entries = [struct.pack(">HB", i, _REVEAL_B) for i in sorted(survivors)]
    entries += [struct.pack(">HB", i, _REVEAL_S) for i in sorted(dropped)]
    return _encode_list(_REQ, entries)


def decode_request(payload: bytes) -> tuple[list[int], list[int]]:
    """Check an unmasking request and return (survivors, dropped).

    Raises:
        InvalidMessageError: If the layout or a flag is wrong or a client appears twice.
    """
    entries = _decode_list(payload, _REQ, 3, "unmasking request")
    pairs = [(_index(e[:2], "request"), e[2]) for e in entries]
    _unique(pairs, "unmasking request")
    if any(flag not in (_REVEAL_B, _REVEAL_S) for _, flag in pairs):
        raise InvalidMessageError("an unmasking request entry has an unknown flag")
    return (
        sorted(i for i, f in pairs if f == _REVEAL_B),
        sorted(i for i, f in pairs if f == _REVEAL_S),
    )


def encode_reveal(reveal: Reveal) -> bytes:
    """A client's answer: 8-byte header then 69 bytes per share.

    Layout: magic ``b"BSGA"`` (4), version 1 (1), kind 0 (1), count (2); each entry a flag (1:
    a share of ``b``, 2: of ``s``), the owner's index (2) and the share value (66, big-endian).
    """
    entries = [
        struct.pack(">BH", _REVEAL_B, j) + y.to_bytes(SHARE_BYTES, "big")
        for j, y in sorted(reveal.b.items())
    ]
    entries += [
        struct.pack(">BH", _REVEAL_S, j) + y.to_bytes(SHARE_BYTES, "big")
        for j, y in sorted(reveal.s.items())
    ]
    return _encode_list(_REVEAL, entries)


def decode_reveal(payload: bytes) -> Reveal:
    """Check an answer: flags known, owners in range and not repeated, values in the field.

    Raises:
        InvalidMessageError: If anything is out of place.
    """
    entries = _decode_list(payload, _REVEAL, 3 + SHARE_BYTES, "reveal")
    b: dict[int, int] = {}
    s: dict[int, int] = {}
    for e in entries:
        flag, owner, y = e[0], _index(e[1:3], "reveal"), int.from_bytes(e[3:], "big")
        target = b if flag == _REVEAL_B else s if flag == _REVEAL_S else None
        if target is None or owner in b or owner in s or y >= PRIME:
            raise InvalidMessageError("a reveal entry is malformed or repeats a client")
        target[owner] = y
    return Reveal(b, s)


def encode_vector(vector: U64Array) -> bytes:
    """A masked vector on the wire: ``pairwise_masks.encode_u64_vector`` with magic ``b"BSGV"``."""
    return pairwise_masks.encode_u64_vector(_VEC_MAGIC, vector, MAX_LENGTH)


def decode_vector(payload: bytes, length: int) -> U64Array:
    """Check a masked vector of ``length`` cells.

    Raises:
        InvalidMessageError: If the layout, version or cell count is not the expected one.
    """
    return pairwise_masks.decode_u64_vector(_VEC_MAGIC, payload, length)
