"""The mask kernel, and the mask vectors of both secure-aggregation modules pinned to known values.

Every expected value below was captured from ``pairwise_masks`` and ``dropout_secagg`` as they
stood before they shared one mask kernel (``bund.compute.dp.masks``); a mask that changes would no
longer cancel against a peer running the other version, so any change fails here first.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from bund.compute.dp import dropout_secagg as sa
from bund.compute.dp import masks
from bund.compute.dp import pairwise_masks as pm
from bund.compute.errors import InvalidKeyError


def _masking_key(byte: int) -> pm.MaskingKey:
    return pm.MaskingKey(X25519PrivateKey.from_private_bytes(bytes([byte]) * 32))


KA, KB, KC = _masking_key(1), _masking_key(2), _masking_key(3)
PUBLIC = {"a": KA.public_bytes(), "b": KB.public_bytes(), "c": KC.public_bytes()}
CONTEXT = b"job/round-1"


def test_pairwise_pair_mask_is_pinned() -> None:
    ab = pm.pair_mask(KA, "a", "b", PUBLIC["b"], b"job", 6)
    assert ab.dtype == np.uint64
    assert ab.tolist() == [
        6189849541343815860,
        8952500556290338899,
        17203150667498172650,
        13589600864995184924,
        9778281028788444861,
        16651584675165506113,
    ]
    assert pm.pair_mask(KB, "b", "a", PUBLIC["a"], b"job", 6).tolist() == ab.tolist()
    long = pm.pair_mask(KA, "a", "b", PUBLIC["b"], b"job", 4096)
    assert hashlib.sha256(long.tobytes()).hexdigest() == (
        "dec6a71d72190034c25d036b42c3fcf3c3c72af05c53318c9bb4b86c6947be3a"
    )


def test_pairwise_masked_vector_is_pinned() -> None:
    assert pm.mask_vector([5, -2, 0], KC, "c", PUBLIC, b"job").tolist() == [
        16396371093528114305,
        2838376939504308127,
        15350975638040977911,
    ]


def test_secagg_expansion_self_mask_and_drbg_are_pinned() -> None:
    assert sa.expand_mask(bytes(range(32)), 4).tolist() == [
        7645359380336737593,
        5281276197874154893,
        14729830432180286858,
        10530800043416210610,
    ]
    assert sa._self_mask(bytes(32), b"ctx", 4).tolist() == [
        11038998237991802290,
        8206965515725419447,
        11200487607177490095,
        1935311170801525861,
    ]
    assert sa.Drbg(bytes(range(32))).read(40).hex() == (
        "39fd2b7dd9c5196a8dbd0377b8dc4a498a35d86fbcde6accb2cc7d4cd8ea24922b23cce7a26023ab"
    )


def test_secagg_round_messages_are_pinned() -> None:
    clients = {i: sa.RoundSecrets.from_seed(bytes([i]) * 32) for i in (1, 2, 3)}
    roster = {i: c.advertised(CONTEXT) for i, c in clients.items()}
    assert sa.encode_advertised(roster[1]).hex() == (
        "4253474b010000006106c36af00af1effaf221a16445d2fde866550cb215357cde9a270719455b50908bbdfa"
        "12006fc6cfae0196d0f9adac939751e432947841124c573f1ea5183d6faa2dbc63bea4ec9ef9ad46302c0472"
        "3b60a5bd67c440c394bad6eb9659bb53"
    )
    boxes = sa.encode_boxes(clients[1].share(1, roster, 2, CONTEXT))
    assert hashlib.sha256(boxes).hexdigest() == (
        "a602e7fbadffe5f9a1978ab1296f43b5a68e8dd0dd3126764ccc5e85cb8e2b8d"
    )
    masked = {i: c.mask(i, [10 * i, -i, 0], roster, CONTEXT) for i, c in clients.items()}
    assert masked[1].tolist() == [
        18345417544295291647,
        5751055464912289428,
        13837710521143870602,
    ]
    assert masked[2].tolist() == [1691744521374237665, 6724385101735799138, 4613727532842142434]
    assert masked[3].tolist() == [
        14583861391941252867,
        11692490875094122436,
        10304350578247800603,
    ]
    long = clients[2].mask(2, np.zeros(5000, dtype=np.int64), roster, CONTEXT)
    assert hashlib.sha256(long.tobytes()).hexdigest() == (
        "b5e508948d93f704c1dae436d986f4a78bb3bd5d23bdb3885e44af856ed52494"
    )


def _secret(byte: int) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(bytes([byte]) * 32)


def test_the_kernel_makes_both_modules_masks_from_their_domain_separation() -> None:
    shared = masks.agree(_secret(1), PUBLIC["b"], "b's")
    info = b"bund/secure-agg/v1/mask\x00" + b"\x00\x01a" + b"\x00\x01b"
    pairwise = masks.derive_mask(shared, 6, salt=b"job", info=info)
    assert pairwise.tolist() == pm.pair_mask(KA, "a", "b", PUBLIC["b"], b"job", 6).tolist()
    self_mask = masks.derive_mask(bytes(32), 4, salt=b"ctx", info=b"bund/secagg/v1/self")
    assert self_mask.tolist() == sa._self_mask(bytes(32), b"ctx", 4).tolist()
    words = masks.keystream_words(bytes(range(32)), 4)
    assert (
        words.dtype == np.uint64 and words.tolist() == sa.expand_mask(bytes(range(32)), 4).tolist()
    )
    assert masks.keystream(bytes(range(32)), 40) == sa.Drbg(bytes(range(32))).read(40)


def test_salt_and_info_separate_masks_of_the_same_secret() -> None:
    shared = masks.agree(_secret(1), PUBLIC["b"], "b's")
    base = masks.derive_mask(shared, 8, salt=b"job", info=b"x/pair")
    assert base.tolist() == masks.derive_mask(shared, 8, salt=b"job", info=b"x/pair").tolist()
    for other in (
        masks.derive_mask(shared, 8, salt=b"job2", info=b"x/pair"),
        masks.derive_mask(shared, 8, salt=b"job", info=b"x/self"),
        masks.derive_mask(bytes(32), 8, salt=b"job", info=b"x/pair"),
    ):
        assert not np.any(other == base)
    assert masks.derive_mask(shared, 3, salt=b"job", info=b"x/pair").tolist() == base[:3].tolist()


def test_the_kernel_refuses_a_low_order_key_and_a_length_out_of_range() -> None:
    with pytest.raises(
        InvalidKeyError, match="^client 3's public key is malformed or of low order"
    ):
        masks.agree(_secret(1), bytes(32), "client 3's")
    with pytest.raises(InvalidKeyError, match="low order"):
        masks.agree(_secret(1), b"short", "client 3's")
    assert len(masks.keystream_words(bytes(32), 0)) == 0
    for length in (-1, masks.MAX_WORDS + 1):
        with pytest.raises(ValueError, match="length"):
            masks.derive_mask(bytes(32), length, salt=b"", info=b"")
