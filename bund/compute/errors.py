"""Errors that a caller (a peer, an operator, a bad input) can cause in the pure compute layer.

Every class says what went wrong and what to do. The node maps each class to a gRPC status in
``bund/parties/errors.py``; the message of a ``BundError`` is written to be safe to show to a peer.
"""

from __future__ import annotations


class BundError(Exception):
    """Root of every failure a user or a peer can cause; the message says what to do."""


class InvalidInputError(BundError):
    """Input data that a computation cannot accept (wrong type, empty, malformed)."""


class InvalidPointError(BundError):
    """A received group element is not a valid point of the expected group."""


class InvalidCiphertextError(BundError):
    """A received ciphertext fails validation (range, group membership, key, size)."""


class InvalidKeyError(BundError):
    """A received public key fails validation (size, structure, small factors)."""


class KeySizeError(BundError):
    """A key below the minimum secure size was requested without the test-only switch."""


class SetTooLargeError(BundError):
    """A set exceeds the configured size cap for a protocol."""


class EncodingOverflowError(BundError):
    """A value does not fit the fixed-point or packed encoding it was given."""


class InvalidMessageError(BundError):
    """A peer's protocol message is malformed (layout, version, or a field out of range)."""


class ProofError(BundError):
    """A peer's zero-knowledge proof does not verify: do not use what it was meant to cover.

    Its statement (a well-formed Paillier modulus, a plaintext in range, sound commitment
    parameters) is not established; refuse the key, ciphertext or parameters it came with.
    """


class CiphertextRangeError(InvalidCiphertextError):
    """A received Paillier ciphertext is not in the open interval (0, n²)."""


class CiphertextNotUnitError(InvalidCiphertextError):
    """A received Paillier ciphertext shares a factor with n, so it is no valid ciphertext."""


class KeyIdMismatchError(InvalidCiphertextError):
    """Received ciphertexts name a public key other than the one this job agreed on."""


class ExponentMismatchError(InvalidCiphertextError):
    """Received ciphertexts carry a fixed-point exponent other than the protocol's."""


class WeakModulusError(InvalidKeyError):
    """A received modulus is even, a perfect square or power, prime, or has a factor below 2^20."""


class InvalidBaseError(InvalidKeyError):
    """A received Paillier public key's encryption base h_s is out of range or not a unit."""
