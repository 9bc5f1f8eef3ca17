r"""One request to a standing scoring contract: its digest, the masked answers, the bank's sum.

A bank asks every provider of a contract for its partial scores of ``n`` ids under one fresh
32-byte nonce. Each provider answers with ``2n`` cells over ``ℤ/2^64``:

* cell ``i``: its fixed-point partial score ``q_i`` of id ``i`` when it holds the id, otherwise a
  uniformly random word;
* cell ``n + i``: ``0`` when it holds id ``i``, otherwise a uniformly random *non-zero* word;

plus, on every cell, the pairwise masks it shares with each other provider (X25519 shared secret
→ HKDF-SHA256 → ChaCha20, :func:`bund.compute.dp.pairwise_masks.pair_mask`), added by the
provider whose name sorts first and subtracted by the other. The masks are keyed by the
contract's pairwise secrets and salted with the **request digest** (:func:`request_digest`:
contract, nonce and the ids in order), so they cancel in the bank's sum only when every provider
answered the very same request, and a fresh nonce gives fresh masks.

The bank adds the answers (:func:`combine_answers`). For an id every provider holds, the first
sum is ``Σ q_k``, and the second is ``0``. For an id some provider lacks, the first sum is
uniformly random (one random word hides the others' scores) and the second is non-zero but for
a chance of about ``2^-64``: the sum of one or more uniform non-zero words is (nearly) uniform,
so the bank learns *that* some provider lacks the id, and neither which one nor how many
(random words that were odd, or bounded, would leak the count through parity or size).

What a single answer shows anyone but its provider: with two or more providers, nothing (every
cell carries a pseudorandom mask); with one provider there is no mask, and the bank reads that
provider's partial scores and which ids it holds, as it would from the decisions anyway.

Wire layout of an answer (:func:`encode_answer`): magic ``b"BSRV"``, version 1, 3 reserved zero
bytes, a 4-byte big-endian cell count, then each cell as a little-endian uint64 (the layout of
:func:`bund.compute.dp.pairwise_masks.encode_u64_vector`).

>>> from bund.compute.dp.pairwise_masks import create_masking_key
>>> keys = {"reg": create_masking_key(), "tax": create_masking_key()}
>>> public = {name: key.public_bytes() for name, key in keys.items()}
>>> digest = request_digest("ab" * 16, bytes(32), [b"firm-1", b"firm-2"])
>>> reg = answer_vector([7, 0], [True, False], keys["reg"], "reg", public, digest)
>>> tax = answer_vector([-2, 5], [True, True], keys["tax"], "tax", public, digest)
>>> totals, complete = combine_answers([reg, tax], 2)
>>> totals[0], complete
(5, [True, False])
"""

from __future__ import annotations

import hashlib
import secrets
import struct
from collections.abc import Mapping, Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

from bund.compute.dp import pairwise_masks
from bund.compute.dp.pairwise_masks import MaskingKey
from bund.compute.errors import InvalidInputError, InvalidKeyError

#: Bytes of a request nonce.
NONCE_BYTES: Final = 32
#: The most ids one request may carry (``2n`` cells stay far below the masked-vector cap).
MAX_IDS: Final = 10_000
#: The longest id, in UTF-8 bytes.
MAX_ID_BYTES: Final = 256
#: Largest magnitude of one provider's fixed-point partial score (``2^20`` logits at 24
#: fractional bits): 64 of them still sum inside int64, and a sum beyond ``k`` times this is no
#: honest sum of ``k`` providers.
MAX_PARTIAL: Final = 1 << 44

_DOMAIN: Final = b"bund/serving/request/v1\x00"
_MAGIC: Final = b"BSRV"
_U16: Final = struct.Struct(">H")
_U32: Final = struct.Struct(">I")

U64Array = npt.NDArray[np.uint64]


def request_digest(contract_id: str, nonce: bytes, ids: Sequence[bytes]) -> bytes:
    """The 32-byte SHA-256 that names one request: what every party records and masks under.

    ``SHA-256("bund/serving/request/v1" 0x00 || u8 len || contract id (ASCII) || nonce (32) ||
    u32 n || per id: u16 len || id (UTF-8))``, integers big-endian: no two requests share an
    encoding, and the order of the ids is part of it.

    Args:
        contract_id: The contract (a job id: 32 lower-case hex digits).
        nonce: The request's 32 fresh random bytes.
        ids: The ids asked for, normalised (:func:`bund.compute.psi.normalise_ids`), in order.

    Raises:
        InvalidInputError: A malformed nonce, contract id, id, or too many ids.
    """
    check_request(contract_id, nonce, ids)
    h = hashlib.sha256(_DOMAIN)
    raw = contract_id.encode("ascii")
    h.update(bytes([len(raw)]) + raw + nonce + _U32.pack(len(ids)))
    for item in ids:
        h.update(_U16.pack(len(item)) + item)
    return h.digest()


