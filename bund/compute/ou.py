"""Okamoto–Uchiyama (OU) encryption on gmpy2: keys, encryption, guarded decryption, products.

The scheme (Okamoto and Uchiyama, *A new public-key cryptosystem as secure as factoring*,
EUROCRYPT 1998, LNCS 1403): ``n = p²q`` with primes ``p`` and ``q`` of about ``|n|/3`` bits each;
``g ∈ Z*_n`` such that ``g_p = g^(p-1) mod p²`` has order ``p``; ``h = g^n mod n``. A plaintext
``m`` (an integer modulo the secret ``p``) encrypts as ``c = g^m · ρ mod n`` with ``ρ`` a random
``n``-th power, and decrypts as ``m = L(c^(p-1) mod p²) · L(g_p)^(-1) mod p`` with
``L(x) = (x - 1)/p``. Products of ciphertexts add plaintexts and powers scale them, modulo ``p``;
all group operations are modulo ``n`` (2048 bits), where Paillier's are modulo ``n²`` (4096
bits), which is why OU's additions and matrix-vector products cost about a third of Paillier's.

Plaintexts are signed: ``|v| < 2^max_plaintext_bits`` with ``max_plaintext_bits = p_bits - 2``
(``p_bits = ⌈|n|/3⌉``; key generation makes ``p`` exactly ``p_bits`` bits long), read back by the
centred lift of ``m mod p``. Packing (``bund.compute.encoding``) puts several signed slots into
one plaintext, within :meth:`PublicKey.packing_bits` bits: fewer slots than Paillier, whose
plaintext space is the whole ``n``.

Randomness, and what each party may use:

- **The key owner's own encryptions** use ``ρ = h^r`` with ``r`` uniform below
  ``2^random_bits(|n|)`` (256 bits at 2048, 384 at 3072; the standard fast variant, as in
  SecretFlow's HEU), computed from fixed-base comb tables modulo ``p²`` and ``q`` and joined by
  CRT. Its hiding rests on the p-subgroup assumption *and* on ``h^r`` with short ``r`` being
  indistinguishable from a random element of ``<h>`` (a short-exponent assumption in the sense of
  Koshiba and Kurosawa, PKC 2004); the best known attacks on an ``ℓ``-bit exponent cost about
  ``2^(ℓ/2)`` (``2^128`` at 2048 bits, above the modulus' 112-bit strength).
- **Everyone else (an evaluator)** encrypts and re-randomises with ``ρ = u^n mod n``, ``u``
  uniform in ``Z*_n`` from ``secrets``, each value used once. ``c·u^n`` is uniform over the
  coset of ``c`` modulo the ``n``-th powers, so it reveals nothing of how ``c`` was computed *if*
  ``gcd(pq, (p-1)(q-1)) = 1``, which only the key owner can check: a key owner who picked
  ``p | q - 1`` leaves a component of ``Z*_q`` that ``u^n`` does not randomise. No proof that an
  OU modulus is well formed in this sense is ready to use, so an evaluator runs OU only with a key
  holder its policy trusts (``docs/ou.md``).

Security, stated plainly. Semantic security (IND-CPA) rests on the **p-subgroup assumption**
(distinguishing ``g^m`` from random ``n``-th-power cosets is hard); factoring ``n = p²q`` gives
only one-wayness. OU is **broken under chosen ciphertexts**: decrypting ``g^M`` with ``M ≥ p``
returns ``M mod p``, and ``gcd(M - (M mod p), n)`` is ``p``. A key owner that returns decryptions
to a counterparty therefore goes through a :class:`DecryptionService`, which releases a
plaintext only if it lies in the range the protocol declares with at least
``RANGE_SIGMA + log2(decryptions per key)`` bits of headroom below ``p``; the first violation
raises :class:`DecryptionRangeError` and retires the key.

Safety. Moduli under :data:`MIN_KEY_BITS` are refused with :class:`~compute.errors.KeySizeError`
unless the test-only switch (``bund.compute.insecure``) is on. A received public key is validated
(size, odd, not a square, no prime factor below ``2^20``, ``g`` and ``h`` units other than ±1, and
``h = g^n mod n``); a received ciphertext vector is validated (key id, fixed-point exponent,
length, each ``0 < c < n`` and ``gcd(c, n) = 1``). Computed ciphertexts are re-randomised before
they are serialised. :class:`PrivateKey` has no serialisation and refuses pickling and copying.

Wire layouts (version 1, big-endian; ``K = ceil(bits/8)``):

- Public key, sent once per job: ``b"BNOK" | version:u8 | bits:u16 | n:K | g:K | h:K``.
- Ciphertext vector: ``b"BNOC" | version:u8 | key_id:16 bytes | frac_bits:u16 | count:u32 |
  count × (c:K bytes)``; ``key_id`` is the first 16 bytes of
  ``SHA-256(b"bund/ou/key-id/v1" | n:K bytes)``.

Timing. gmpy2 is not constant-time; decryption's secret exponent ``p - 1`` meets GMP's ``powm``,
the same exposure as Paillier's. Only whole-batch times are visible to a peer.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NoReturn, TypeAlias

import gmpy2

from bund.compute.encoding import PackingLayout, pack_signed, squeeze_slots, unpack_slots
from bund.compute.errors import (
    BundError,
    CiphertextNotUnitError,
    CiphertextRangeError,
    EncodingOverflowError,
    ExponentMismatchError,
    InvalidCiphertextError,
    InvalidKeyError,
    InvalidMessageError,
    KeyIdMismatchError,
    KeySizeError,
    WeakModulusError,
)
from bund.compute.executor import Executor, InlineExecutor, split_evenly
from bund.compute.insecure import insecure_test_parameters_enabled
from bund.compute.layout import Header
from bund.compute.modexp import (
    ONE,
    CombTable,
    PrecomputedPool,
    as_ints,
    batch_invert,
    comb_power,
    comb_table,
    dot_mod,
    matvec_mod,
    mul_mod,
    released_gil,
    squeeze_mod,
)

#: gmpy2 ships no type stubs; ``Mpz`` marks where a ``gmpy2.mpz`` is meant.
Mpz: TypeAlias = Any

#: Smallest modulus accepted without the test-only switch (NIST SP 800-57: 112-bit security).
MIN_KEY_BITS = 2048
#: Largest modulus accepted from a peer; bounds the work a received key can cause.
MAX_KEY_BITS = 8192
#: Smallest modulus accepted even with the test-only switch on: ``p`` must still hold the
#: decryption guard's headroom and a few slots.
MIN_TEST_KEY_BITS = 512
#: Version byte of the wire layouts in the module docstring.
WIRE_VERSION = 1
#: Bytes of a key id.
KEY_ID_BYTES = 16
#: A received modulus must have no prime factor below this bound.
SMALL_FACTOR_BOUND = 1 << 20
#: Statistical security (bits) of the decryption range guard: a chosen ciphertext passes it with
#: probability at most ``2^-RANGE_SIGMA`` over all the key's decryptions.
RANGE_SIGMA = 40

_KEY = Header(b"BNOK", WIRE_VERSION)
_KEY_FIELDS = struct.Struct(">H")  # bits
_KEY_PREFIX = _KEY.size + _KEY_FIELDS.size
_VECTOR = Header(b"BNOC", WIRE_VERSION)
_VECTOR_FIELDS = struct.Struct(">16sHI")  # key id, frac bits, count
_KEY_ID_DOMAIN = b"bund/ou/key-id/v1"


class DecryptionRangeError(InvalidCiphertextError):
    """A decryption fell outside the range the protocol declares; the key is now retired.

    A peer caused it: either its computation was wrong or it sent a chosen ciphertext, the first
    step of the attack that factors an Okamoto–Uchiyama modulus. Nothing was released.
    """


class KeyRetiredError(BundError):
    """An Okamoto–Uchiyama key was retired (out-of-range decryption or limit reached)."""


class DecryptionLimitError(KeyRetiredError):
    """More decryptions than the protocol declared for the key; the key is now retired."""


class InvalidGeneratorError(InvalidKeyError):
    """A received OU public key's ``g`` or ``h`` is out of range, ±1, not a unit, or h ≠ g^n."""


