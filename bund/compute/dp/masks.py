r"""The mask kernel of secure aggregation: a secret, through HKDF and ChaCha20, to words mod 2^64.

Both secure-aggregation modules hide a vector by adding masks that cancel in the sum, and both
make a mask the same way: a 32-byte secret (an X25519 shared secret for a pair of parties, or a
party's own seed for a self-mask) goes through HKDF-SHA256 to a ChaCha20 key, and the keystream
(zero nonce: one key per mask) is read as little-endian uint64 words. What differs is the domain
separation, which each caller passes in: the HKDF salt binds the mask to one job or round, and
the ``info`` names the module, the kind of mask and the pair, so no two masks share a key.

- ``pairwise_masks`` (DP statistics, vertical scoring): salt the job context, info
  ``b"bund/secure-agg/v1/mask\x00"`` then each of the two names, sorted, length-prefixed.
- ``dropout_secagg`` (federated DP-SGD): salt the round context, info ``b"bund/secagg/v1/pair"``
  then the two client indices (u16 each, low first), or ``b"bund/secagg/v1/self"``.

>>> a, b = X25519PrivateKey.generate(), X25519PrivateKey.generate()
>>> shared = agree(a, b.public_key().public_bytes_raw(), "b's")
>>> mask = derive_mask(shared, 3, salt=b"job", info=b"doc/pair")
>>> same = derive_mask(agree(b, a.public_key().public_bytes_raw(), "a's"), 3, salt=b"job",
...                    info=b"doc/pair")
>>> bool((mask == same).all()), mask.dtype.name, len(mask)
(True, 'uint64', 3)
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from bund.compute.errors import InvalidKeyError

#: The most words one mask may have (the larger of the two modules' vector limits).
MAX_WORDS = 1 << 20

U64Array = npt.NDArray[np.uint64]


def agree(key: X25519PrivateKey, peer_public: bytes, whose: str) -> bytes:
    """The X25519 shared secret of ``key`` and a peer's 32-byte public key.

    Args:
        key: This party's private key.
        peer_public: The peer's public key, as received.
        whose: The peer's key in words, for the error (``"client 3's"``).

    Raises:
        InvalidKeyError: If the public key is malformed or of low order (OpenSSL refuses an
            all-zero shared secret), which would make the mask known to everyone.
    """
    try:
        return key.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError:
        raise InvalidKeyError(
            f"{whose} public key is malformed or of low order; the job must stop"
        ) from None


def keystream(key: bytes, nbytes: int) -> bytes:
    """``nbytes`` of the ChaCha20 keystream under a 32-byte ``key`` (zero nonce: one per key)."""
    return Cipher(algorithms.ChaCha20(key, bytes(16)), None).encryptor().update(bytes(nbytes))


def keystream_words(key: bytes, length: int) -> U64Array:
    """The first ``length`` words mod 2^64 of ``key``'s keystream, read little-endian."""
    if not 0 <= length <= MAX_WORDS:
        raise ValueError(f"length must be in [0, {MAX_WORDS}]")
    return np.frombuffer(keystream(key, 8 * length), dtype="<u8").astype(np.uint64)


def derive_mask(secret: bytes, length: int, *, salt: bytes, info: bytes) -> U64Array:
    """A mask of ``length`` words: ``HKDF-SHA256(secret, salt, info)`` keys the ChaCha20 stream.

    Args:
        secret: The pair's shared secret (see :func:`agree`) or a self-mask seed.
        length: Words in the mask, at most :data:`MAX_WORDS`.
        salt: Binds the mask to one job or round (the context both ends share).
        info: Names the module, the kind of mask and the pair, so masks never share a key.
    """
    key = HKDF(hashes.SHA256(), 32, salt, info).derive(secret)
    return keystream_words(key, length)
