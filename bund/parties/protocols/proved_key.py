"""A key owner's public key with the proof that its modulus is well formed; received verified.

Every protocol in which one party computes on ciphertexts under another party's Paillier key
(the vertical protocols: the bank's key, the providers' products) needs the same two steps, so
they live here (``docs/paillier.md``, "Keys an evaluator did not make"):

- the key owner (:func:`send_proved_key`) sends its public key with Π^mod
  (``bund.compute.zk.mod``: a Paillier–Blum modulus with ``gcd(N, φ(N)) = 1``), whose
  Fiat–Shamir challenge is bound to the modulus, its key id and :func:`key_context` (the job id,
  the protocol, the owner and the message tag), so a proof made for one job or key verifies for
  no other;
- the evaluator (:func:`recv_proved_key`) parses and validates the key, verifies the proof before
  it uses the key for anything, and then computes with its own full randomness
  (``HePublicKey.encryptor()``: ``r^N`` with ``r`` uniform in ``Z*_N``, never the owner's
  ``h_s``); the engine refuses every received ciphertext that is not a unit below ``N²``.

Under Okamoto–Uchiyama no such proof exists (``docs/ou.md``): the message carries none, and a
protocol runs OU only where its ``trusts`` hook made the evaluator's policy trust the key owner.

Layout ``BPKM`` version 1 (big-endian): ``b"BPKM" | 1 | key length:u32 | key | proof
length:u32 | proof`` (proof length 0 under OU). About 42 KB for a 2048-bit Paillier key with
Π^mod (775 bytes of key, 41 KB of proof).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from bund.compute import he
from bund.compute.errors import InvalidMessageError, ProofError
from bund.compute.layout import Header
from bund.compute.zk.transcript import make_context
from bund.parties.jobs import JobContext, JobSpec

#: Largest key message accepted (a Π^mod proof of an 8192-bit modulus is about 0.5 MB).
MAX_KEY_MESSAGE_BYTES = 2 << 20

_KEY_MESSAGE = Header(b"BPKM", 1)
_LENGTH = struct.Struct(">I")
_DOMAIN = "bund/proved-key/v1"


def key_context(spec: JobSpec, owner: str, tag: str) -> bytes:
    """The Fiat–Shamir context of ``owner``'s key proof sent under ``tag`` in ``spec``'s job."""
    return make_context(_DOMAIN, spec.job_id, spec.protocol, owner, tag)


def encode_key_message(public_key: bytes, proof: bytes) -> bytes:
    """``BPKM``: a public key's wire form and its proof (empty where the scheme has none)."""
    return _KEY_MESSAGE.pack(
        _LENGTH.pack(len(public_key)), public_key, _LENGTH.pack(len(proof)), proof
    )


def decode_key_message(data: bytes) -> tuple[bytes, bytes]:
    """The public key's wire form and the proof of a ``BPKM`` message.

    Raises:
        InvalidMessageError: If the layout, a length or the size is wrong.
    """
    if len(data) > MAX_KEY_MESSAGE_BYTES:
        raise InvalidMessageError(f"a key message is over {MAX_KEY_MESSAGE_BYTES} bytes")
    view = memoryview(_KEY_MESSAGE.split(data, "a proved key message"))
    parts: list[bytes] = []
    for _ in range(2):
        if len(view) < _LENGTH.size:
            raise InvalidMessageError("a proved key message is truncated")
        (size,) = _LENGTH.unpack_from(view)
        if size > len(view) - _LENGTH.size:
            raise InvalidMessageError("a proved key message is truncated")
        parts.append(bytes(view[_LENGTH.size : _LENGTH.size + size]))
        view = view[_LENGTH.size + size :]
    if len(view):
        raise InvalidMessageError("a proved key message has trailing bytes")
    return parts[0], parts[1]


def _state_name(tag: str) -> str:
    return "proved-key." + tag.replace("/", ".")


def send_proved_key(
    ctx: JobContext, secret: he.HeSecretKey, peers: Sequence[str], tag: str
) -> None:
    """Send this key owner's public key, with its modulus proof, to every one of ``peers``.

    The message is saved before it is first sent (write-ahead), so a resumed owner re-sends the
    same bytes (a new proof would differ: the prover's ``w`` is random).
    """
    message = ctx.load_state(_state_name(tag))
    if message is None:
        proof = b""
        if he.create_scheme(secret.public_key.scheme).proves_modulus:
            proof = secret.prove_modulus(key_context(ctx.spec, ctx.party, tag))
        message = encode_key_message(secret.public_key.to_bytes(), proof)
        ctx.save_state(_state_name(tag), message)
    for peer in peers:
        ctx.send(peer, tag, message)


def recv_proved_key(ctx: JobContext, scheme: he.HeScheme, owner: str, tag: str) -> he.HePublicKey:
    """Receive ``owner``'s public key of ``scheme`` and verify its proof before returning it.

    Nothing may be computed or sent under the key before this returns. Under a scheme with no
    proof (OU) the key is validated only: call it there only where the protocol's ``trusts``
    hook made this node's policy trust ``owner`` (checked at admission).

    Raises:
        InvalidMessageError: If the message is malformed, or carries a proof the scheme has not.
        InvalidKeyError: If the key fails validation (size, structure, base).
        ProofError: If the proof is missing or does not verify: refuse the key.
    """
    key, proof = decode_key_message(ctx.recv(owner, tag))
    public = scheme.public_key_from_bytes(key)
    if not scheme.proves_modulus:
        if proof:
            raise InvalidMessageError(
                f"{owner} sent a proof with a {scheme.name} key, which has none"
            )
        return public
    if not proof:
        raise ProofError(
            f"{owner} sent its {scheme.name} key without the proof that its modulus is well "
            "formed (Π^mod): the key is refused and nothing is computed under it"
        )
    public.verify_modulus(proof, key_context(ctx.spec, owner, tag))
    return public