def check_key_size(bits: int) -> None:
    """Refuse a modulus size below :data:`MIN_KEY_BITS` unless the test-only switch is on.

    Raises:
        KeySizeError: If ``bits`` is below the minimum (or below :data:`MIN_TEST_KEY_BITS` even
            with the switch, or above :data:`MAX_KEY_BITS`).
    """
    if bits > MAX_KEY_BITS:
        raise KeySizeError(f"a {bits}-bit OU modulus exceeds the {MAX_KEY_BITS}-bit limit")
    if bits < MIN_TEST_KEY_BITS or (bits < MIN_KEY_BITS and not insecure_test_parameters_enabled()):
        raise KeySizeError(
            f"a {bits}-bit Okamoto–Uchiyama modulus is below the {MIN_KEY_BITS}-bit minimum: use "
            f"{MIN_KEY_BITS} or 3072 bits (smaller keys, down to {MIN_TEST_KEY_BITS}, are for "
            "tests only, behind bund.compute.insecure.enable_insecure_test_parameters)"
        )


def prime_bits(bits: int) -> tuple[int, int]:
    """Bit lengths of ``p`` and ``q`` for ``n = p²q`` of ``bits`` bits: ``⌈bits/3⌉`` and the rest.

    >>> prime_bits(2048)
    (683, 682)
    """
    p_bits = (bits + 2) // 3
    return p_bits, bits - 2 * p_bits