def check_request(contract_id: str, nonce: bytes, ids: Sequence[bytes]) -> None:
    """Refuse a request whose nonce, contract id or ids are malformed (before any work).

    Raises:
        InvalidInputError: Naming what is wrong.
    """
    if len(contract_id) != 32 or any(c not in "0123456789abcdef" for c in contract_id):
        raise InvalidInputError("a contract id is 32 lower-case hex digits")
    if len(nonce) != NONCE_BYTES:
        raise InvalidInputError(f"a request nonce is {NONCE_BYTES} bytes, not {len(nonce)}")
    if not 1 <= len(ids) <= MAX_IDS:
        raise InvalidInputError(f"a request asks for 1 to {MAX_IDS} ids, not {len(ids)}")
    if any(not 1 <= len(item) <= MAX_ID_BYTES for item in ids):
        raise InvalidInputError(f"an id is 1 to {MAX_ID_BYTES} bytes of UTF-8 without blanks")
    if len(set(ids)) != len(ids):
        raise InvalidInputError("an id appears twice in the request: ask for each id once")


def _random_words(count: int, nonzero: bool) -> U64Array:
    """``count`` uniform words mod 2^64 from the OS CSPRNG (``nonzero``: uniform on 1..2^64-1)."""
    words = np.frombuffer(secrets.token_bytes(8 * count), dtype="<u8").astype(np.uint64)
    if nonzero:
        for i in np.flatnonzero(words == 0):  # probability 2^-64 each: redraw, never bias
            while words[i] == 0:
                words[i] = int.from_bytes(secrets.token_bytes(8), "little")
    return words


def answer_vector(
    scores: Sequence[int] | npt.NDArray[np.int64],
    held: Sequence[bool] | npt.NDArray[np.bool_],
    key: MaskingKey,
    me: str,
    public_keys: Mapping[str, bytes],
    digest: bytes,
) -> U64Array:
    """One provider's masked answer to a request: ``2n`` cells (see the module docstring).

    Args:
        scores: The provider's fixed-point partial score of each id (ignored where not held).
        held: Whether the provider holds each id (and could score it).
        key: The provider's masking key of the contract.
        me: The provider's name; ``public_keys`` maps it to ``key``'s public key.
        public_keys: Every provider's masking public key, by name (one provider: only its own).
        digest: The request's digest (:func:`request_digest`): the masks' salt.

    Raises:
        ValueError: Mismatched lengths, a score out of range, or ``me``'s key not in
            ``public_keys``.
        InvalidKeyError: Another provider's key is invalid or equal to this one's.
    """
    n = len(held)
    if len(scores) != n or not 1 <= n <= MAX_IDS or len(digest) != 32:
        raise ValueError(f"one score and one flag per id, 1 to {MAX_IDS} ids, a 32-byte digest")
    own = key.public_bytes()
    if public_keys.get(me) != own:
        raise ValueError("public_keys must map this provider's name to its own public key")
    flags = np.asarray(held, dtype=bool)
    values = np.asarray(scores, dtype=np.int64)
    if np.any(np.abs(values[flags]) >= MAX_PARTIAL):
        raise ValueError("a partial score reaches 2^44 (2^20 logits): the model part is broken")
    cells = np.empty(2 * n, dtype=np.uint64)
    cells[:n] = np.where(flags, values.view(np.uint64), _random_words(n, nonzero=False))
    cells[n:] = np.where(flags, np.uint64(0), _random_words(n, nonzero=True))
    for peer, public in sorted(public_keys.items()):
        if peer == me:
            continue
        if public == own:
            raise InvalidKeyError(f"{peer} announced this provider's own masking key")
        mask = pairwise_masks.pair_mask(key, me, peer, public, digest, 2 * n)
        cells = cells + mask if me < peer else cells - mask
    return cells


def combine_answers(answers: Sequence[U64Array], n: int) -> tuple[list[int], list[bool]]:
    """The bank's sum of every provider's answer: per id, the summed score and whether complete.

    Returns:
        ``(totals, complete)``: ``totals[i]`` is ``Σ q_k`` as a signed integer where
        ``complete[i]`` (every provider holds id ``i``), and meaningless otherwise.

    Raises:
        ValueError: No answer, or one of another length than ``2n``.
    """
    if not answers or any(a.shape != (2 * n,) or a.dtype != np.uint64 for a in answers):
        raise ValueError(f"one answer of {2 * n} uint64 cells per provider")
    total = answers[0].copy()
    for answer in answers[1:]:
        total = total + answer
    signed = total[:n].view(np.int64)
    return [int(v) for v in signed], [bool(v == 0) for v in total[n:]]


def encode_answer(answer: U64Array) -> bytes:
    """An answer on the wire: ``BSRV`` v1 (the module docstring), 12 + 8 bytes a cell."""
    return pairwise_masks.encode_u64_vector(_MAGIC, answer, 2 * MAX_IDS)


def decode_answer(payload: bytes, n: int) -> U64Array:
    """Check a received answer to a request of ``n`` ids and return its ``2n`` cells.

    Raises:
        InvalidMessageError: The layout, version or cell count is not the expected one.
    """
    return pairwise_masks.decode_u64_vector(_MAGIC, payload, 2 * n)
