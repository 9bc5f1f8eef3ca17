"""The thin CKKS wrapper: secret vs public contexts, vector operations, serialisation."""

from __future__ import annotations

import pickle

import pytest

from bund.compute.ckks import CkksContext, CkksParameters


@pytest.fixture(scope="module")
def secret() -> CkksContext:
    return CkksContext.create(CkksParameters())


def _close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(abs(x - y) < 1e-3 for x, y in zip(a, b, strict=True))


def test_operations(secret: CkksContext) -> None:
    v = secret.encrypt([1.0, 2.0, 3.0])
    w = secret.encrypt([0.5, -1.0, 2.0])
    assert len(v) == 3
    assert _close((v + w).decrypt(), [1.5, 1.0, 5.0])
    assert _close((v * w).decrypt(), [0.5, -2.0, 6.0])
    assert _close((v * 2.0 + [1.0, 1.0, 1.0]).decrypt(), [3.0, 5.0, 7.0])
    assert _close(v.dot(w).decrypt(), [4.5])
    assert _close(v.sum().decrypt(), [6.0])
    assert _close(v.rotate(1).decrypt(), [2.0, 3.0, 1.0])


def test_public_context_cannot_decrypt_and_secret_never_serialises(secret: CkksContext) -> None:
    assert secret.is_private
    public = secret.make_public()
    assert not public.is_private and secret.is_private
    for data in (secret.serialize(), public.serialize(galois_keys=False)):
        assert not CkksContext.load(data).is_private
    received = CkksContext.load(public.serialize(galois_keys=False))
    vector = received.encrypt([4.0, 5.0])
    with pytest.raises(ValueError, match="secret context"):
        vector.decrypt()
    assert _close(secret.vector_from_bytes(vector.serialize()).decrypt(), [4.0, 5.0])
    with pytest.raises(ValueError, match="galois"):
        vector.rotate(1)
    with pytest.raises(TypeError):
        pickle.dumps(secret)


def test_parameters() -> None:
    assert CkksParameters.for_degree(16384).slots == 8192
    with pytest.raises(ValueError):
        CkksParameters(poly_modulus_degree=4096)
    with pytest.raises(ValueError):
        CkksParameters.for_degree(1024)
    with pytest.raises(ValueError):
        CkksParameters(global_scale_bits=70)


def test_too_many_values(secret: CkksContext) -> None:
    with pytest.raises(ValueError, match="4096"):
        secret.encrypt([0.0] * 4097)