def random_bits(bits: int) -> int:
    """Bits of the key owner's short randomness ``r``: ``max(256, bits/8)`` rounded to bytes."""
    return max(256, 8 * ((bits // 8 + 7) // 8))


def _key_bytes(bits: int) -> int:
    return (bits + 7) // 8


def _ceil_log2(x: int) -> int:
    return (x - 1).bit_length()


@dataclass(frozen=True)
class PublicKey:
    """An Okamoto–Uchiyama public key ``(n, g, h)``.

    Construct with :func:`generate_keypair`, or :meth:`from_bytes` for a peer's key (which
    validates it). Direct construction checks only types and ranges.

    Attributes:
        n: The modulus ``p²q``.
        g: The base whose powers carry the plaintext.
        h: ``g^n mod n``, the base of the key owner's short randomness.
        bits: Bit length of ``n``.
        key_id: 16 bytes naming the modulus on the wire.
    """

    n: Mpz
    g: Mpz
    h: Mpz
    bits: int = field(init=False, repr=False, compare=False)
    key_id: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n, g, h = gmpy2.mpz(self.n), gmpy2.mpz(self.g), gmpy2.mpz(self.h)
        if n < 3 or not n & 1:
            raise ValueError("an OU modulus is an odd integer above 2")
        if not (1 < g < n and 1 < h < n):
            raise ValueError("g and h lie in (1, n)")
        object.__setattr__(self, "n", n)
        object.__setattr__(self, "g", g)
        object.__setattr__(self, "h", h)
        object.__setattr__(self, "bits", int(n.bit_length()))
        digest = hashlib.sha256(_KEY_ID_DOMAIN + n.to_bytes(_key_bytes(self.bits), "big"))
        object.__setattr__(self, "key_id", digest.digest()[:KEY_ID_BYTES])

    @property
    def p_bits(self) -> int:
        """Bits of the secret prime ``p`` (the plaintext modulus): ``⌈bits/3⌉``."""
        return prime_bits(self.bits)[0]

    @property
    def max_plaintext_bits(self) -> int:
        """Signed plaintexts satisfy ``|v| < 2**max_plaintext_bits`` (``p_bits - 2``)."""
        return self.p_bits - 2

    @property
    def ciphertext_bytes(self) -> int:
        """Bytes of one ciphertext on the wire."""
        return _key_bytes(self.bits)

    def packing_bits(self, decryptions: int) -> int:
        """Bits a packed plaintext may use when up to ``decryptions`` decryptions are released.

        ``p_bits - 1 - RANGE_SIGMA - ⌈log2(decryptions)⌉``: a packed value of this many bits (sign
        included) leaves the :class:`DecryptionService`'s headroom below ``p``.

        Raises:
            ValueError: If ``decryptions`` is below 1.
            EncodingOverflowError: If no headroom is left (a far too small key).
        """
        if decryptions < 1:
            raise ValueError("decryptions is at least 1")
        capacity = self.p_bits - 1 - RANGE_SIGMA - _ceil_log2(decryptions)
        if capacity < 2:
            raise EncodingOverflowError(
                f"a {self.bits}-bit OU key leaves no plaintext room for {decryptions} guarded "
                "decryptions: use a larger key"
            )
        return capacity

    def to_bytes(self) -> bytes:
        """Serialise for the wire (layout in the module docstring); send it once per job."""
        k = _key_bytes(self.bits)
        body = b"".join(x.to_bytes(k, "big") for x in (self.n, self.g, self.h))
        return _KEY.pack(_KEY_FIELDS.pack(self.bits), body)

    @classmethod
    def from_bytes(cls, data: bytes) -> PublicKey:
        """Parse and validate a peer's public key (see :func:`validate_public_key`).

        Raises:
            InvalidMessageError: If the layout or version is wrong.
            KeySizeError: If the modulus is too small (or too large).
            InvalidKeyError: If the key fails validation (a subclass names the failure).
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError("a public key is parsed from bytes")
        fields = _KEY.split(data, "an Okamoto–Uchiyama public key")
        if len(fields) < _KEY_FIELDS.size:
            raise InvalidMessageError("an OU public key message is too short")
        (bits,) = _KEY_FIELDS.unpack_from(fields)
        check_key_size(bits)
        k = _key_bytes(bits)
        if len(fields) != _KEY_FIELDS.size + 3 * k:
            raise InvalidMessageError(
                f"a {bits}-bit OU public key message has {_KEY_PREFIX + 3 * k} bytes"
            )
        body = fields[_KEY_FIELDS.size :]
        n, g, h = (gmpy2.mpz.from_bytes(body[i * k : (i + 1) * k], "big") for i in range(3))
        if n.bit_length() != bits:
            raise InvalidMessageError("the public key's declared size does not match its modulus")
        validate_modulus(n)
        if not (1 < g < n and 1 < h < n):
            raise InvalidGeneratorError("the public key's g or h is outside (1, n)")
        key = cls(n, g, h)
        _validate_generators(key)
        return key


def validate_modulus(n: Mpz) -> None:
    """Check a received modulus: size, odd, not a perfect square, no prime factor below 2^20.

    These checks cannot prove ``n = p²q`` with large primes, nor ``gcd(pq, (p-1)(q-1)) = 1``
    (that would need the factors); they catch keys that are malformed or weak in ways that are
    cheap to detect.

    Raises:
        KeySizeError: If the size is refused (see :func:`check_key_size`).
        WeakModulusError: If ``n`` is even, a square, or has a small prime factor.
    """
    n = gmpy2.mpz(n)
    check_key_size(int(n.bit_length()))
    if not n & 1:
        raise WeakModulusError("the peer's OU modulus is even")
    if gmpy2.is_square(n):
        raise WeakModulusError("the peer's OU modulus is a perfect square")
    if gmpy2.gcd(n, gmpy2.primorial(SMALL_FACTOR_BOUND)) != 1:
        raise WeakModulusError("the peer's OU modulus has a prime factor below 2^20")


def validate_public_key(key: PublicKey) -> None:
    """Validate a peer's public key: its modulus, ``g`` and ``h``.

    Raises:
        KeySizeError: If the modulus size is refused.
        WeakModulusError: If the modulus is structurally weak (see :func:`validate_modulus`).
        InvalidGeneratorError: If ``g`` or ``h`` is ±1 or shares a factor with ``n``, or
            ``h ≠ g^n mod n``.
    """
    validate_modulus(key.n)
    _validate_generators(key)


def _validate_generators(key: PublicKey) -> None:
    n = key.n
    for name, value in (("g", key.g), ("h", key.h)):
        if value in (1, n - 1):
            raise InvalidGeneratorError(f"the public key's {name} is ±1")
        if gmpy2.gcd(value, n) != 1:
            raise InvalidGeneratorError(f"the public key's {name} shares a factor with n")
    if gmpy2.powmod(key.g, n, n) != key.h:
        raise InvalidGeneratorError("the public key's h is not g^n mod n")


class PrivateKey:
    """An OU secret key (``p``, ``q``); it never leaves the process.

    There is no serialisation (besides the sealed resume state of :meth:`export_for_resume`), and
    pickling and copying raise ``TypeError``. Decryptions that a counterparty will see go through
    a :class:`DecryptionService`; :func:`decrypt` and :func:`decrypt_packed` are for values the
    key owner keeps.
    """

    __slots__ = ("_gp_inv", "_p", "_p2", "_p2_inv_q", "_q", "public_key")

    def __init__(self, public_key: PublicKey, p: int | Mpz, q: int | Mpz) -> None:
        if not isinstance(public_key, PublicKey):
            raise TypeError("a private key belongs to a PublicKey")
        p, q = gmpy2.mpz(p), gmpy2.mpz(q)
        if p < 3 or q < 3 or p == q or p * p * q != public_key.n:
            raise ValueError("p and q are two different primes with p²q equal to the modulus")
        if gmpy2.gcd(p * q, (p - 1) * (q - 1)) != 1:
            raise ValueError("gcd(pq, (p-1)(q-1)) must be 1 for re-randomisation to hide")
        p2 = p * p
        gp = gmpy2.powmod(public_key.g, p - 1, p2)
        if gp == 1:
            raise ValueError("g^(p-1) mod p² must have order p")
        self.public_key = public_key
        self._p, self._q, self._p2 = p, q, p2
        self._gp_inv = gmpy2.invert(gmpy2.divexact(gp - 1, p), p)
        self._p2_inv_q = gmpy2.invert(p2, q)

    def __repr__(self) -> str:
        return f"PrivateKey(<secret>, bits={self.public_key.bits})"

    @property
    def plaintext_bits(self) -> int:
        """The bit length of ``p``, the plaintext modulus (known only to the key owner)."""
        return int(self._p.bit_length())

    def export_for_resume(self) -> bytes:
        """The key as this node's sealed resume state: public key bytes, then ``p``.

        Only for ``ctx.save_state``, which encrypts resume states at rest; never a message.
        """
        width = (self.public_key.p_bits + 7) // 8
        p_bytes: bytes = self._p.to_bytes(width, "big")
        return self.public_key.to_bytes() + p_bytes

    @classmethod
    def from_resume_state(cls, data: bytes) -> PrivateKey:
        """Rebuild a key saved by :meth:`export_for_resume` (its factor is checked).

        Raises:
            InvalidKeyError: If ``p²`` does not divide the public modulus.
        """
        if len(data) < _KEY_PREFIX:
            raise InvalidKeyError("the saved key is truncated")
        (bits,) = _KEY_FIELDS.unpack_from(data, _KEY.size)
        end = _KEY_PREFIX + 3 * _key_bytes(bits)
        public = PublicKey.from_bytes(bytes(data[:end]))
        if len(data) != end + (public.p_bits + 7) // 8:
            raise InvalidKeyError("the saved key has the wrong length")
        p = gmpy2.mpz(int.from_bytes(data[end:], "big"))
        if p < 3 or public.n % (p * p) != 0:
            raise InvalidKeyError("the saved factor does not divide the modulus")
        try:
            return cls(public, p, gmpy2.divexact(public.n, p * p))
        except ValueError as err:
            raise InvalidKeyError(f"the saved key is inconsistent: {err}") from None

    def __reduce__(self) -> NoReturn:
        raise TypeError(
            "an OU private key never leaves the process that holds it: decrypt with an inline or "
            "thread executor"
        )

    def __copy__(self) -> NoReturn:
        raise TypeError("an OU private key is not copied")

    def __deepcopy__(self, memo: object) -> NoReturn:
        raise TypeError("an OU private key is not copied")

    def decrypt_raw(
        self, ciphertexts: Sequence[Mpz], executor: Executor | None = None
    ) -> list[Mpz]:
        """Decrypt to residues in ``[0, p)`` (no validation, no range guard: trusted input only).

        Args:
            ciphertexts: Ciphertexts under this key.
            executor: Where the batches run (default inline). Process pools are refused
                because the key does not pickle.
        """
        executor = executor or InlineExecutor()
        batches = split_evenly(ciphertexts, executor.workers)
        results = executor.map(partial(_decrypt_task, self), batches)
        return [m for batch in results for m in batch]

    def _decrypt_batch(self, ciphertexts: Sequence[Mpz]) -> list[Mpz]:
        p, p2, gp_inv = self._p, self._p2, self._gp_inv
        xs = gmpy2.powmod_base_list([c % p2 for c in ciphertexts], p - 1, p2)
        divexact = gmpy2.divexact
        return [divexact(x - 1, p) * gp_inv % p for x in xs]

    def _lift(self, residues: Sequence[Mpz]) -> list[int]:
        """Centred lift of residues modulo ``p`` to signed integers in ``(-p/2, p/2)``."""
        p, half = self._p, self._p >> 1
        return [int(m - p) if m > half else int(m) for m in residues]

    def _crt(self, xp: Mpz, xq: Mpz) -> Mpz:
        """The residue modulo ``n`` that is ``xp`` modulo ``p²`` and ``xq`` modulo ``q``."""
        p2 = self._p2
        return xp + p2 * ((xq - xp) * self._p2_inv_q % self._q)


def _decrypt_task(key: PrivateKey, ciphertexts: Sequence[Mpz]) -> list[Mpz]:
    with released_gil():
        return key._decrypt_batch(ciphertexts)


def _random_prime(bits: int) -> Mpz:
    """A uniformly random prime of exactly ``bits`` bits with its top two bits set."""
    top = gmpy2.mpz(3) << (bits - 2)
    while True:
        candidate = gmpy2.mpz(secrets.randbits(bits)) | top | 1
        if gmpy2.is_prime(candidate, 40):
            return candidate


def generate_keypair(bits: int = MIN_KEY_BITS) -> tuple[PublicKey, PrivateKey]:
    """Generate an Okamoto–Uchiyama key pair with ``n = p²q`` of exactly ``bits`` bits.

    ``p`` has ``⌈bits/3⌉`` bits and ``q`` the rest, both with their top two bits set, and
    ``gcd(pq, (p-1)(q-1)) = 1`` (so that an evaluator's ``u^n`` re-randomises fully); ``g`` is a
    random unit with ``g^(p-1) mod p² ≠ 1``, ``h = g^n mod n``.

    Args:
        bits: Size of the modulus: 2048 or more; 512 and up only with the test-only switch on.

    Raises:
        TypeError: If ``bits`` is not an int.
        KeySizeError: If ``bits`` is refused (see :func:`check_key_size`).
    """
    if not isinstance(bits, int) or isinstance(bits, bool):
        raise TypeError("bits is an int")
    check_key_size(bits)
    p_bits, q_bits = prime_bits(bits)
    while True:
        p, q = _random_prime(p_bits), _random_prime(q_bits)
        n = p * p * q
        if p != q and n.bit_length() == bits and gmpy2.gcd(p * q, (p - 1) * (q - 1)) == 1:
            break
    p2 = p * p
    while True:
        g = gmpy2.mpz(secrets.randbelow(int(n) - 3) + 2)
        if gmpy2.gcd(g, n) == 1 and gmpy2.powmod(g, p - 1, p2) != 1:
            break
    public_key = PublicKey(n, g, gmpy2.powmod(g, n, n))
    return public_key, PrivateKey(public_key, p, q)


#: ``add_plain_raw`` builds a comb table of ``g`` once it adds at least this many values per
#: byte of the largest one (below it, ``powmod`` per value is cheaper than the table).
_COMB_THRESHOLD = 8


def _digits(value: int) -> bytes:
    """``value`` (at least 1) as little-endian base-256 digits, no leading zeros."""
    return value.to_bytes((value.bit_length() + 7) // 8, "little")


def _table_power(table: CombTable, value: int, modulus: Mpz) -> Mpz:
    """``base^value`` from a comb table (``value`` below ``256^len(table)``)."""
    if value == 0:
        return ONE
    digits = _digits(value)
    return comb_power(table[: len(digits)], digits, modulus)


class Encryptor:
    """Encrypts and re-randomises under one OU key: short ``h^r`` for its owner, ``u^n`` else.

    ``Encryptor(private_key)`` is the key owner's: ``g^m`` and ``h^r`` from comb tables modulo
    ``p²`` and ``q`` joined by CRT (about 7 MB of tables at 2048 bits); it refuses to pickle and
    runs inline on an executor that is not in this process. ``Encryptor(public_key)`` is an
    evaluator's: ``g^m`` from a comb table modulo ``n`` and ``u^n mod n`` with ``u`` uniform in
    ``Z*_n`` from ``secrets``, a full exponentiation per value (precompute them in an
    :class:`ObfuscatorPool`); it pickles as its key.
    """

    __slots__ = ("_g_tables", "_h_tables", "_owner", "_rows", "public_key")

    def __init__(self, key: PublicKey | PrivateKey) -> None:
        if isinstance(key, PrivateKey):
            public_key = key.public_key
            self._owner: PrivateKey | None = key
            moduli: tuple[Mpz, ...] = (key._p2, key._q)
        elif isinstance(key, PublicKey):
            public_key = key
            self._owner = None
            moduli = (key.n,)
        else:
            raise TypeError("an Encryptor takes a PublicKey or a PrivateKey")
        self.public_key = public_key
        g_rows = (public_key.max_plaintext_bits + 7) // 8
        self._g_tables = tuple(comb_table(public_key.g, g_rows, m) for m in moduli)
        self._rows = random_bits(public_key.bits) // 8
        self._h_tables: tuple[CombTable, ...] = ()
        if self._owner is not None:
            self._h_tables = tuple(comb_table(public_key.h, self._rows, m) for m in moduli)

    @property
    def is_key_owner(self) -> bool:
        """Whether this encryptor holds the factors (short randomness, CRT tables)."""
        return self._owner is not None

    def __repr__(self) -> str:
        owner = ", key owner" if self.is_key_owner else ""
        return f"Encryptor(ou, bits={self.public_key.bits}{owner})"

    def __reduce__(self) -> tuple[Callable[[PublicKey], Encryptor], tuple[PublicKey]]:
        if self.is_key_owner:
            raise TypeError(
                "a key owner's OU Encryptor holds the factors and never leaves the process"
            )
        return (Encryptor, (self.public_key,))

    def _executor(self, executor: Executor | None) -> Executor:
        if executor is None or (self.is_key_owner and not executor.in_process):
            return InlineExecutor()
        return executor

    def _obfuscator_batch(self, count: int) -> list[Mpz]:
        n = self.public_key.n
        if self._owner is None:
            units: list[Mpz] = []
            while len(units) < count:
                u = gmpy2.mpz(secrets.randbelow(int(n) - 1) + 1)
                if gmpy2.gcd(u, n) == 1:
                    units.append(u)
            return list(gmpy2.powmod_base_list(units, n, n)) if units else []
        owner, rows = self._owner, self._rows
        table_p, table_q = self._h_tables
        p2, q = owner._p2, owner._q
        randomness = os.urandom(rows * count)
        out: list[Mpz] = []
        for i in range(count):
            digits = randomness[i * rows : (i + 1) * rows]
            out.append(owner._crt(comb_power(table_p, digits, p2), comb_power(table_q, digits, q)))
        return out

    def obfuscators(self, count: int, executor: Executor | None = None) -> list[Mpz]:
        """``count`` fresh randomisers: ``h^r`` (key owner) or ``u^n`` (anyone), modulo ``n``."""
        if count < 0:
            raise ValueError("count is at least 0")
        executor = self._executor(executor)
        sizes = [len(part) for part in split_evenly(range(count), executor.workers)]
        results = executor.map(partial(_obfuscator_task, self), sizes)
        return [o for batch in results for o in batch]

    def _apply_batch(self, values: Sequence[int], obfuscators: Sequence[Mpz]) -> list[Mpz]:
        """``g^v · ρ mod n`` for signed ``v``; negative powers inverted in one batch."""
        n, limit = self.public_key.n, 1 << self.public_key.max_plaintext_bits
        powers: list[Mpz] = []
        for v in values:
            a = abs(v)
            if a >= limit:
                raise EncodingOverflowError(
                    f"a {a.bit_length()}-bit integer does not fit an OU plaintext of "
                    f"{self.public_key.max_plaintext_bits} bits: scale it down or use fewer "
                    "fractional bits"
                )
            if self._owner is None:
                powers.append(_table_power(self._g_tables[0], a, n))
            else:
                owner = self._owner
                gp = _table_power(self._g_tables[0], a, owner._p2)
                gq = _table_power(self._g_tables[1], a, owner._q)
                powers.append(owner._crt(gp, gq))
        negatives = [i for i, v in enumerate(values) if v < 0]
        inverses = batch_invert([powers[i] for i in negatives], n)
        for i, inverse in zip(negatives, inverses, strict=True):
            powers[i] = inverse
        return [x * r % n for x, r in zip(powers, obfuscators, strict=True)]

    def encrypt_raw(
        self,
        values: Sequence[int],
        executor: Executor | None = None,
        obfuscators: Sequence[Mpz] | None = None,
    ) -> list[Mpz]:
        """Encrypt signed integers with fresh randomness (or the given, never reused, values).

        Raises:
            EncodingOverflowError: If ``|v| ≥ 2**max_plaintext_bits``.
        """
        executor = self._executor(executor)
        if obfuscators is None:
            obfuscators = self.obfuscators(len(values), executor)
        elif len(obfuscators) != len(values):
            raise ValueError("one obfuscator per value")
        parts = split_evenly(range(len(values)), executor.workers)
        tasks = [([values[i] for i in part], [obfuscators[i] for i in part]) for part in parts]
        return [c for batch in executor.map(partial(_apply_task, self), tasks) for c in batch]

    def rerandomize(self, ciphertexts: Sequence[Mpz]) -> list[Mpz]:
        """Multiply each ciphertext by a fresh randomiser (same plaintext, unlinkable)."""
        n = self.public_key.n
        randomisers = self.obfuscators(len(ciphertexts))
        return [c * r % n for c, r in zip(ciphertexts, randomisers, strict=True)]


def _obfuscator_task(encryptor: Encryptor, count: int) -> list[Mpz]:
    with released_gil():
        return encryptor._obfuscator_batch(count)


def _apply_task(encryptor: Encryptor, task: tuple[list[int], list[Mpz]]) -> list[Mpz]:
    with released_gil():
        return encryptor._apply_batch(*task)


class ObfuscatorPool:
    """Precomputed randomisers of an :class:`Encryptor`; each is handed out exactly once.

    An evaluator's ``u^n`` costs a full exponentiation (about 3.5 ms at 2048 bits); a pool
    computes them ahead, in a thread the node owns (``run_refills``) or between phases
    (``refill``), as ``paillier.ObfuscatorPool`` does. Values are removed under a lock as they
    are handed out; when the pool runs short the missing ones are computed on the spot.

    Args:
        encryptor: Computes the values.
        capacity: Most values held (about 0.26 KB each at 2048 bits).
        low_water: :meth:`run_refills` tops the pool up below this (default: half).
    """

    def __init__(
        self, encryptor: Encryptor, capacity: int = 10_000, low_water: int | None = None
    ) -> None:
        if not isinstance(encryptor, Encryptor):
            raise TypeError("an OU ObfuscatorPool draws on an OU Encryptor")
        self._encryptor = encryptor
        self._pool: PrecomputedPool[Mpz] = PrecomputedPool(
            encryptor.obfuscators, capacity, low_water
        )

    @property
    def public_key(self) -> PublicKey:
        """The key whose randomisers the pool holds."""
        return self._encryptor.public_key

    @property
    def capacity(self) -> int:
        """Most values the pool holds."""
        return self._pool.capacity

    def __len__(self) -> int:
        return len(self._pool)

    def refill(self, count: int | None = None, executor: Executor | None = None) -> int:
        """Compute up to ``count`` values (default: up to capacity) and add them."""
        return self._pool.refill(count, executor)

    def obfuscators(self, count: int, executor: Executor | None = None) -> list[Mpz]:
        """Hand out ``count`` values, removing them; compute any the pool lacks on the spot."""
        return self._pool.take(count, executor)

    def encrypt_raw(self, values: Sequence[int], executor: Executor | None = None) -> list[Mpz]:
        """Encrypt signed integers with pooled randomisers: ``g^v`` from the table, one product."""
        obfuscators = self.obfuscators(len(values), executor)
        return self._encryptor.encrypt_raw(values, executor, obfuscators)

    def rerandomize(self, ciphertexts: Sequence[Mpz]) -> list[Mpz]:
        """Multiply each ciphertext by a pooled randomiser (one multiplication each)."""
        n = self.public_key.n
        randomisers = self.obfuscators(len(ciphertexts))
        return [c * r % n for c, r in zip(ciphertexts, randomisers, strict=True)]

    def run_refills(self, batch: int = 256) -> None:
        """Keep the pool above its low-water mark until :meth:`close`; run it in a node thread."""
        self._pool.run_refills(batch)

    def close(self) -> None:
        """Stop :meth:`run_refills` (after its current round); the pool stays usable."""
        self._pool.close()


#: What encrypts and re-randomises under one key: an :class:`Encryptor` or an
#: :class:`ObfuscatorPool`.
RandomnessSource: TypeAlias = Encryptor | ObfuscatorPool


# --- raw kernels on lists of gmpy2 integers ---------------------------------------------------


def add_raw(public_key: PublicKey, a: Sequence[Mpz], b: Sequence[Mpz]) -> list[Mpz]:
    """Element-wise ``a_i·b_i mod n``: encryptions of the sums.

    Raises:
        ValueError: If the lengths differ.
    """
    if len(a) != len(b):
        raise ValueError(f"cannot add {len(a)} ciphertexts to {len(b)}")
    n = public_key.n
    return [x * y % n for x, y in zip(a, b, strict=True)]


def add_plain_raw(
    public_key: PublicKey, ciphertexts: Sequence[Mpz], values: Sequence[int]
) -> list[Mpz]:
    """Element-wise ``c_i·g^(v_i) mod n``: add signed integers without randomness.

    Raises:
        ValueError: If the lengths differ.
        EncodingOverflowError: If ``|v| ≥ 2**max_plaintext_bits``.
    """
    if len(ciphertexts) != len(values):
        raise ValueError(f"cannot add {len(values)} plaintexts to {len(ciphertexts)}")
    n, limit = public_key.n, 1 << public_key.max_plaintext_bits
    magnitudes = [abs(v) for v in values]
    if any(a >= limit for a in magnitudes):
        raise EncodingOverflowError("a plaintext to add does not fit the OU plaintext space")
    rows = (max(magnitudes, default=0).bit_length() + 7) // 8
    with released_gil():
        if len(values) >= _COMB_THRESHOLD * rows:
            # One comb table of g for this call: 256 products a byte of the largest value, then
            # one product a byte of each value (masks of 94 bits: ~8 times fewer than powmod).
            table = comb_table(public_key.g, rows, n)
            powers = [_table_power(table, a, n) for a in magnitudes]
        else:
            powers = list(gmpy2.powmod_exp_list(public_key.g, magnitudes, n))
    negatives = [i for i, v in enumerate(values) if v < 0]
    inverses = batch_invert([powers[i] for i in negatives], n)
    for i, inverse in zip(negatives, inverses, strict=True):
        powers[i] = inverse
    return [c * x % n for c, x in zip(ciphertexts, powers, strict=True)]


def mul_raw(
    public_key: PublicKey,
    ciphertexts: Sequence[Mpz],
    scalars: Sequence[int] | Any,
    executor: Executor | None = None,
) -> list[Mpz]:
    """Element-wise ``c_i^{k_i} mod n``: encryptions of ``k_i·m_i``; negatives batch-inverted."""
    return mul_mod(public_key.n, ciphertexts, scalars, executor)


def dot_raw(
    public_key: PublicKey,
    ciphertexts: Sequence[Mpz],
    scalars: Sequence[int] | Any,
    executor: Executor | None = None,
) -> Mpz:
    """``Π c_i^{x_i} mod n``: an encryption of ``Σ x_i·m_i`` (Pippenger buckets)."""
    return dot_mod(public_key.n, ciphertexts, scalars, executor)


def matvec_raw(
    public_key: PublicKey,
    matrix: Sequence[Sequence[int]] | Any,
    ciphertexts: Sequence[Mpz],
    executor: Executor | None = None,
) -> list[Mpz]:
    """Row-wise ``[Π_j c_j^{M_ij} mod n]_i`` of a plaintext integer matrix with ciphertexts."""
    return matvec_mod(public_key.n, matrix, ciphertexts, executor)


def squeeze_raw(public_key: PublicKey, ciphertexts: Sequence[Mpz], width: int) -> Mpz:
    """Pack ciphertexts into one, ``Π c_i^(2^(i·width)) mod n`` (decrypts to ``Σ m_i·2^(i·w)``)."""
    return squeeze_mod(public_key.n, ciphertexts, width)


def validate_ciphertexts(public_key: PublicKey, ciphertexts: Sequence[Mpz]) -> None:
    """Check that each value is a valid ciphertext under the key: ``0 < c < n``, ``gcd(c, n) = 1``.

    The unit check costs one multiplication per ciphertext (one gcd of the product, then a
    search only on failure).

    Raises:
        CiphertextRangeError: Naming the first value outside ``(0, n)``.
        CiphertextNotUnitError: Naming the first value that shares a factor with ``n``.
    """
    n = public_key.n
    product = ONE
    for index, c in enumerate(ciphertexts):
        if not 0 < c < n:
            raise CiphertextRangeError(
                f"ciphertext {index} is outside (0, n): the peer sent a corrupt or foreign value"
            )
        product = product * c % n
    if gmpy2.gcd(product, n) != 1:
        for index, c in enumerate(ciphertexts):
            if gmpy2.gcd(c, n) != 1:
                raise CiphertextNotUnitError(
                    f"ciphertext {index} shares a factor with n: it is no valid ciphertext"
                )


def encode_ciphertexts(
    public_key: PublicKey, ciphertexts: Sequence[Mpz], frac_bits: int = 0
) -> bytes:
    """Serialise ciphertexts as the version-1 vector layout (no re-randomisation)."""
    _check_frac_bits(frac_bits)
    width = public_key.ciphertext_bytes
    fields = _VECTOR_FIELDS.pack(public_key.key_id, frac_bits, len(ciphertexts))
    return _VECTOR.pack(fields, *(gmpy2.mpz(c).to_bytes(width, "big") for c in ciphertexts))


def decode_ciphertexts(
    public_key: PublicKey, data: bytes, *, frac_bits: int, max_count: int
) -> list[Mpz]:
    """Parse and validate a received ciphertext vector.

    Raises:
        InvalidMessageError: If the layout, version, length or count is wrong.
        KeyIdMismatchError: If the vector names another key.
        ExponentMismatchError: If it carries another fixed-point exponent.
        CiphertextRangeError: If a value is outside ``(0, n)``.
        CiphertextNotUnitError: If a value shares a factor with ``n``.
    """
    body = _VECTOR.split(data, "an OU ciphertext vector")
    if len(body) < _VECTOR_FIELDS.size:
        raise InvalidMessageError("an OU ciphertext vector is too short")
    key_id, exponent, count = _VECTOR_FIELDS.unpack_from(body)
    if not hmac.compare_digest(key_id, public_key.key_id):
        raise KeyIdMismatchError(
            "the ciphertexts were made under another public key than this job's"
        )
    if exponent != frac_bits:
        raise ExponentMismatchError(
            f"the ciphertexts carry fixed-point exponent {exponent}, the protocol fixes "
            f"{frac_bits}: the peer encoded with other parameters"
        )
    if count > max_count:
        raise InvalidMessageError(f"{count} ciphertexts exceed this message's limit of {max_count}")
    width = public_key.ciphertext_bytes
    if len(body) != _VECTOR_FIELDS.size + count * width:
        raise InvalidMessageError(f"a vector of {count} ciphertexts has the wrong length")
    view = memoryview(body)[_VECTOR_FIELDS.size :]
    from_bytes = gmpy2.mpz.from_bytes
    ciphertexts = [from_bytes(view[i * width : (i + 1) * width], "big") for i in range(count)]
    validate_ciphertexts(public_key, ciphertexts)
    return ciphertexts


def _check_frac_bits(frac_bits: int) -> None:
    if not isinstance(frac_bits, int) or not 0 <= frac_bits < 1 << 16:
        raise ValueError("frac_bits is an int in [0, 65535]")


def _check_same_key(a: PublicKey, b: PublicKey) -> None:
    if a.n != b.n:
        raise ValueError("the operands are under different public keys")


def _check_source(public_key: PublicKey, source: RandomnessSource) -> None:
    if not isinstance(source, Encryptor | ObfuscatorPool):
        raise TypeError("OU ciphertexts are re-randomised by an OU Encryptor or ObfuscatorPool")
    _check_same_key(public_key, source.public_key)


@dataclass(frozen=True)
class EncryptedVector:
    """OU ciphertexts of fixed-point values under one key, with their shared exponent.

    ``fresh`` says whether every ciphertext still carries the randomness it was encrypted with; a
    computed vector is re-randomised (by the sender's own source) when serialised.

    Attributes:
        public_key: The key.
        ciphertexts: The ciphertexts, as gmpy2 integers.
        frac_bits: Fixed-point exponent of every element.
        fresh: Whether the ciphertexts are fresh encryptions.
    """

    public_key: PublicKey
    ciphertexts: tuple[Mpz, ...]
    frac_bits: int = 0
    fresh: bool = False

    def __post_init__(self) -> None:
        _check_frac_bits(self.frac_bits)

    def __len__(self) -> int:
        return len(self.ciphertexts)

    def __add__(self, other: EncryptedVector) -> EncryptedVector:
        """Element-wise sum of two vectors with the same key and exponent."""
        if not isinstance(other, EncryptedVector):
            return NotImplemented
        _check_same_key(self.public_key, other.public_key)
        if self.frac_bits != other.frac_bits:
            raise ValueError("add vectors with the same frac_bits (rescale one first)")
        sums = add_raw(self.public_key, self.ciphertexts, other.ciphertexts)
        return EncryptedVector(self.public_key, tuple(sums), self.frac_bits)

    def add_plain(self, values: Sequence[int] | Any) -> EncryptedVector:
        """Add signed integers encoded with this vector's ``frac_bits`` (no encryption needed)."""
        out = add_plain_raw(self.public_key, self.ciphertexts, as_ints(values, "values"))
        return EncryptedVector(self.public_key, tuple(out), self.frac_bits)

    def mul(
        self,
        scalars: Sequence[int] | Any,
        scalar_frac_bits: int = 0,
        executor: Executor | None = None,
    ) -> EncryptedVector:
        """Element-wise products with signed integer scalars; exponents add."""
        out = mul_raw(self.public_key, self.ciphertexts, scalars, executor)
        return EncryptedVector(self.public_key, tuple(out), self.frac_bits + scalar_frac_bits)

    def dot(
        self,
        scalars: Sequence[int] | Any,
        scalar_frac_bits: int = 0,
        executor: Executor | None = None,
    ) -> EncryptedVector:
        """The encrypted ``Σ x_i·d_i`` as a one-element vector; exponents add."""
        out = dot_raw(self.public_key, self.ciphertexts, scalars, executor)
        return EncryptedVector(self.public_key, (out,), self.frac_bits + scalar_frac_bits)

    def squeeze(self, bound: int, capacity_bits: int) -> PackedVector:
        """Pack the elements into as few ciphertexts as fit, before decrypting or sending.

        Args:
            bound: A bound on every element's magnitude that the caller guarantees from the
                computation's inputs; slots are ``bits(bound) + 1`` wide.
            capacity_bits: Bits a packed plaintext may use: ``public_key.packing_bits(D)`` when
                up to ``D`` decryptions reach a counterparty.
        """
        if capacity_bits > self.public_key.p_bits - 1:
            raise ValueError("capacity_bits exceeds the plaintext space (p_bits - 1)")
        width, per = squeeze_slots(bound, capacity_bits)
        packed = [
            squeeze_raw(self.public_key, self.ciphertexts[i : i + per], width)
            for i in range(0, len(self.ciphertexts), per)
        ]
        return PackedVector(
            self.public_key, tuple(packed), width, per, len(self), bound, self.frac_bits
        )

    def split(self, per: int) -> list[EncryptedVector]:
        """Consecutive parts of at most ``per`` ciphertexts (one part when the vector is empty)."""
        if per < 1:
            raise ValueError("per is at least 1")
        cts = self.ciphertexts
        return [
            EncryptedVector(self.public_key, cts[i : i + per], self.frac_bits, self.fresh)
            for i in range(0, max(1, len(cts)), per)
        ]

    def rerandomized(self, source: RandomnessSource) -> EncryptedVector:
        """The same plaintexts under fresh randomness from ``source``."""
        _check_source(self.public_key, source)
        out = source.rerandomize(self.ciphertexts)
        return EncryptedVector(self.public_key, tuple(out), self.frac_bits, fresh=True)

    def to_bytes(self, source: RandomnessSource) -> bytes:
        """Serialise for the wire, re-randomising first unless the vector is fresh."""
        vector = self if self.fresh else self.rerandomized(source)
        return encode_ciphertexts(self.public_key, vector.ciphertexts, self.frac_bits)

    @classmethod
    def from_bytes(
        cls, public_key: PublicKey, data: bytes, *, frac_bits: int, max_count: int
    ) -> EncryptedVector:
        """Parse and validate a received vector (see :func:`decode_ciphertexts`)."""
        cts = decode_ciphertexts(public_key, data, frac_bits=frac_bits, max_count=max_count)
        return cls(public_key, tuple(cts), frac_bits)


@dataclass(frozen=True)
class PackedVector:
    """OU ciphertexts that each hold ``slots`` signed values ``slot_bits`` apart.

    ``bound`` is the largest magnitude any slot can hold now; operations check the new bound
    before computing (:class:`~compute.errors.EncodingOverflowError` if a slot could overflow).

    Attributes:
        public_key: The key.
        ciphertexts: The packed ciphertexts.
        slot_bits: Width of a slot, sign included.
        slots: Values per ciphertext.
        count: Values in all.
        bound: Current bound on every slot's magnitude.
        frac_bits: Fixed-point exponent of every value.
        fresh: Whether the ciphertexts are fresh encryptions.
    """

    public_key: PublicKey
    ciphertexts: tuple[Mpz, ...]
    slot_bits: int
    slots: int
    count: int
    bound: int
    frac_bits: int = 0
    fresh: bool = False

    def __post_init__(self) -> None:
        _check_frac_bits(self.frac_bits)
        if self.slot_bits < 1 or self.slots < 1:
            raise ValueError("slot_bits and slots are at least 1")
        if self.slots * self.slot_bits > self.public_key.p_bits - 1:
            raise ValueError(
                f"{self.slots} slots of {self.slot_bits} bits do not fit the plaintext space of a "
                f"{self.public_key.bits}-bit OU key"
            )
        held = len(self.ciphertexts)
        if self.count < 0 or held != -(-self.count // self.slots):
            raise ValueError(f"{held} ciphertexts of {self.slots} slots cannot hold {self.count}")
        if not 0 <= self.bound <= (1 << (self.slot_bits - 1)) - 1:
            raise ValueError("bound lies in [0, 2**(slot_bits-1) - 1]")

    @property
    def plaintext_bound(self) -> int:
        """Largest magnitude of a packed plaintext whose slots all lie within ``±bound``."""
        width, slots = self.slot_bits, self.slots
        return self.bound * ((1 << (width * slots)) - 1) // ((1 << width) - 1)

    @classmethod
    def from_bytes(
        cls,
        public_key: PublicKey,
        data: bytes,
        *,
        slot_bits: int,
        slots: int,
        count: int,
        bound: int,
        frac_bits: int = 0,
    ) -> PackedVector:
        """Parse and validate received packed ciphertexts; the layout is the protocol's.

        Raises:
            InvalidMessageError: If the message has not exactly the ciphertexts ``count``
                values need.
            InvalidCiphertextError: If a ciphertext fails validation.
        """
        if slots < 1 or count < 0:
            raise ValueError("slots is at least 1 and count at least 0")
        needed = -(-count // slots)
        cts = decode_ciphertexts(public_key, data, frac_bits=frac_bits, max_count=needed)
        if len(cts) != needed:
            raise InvalidMessageError(f"{count} packed values need {needed} ciphertexts")
        return cls(public_key, tuple(cts), slot_bits, slots, count, bound, frac_bits)

    def _checked(self, bound: int, what: str) -> int:
        if bound > (1 << (self.slot_bits - 1)) - 1:
            raise EncodingOverflowError(
                f"{what} could overflow a {self.slot_bits}-bit slot (bound {bound.bit_length()} "
                "bits): pack with a layout that has more additions or scalar_bits"
            )
        return bound

    def _with(self, ciphertexts: Sequence[Mpz], bound: int, frac_bits: int) -> PackedVector:
        return PackedVector(
            self.public_key,
            tuple(ciphertexts),
            self.slot_bits,
            self.slots,
            self.count,
            bound,
            frac_bits,
        )

    def __add__(self, other: PackedVector) -> PackedVector:
        """Slot-wise sum of two packed vectors with the same layout."""
        if not isinstance(other, PackedVector):
            return NotImplemented
        _check_same_key(self.public_key, other.public_key)
        mine = (self.slot_bits, self.slots, self.count, self.frac_bits)
        if mine != (other.slot_bits, other.slots, other.count, other.frac_bits):
            raise ValueError("add packed vectors with the same layout, count and frac_bits")
        bound = self._checked(self.bound + other.bound, "this addition")
        sums = add_raw(self.public_key, self.ciphertexts, other.ciphertexts)
        return self._with(sums, bound, self.frac_bits)

    def mul_scalar(self, scalar: int, scalar_frac_bits: int = 0) -> PackedVector:
        """Multiply every slot by one signed integer."""
        (k,) = as_ints([scalar], "scalars")
        bound = self._checked(self.bound * abs(k), "this scalar multiplication")
        out = mul_raw(self.public_key, self.ciphertexts, [k] * len(self.ciphertexts))
        return self._with(out, bound, self.frac_bits + scalar_frac_bits)

    def to_bytes(self, source: RandomnessSource) -> bytes:
        """Serialise the ciphertexts, re-randomising first unless fresh (layout: the protocol's)."""
        _check_source(self.public_key, source)
        cts = self.ciphertexts if self.fresh else tuple(source.rerandomize(self.ciphertexts))
        return encode_ciphertexts(self.public_key, cts, self.frac_bits)


def encrypt(
    source: RandomnessSource,
    values: Sequence[int] | Any,
    *,
    frac_bits: int = 0,
    executor: Executor | None = None,
) -> EncryptedVector:
    """Encrypt signed integers (fixed-point encoded with ``frac_bits``), one per ciphertext.

    Raises:
        EncodingOverflowError: If ``|v| ≥ 2**max_plaintext_bits``.

    >>> public, private = generate_keypair(2048)
    >>> vector = encrypt(Encryptor(public), [3, -4])
    >>> decrypt(private, vector.dot([2, 1])), decrypt(private, vector + vector)
    ([2], [6, -8])
    """
    cts = source.encrypt_raw(as_ints(values, "values"), executor)
    return EncryptedVector(source.public_key, tuple(cts), frac_bits, fresh=True)


def encrypt_packed(
    source: RandomnessSource,
    values: Sequence[int] | Any,
    layout: PackingLayout,
    capacity_bits: int,
    *,
    frac_bits: int = 0,
    executor: Executor | None = None,
) -> PackedVector:
    """Pack signed integers by ``layout`` into plaintexts of ``capacity_bits`` bits and encrypt.

    Raises:
        EncodingOverflowError: If a value exceeds the layout (checked before packing) or no slot
            fits ``capacity_bits``.
    """
    if capacity_bits > source.public_key.p_bits - 1:
        raise ValueError("capacity_bits exceeds the plaintext space (p_bits - 1)")
    ints = as_ints(values, "values")
    layout.check_values(ints)
    per = layout.slots_within(capacity_bits)
    cts = source.encrypt_raw(pack_signed(ints, layout.slot_bits, per), executor)
    return PackedVector(
        source.public_key,
        tuple(cts),
        layout.slot_bits,
        per,
        len(ints),
        layout.value_bound,
        frac_bits,
        fresh=True,
    )


def _check_owner(private_key: PrivateKey, public_key: PublicKey) -> None:
    if not isinstance(private_key, PrivateKey):
        raise TypeError("decryption needs an OU PrivateKey")
    if private_key.public_key.n != public_key.n:
        raise ValueError("the ciphertexts are under another key than this private key's")


def decrypt(
    private_key: PrivateKey, vector: EncryptedVector, executor: Executor | None = None
) -> list[int]:
    """Decrypt to signed integers for the key owner's own use (nothing reaches a peer).

    Values that a counterparty will see go through :class:`DecryptionService` instead.

    Raises:
        EncodingOverflowError: If a value overflowed ``±2**max_plaintext_bits``.
    """
    _check_owner(private_key, vector.public_key)
    values = private_key._lift(private_key.decrypt_raw(vector.ciphertexts, executor))
    limit = 1 << vector.public_key.max_plaintext_bits
    if any(abs(v) >= limit for v in values):
        raise EncodingOverflowError(
            "the decrypted value overflowed the OU plaintext space: the computation summed or "
            "scaled values beyond it; use fewer fractional bits or smaller scalars"
        )
    return values


def decrypt_packed(
    private_key: PrivateKey, packed: PackedVector, executor: Executor | None = None
) -> list[int]:
    """Decrypt packed ciphertexts for the key owner's own use and return the ``count`` values.

    Raises:
        EncodingOverflowError: If a plaintext holds bits beyond its slots.
    """
    _check_owner(private_key, packed.public_key)
    residues = private_key.decrypt_raw(packed.ciphertexts, executor)
    return unpack_slots(residues, packed.slot_bits, packed.slots, private_key._p, packed.count)


def matvec(
    matrix: Sequence[Sequence[int]] | Any,
    vector: EncryptedVector,
    matrix_frac_bits: int = 0,
    executor: Executor | None = None,
) -> EncryptedVector:
    """Encrypted ``M·d`` for a plaintext integer matrix ``M`` (one dot product per row)."""
    out = matvec_raw(vector.public_key, matrix, vector.ciphertexts, executor)
    return EncryptedVector(vector.public_key, tuple(out), vector.frac_bits + matrix_frac_bits)


class DecryptionService:
    """The key owner's decryptions that reach a counterparty, guarded against OU's CCA.

    Decrypting a chosen ``g^M`` with ``M ≥ p`` would hand the peer ``M mod p`` and with it the
    factor ``p = gcd(M - (M mod p), n)``. The service releases a plaintext only if its centred
    value lies within the range the protocol declares, ``±bound``, and the range leaves at least
    ``RANGE_SIGMA + ⌈log2(max_decryptions)⌉`` bits of headroom below ``p`` (checked against the
    real ``p`` before decrypting): a ciphertext that the peer chose without knowing ``p`` passes
    with probability at most ``2^-RANGE_SIGMA`` over all the key's decryptions. The first
    violation raises :class:`DecryptionRangeError` and retires the key: every later call raises
    :class:`KeyRetiredError`, and nothing of the offending batch is released.

    Args:
        private_key: The key.
        max_decryptions: Most ciphertexts this key will ever decrypt for a counterparty (the
            protocol's bound); a decryption beyond it retires the key.
        used: Decryptions already made (a resumed job).
    """

    def __init__(self, private_key: PrivateKey, max_decryptions: int, used: int = 0) -> None:
        if not isinstance(private_key, PrivateKey):
            raise TypeError("a DecryptionService holds an OU PrivateKey")
        if max_decryptions < 1 or not 0 <= used <= max_decryptions:
            raise ValueError("max_decryptions is at least 1 and used lies in [0, max_decryptions]")
        self._key = private_key
        self._max = max_decryptions
        self._used = used
        self._retired = False

    @property
    def headroom_bits(self) -> int:
        """Bits of headroom a declared range must leave below ``p``."""
        return RANGE_SIGMA + _ceil_log2(self._max)

    @property
    def retired(self) -> bool:
        """Whether the key was retired (it then decrypts nothing more)."""
        return self._retired

    @property
    def used(self) -> int:
        """Decryptions made so far."""
        return self._used

    def __reduce__(self) -> NoReturn:
        raise TypeError("a DecryptionService holds a private key and never leaves the process")

    def _admit(self, public_key: PublicKey, bound: int, count: int) -> None:
        _check_owner(self._key, public_key)
        if self._retired:
            raise KeyRetiredError(
                "this job's OU key was retired after an out-of-range decryption or its "
                "decryption limit; it decrypts nothing more: run the job again with a fresh key"
            )
        if bound < 0:
            raise ValueError("bound is a magnitude, at least 0")
        room = self._key.plaintext_bits - 1 - self.headroom_bits
        if (2 * bound + 1).bit_length() > room:
            raise EncodingOverflowError(
                f"a declared range of ±2^{bound.bit_length()} leaves less than "
                f"{self.headroom_bits} bits of headroom below p: pack fewer slots "
                "(use public_key.packing_bits)"
            )
        if self._used + count > self._max:
            self._retired = True
            raise DecryptionLimitError(
                f"more than the {self._max} decryptions the protocol declared for this OU key: "
                "the key is retired"
            )

    def _release(self, values: list[int], bound: int) -> list[int]:
        for value in values:
            if abs(value) > bound:
                self._retired = True
                raise DecryptionRangeError(
                    "a peer's ciphertext decrypted outside the protocol's range, as a chosen "
                    "ciphertext would: nothing was released, the key is retired and the job "
                    "aborted"
                )
        return values

    def decrypt(
        self, vector: EncryptedVector, bound: int, executor: Executor | None = None
    ) -> list[int]:
        """Decrypt values the protocol bounds by ``±bound``; release them only if all are within.

        Raises:
            KeyRetiredError: If the key was retired before (a :class:`DecryptionLimitError` if
                this call exceeds the declared number of decryptions).
            DecryptionRangeError: If a value is outside ``±bound`` (the key is then retired).
            EncodingOverflowError: If ``±bound`` leaves too little headroom below ``p``.
        """
        self._admit(vector.public_key, bound, len(vector))
        self._used += len(vector)
        residues = self._key.decrypt_raw(vector.ciphertexts, executor)
        return self._release(self._key._lift(residues), bound)

    def decrypt_packed(self, packed: PackedVector, executor: Executor | None = None) -> list[int]:
        """Decrypt packed values; release them only if every packed plaintext is in its range.

        The range of a packed plaintext is :attr:`PackedVector.plaintext_bound` (every slot
        within ``±bound``), derived from the layout the protocol fixes, never from the sender.

        Raises:
            KeyRetiredError: As :meth:`decrypt`.
            DecryptionRangeError: As :meth:`decrypt`.
            EncodingOverflowError: As :meth:`decrypt`.
        """
        bound = packed.plaintext_bound
        self._admit(packed.public_key, bound, len(packed.ciphertexts))
        self._used += len(packed.ciphertexts)
        residues = self._key.decrypt_raw(packed.ciphertexts, executor)
        released = self._release(self._key._lift(residues), bound)
        p = self._key._p
        residues = [v % p for v in released]
        return unpack_slots(residues, packed.slot_bits, packed.slots, p, packed.count)
