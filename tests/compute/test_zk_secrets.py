"""No secret reaches a proof's encoding: p, q, φ, λ, N^-1 mod φ, the plaintext k and ρ.

Each secret is searched in every encoding as big-endian bytes (minimal and at the widths the
layouts use) and as hex (in the bytes, and nibble-aligned in the encoding's own hex).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import gmpy2
import pytest

from bund.compute import insecure
from bund.compute import paillier as pl
from bund.compute.zk import enc, mod, prm
from bund.compute.zk.transcript import make_context

CONTEXT = make_context("job-7", "model-holder")


@pytest.fixture(autouse=True)
def _small_keys_allowed() -> Iterator[None]:
    insecure.enable_insecure_test_parameters()
    yield


def _assert_absent(encoding: bytes, secret: int, name: str) -> None:
    secret = int(secret)
    assert secret.bit_length() >= 56, f"{name} is too small to search for"
    minimal = (secret.bit_length() + 7) // 8
    as_hex = encoding.hex()
    for width in {minimal, minimal + 1, 32, 64, 128, 256, 512}:
        if width >= minimal:
            assert secret.to_bytes(width, "big") not in encoding, f"{name} found ({width} bytes)"
    text = format(secret, "x")
    assert text not in as_hex, f"{name} found as hex"
    for case in (text, text.upper()):
        assert case.encode() not in encoding, f"{name} found as hex text"


def _private_values(private: pl.PrivateKey) -> dict[str, int]:
    p, q = int(private._p), int(private._q)
    phi = (p - 1) * (q - 1)
    return {"p": p, "q": q, "phi": phi, "N^-1 mod phi": int(gmpy2.invert(p * q, phi))}


@pytest.mark.parametrize("bits", [512, 1024])
def test_no_secret_in_any_proof(bits: int) -> None:
    public, private = pl.generate_keypair(bits)
    ring = prm.generate_ring_pedersen(bits)
    k = secrets.randbits(63) | 1 << 62
    rho = gmpy2.mpz(secrets.randbelow(int(public.n) - 2) + 2)
    ciphertext = (1 + k * public.n) * gmpy2.powmod(rho, public.n, public.n_square) % public.n_square

    mod_bytes = mod.prove_mod(private, CONTEXT).to_bytes()
    prm_bytes = prm.prove_prm(ring, CONTEXT).to_bytes() + ring.params.to_bytes()
    enc_proof = enc.prove_enc(private, ciphertext, ring.params, CONTEXT)
    enc_bytes = enc_proof.to_bytes()
    enc.verify_enc(public, ciphertext, ring.params, enc_proof, CONTEXT)

    paillier_secrets = _private_values(private)
    for name, value in paillier_secrets.items():
        for encoding in (mod_bytes, enc_bytes, public.to_bytes()):
            _assert_absent(encoding, value, name)
    ring_secrets = {
        "p̂": ring._p,
        "q̂": ring._q,
        "λ": ring._lam,
        "φ(N̂)": ring._phi,
    }
    for name, value in ring_secrets.items():
        for encoding in (prm_bytes, enc_bytes):
            _assert_absent(encoding, value, name)
    for name, value in (("k", k), ("-k mod N", public.n - k), ("ρ", rho)):
        _assert_absent(enc_bytes, value, name)


def test_the_search_finds_what_is_there() -> None:
    """The check above is not vacuous: a value placed in an encoding is found."""
    value = secrets.randbits(200) | 1 << 199
    encoding = b"\x00" * 10 + value.to_bytes(64, "big") + b"\x07"
    with pytest.raises(AssertionError, match="found"):
        _assert_absent(encoding, value, "planted")
    with pytest.raises(AssertionError, match="found as hex"):
        _assert_absent(b"\x01" + (value << 4).to_bytes(40, "big"), value, "shifted")
