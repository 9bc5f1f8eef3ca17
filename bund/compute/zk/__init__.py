"""Zero-knowledge proofs for Paillier keys and ciphertexts, after CGGMP21, made non-interactive.

What an evaluator needs before it computes on a model holder's encrypted weights and returns an
encrypted result (the output-privacy problem: the result must tell the model holder nothing
beyond its value):

- :mod:`~bund.compute.zk.mod` — Π^mod (CGGMP21 Fig. 16): the model holder's modulus is a
  Paillier–Blum modulus, ``N = p·q``, ``p ≡ q ≡ 3 (mod 4)``, ``gcd(N, φ(N)) = 1``. The evaluator
  verifies it before using the key.
- :mod:`~bund.compute.zk.prm` — ring-Pedersen parameters ``(N̂, s, t)`` that the evaluator makes
  from safe primes, and Π^prm (Fig. 17): ``s ∈ <t>``, which the model holder verifies before
  committing to anything under them.
- :mod:`~bund.compute.zk.enc` — Π^enc (Fig. 14 without the elliptic curve): a ciphertext under
  the model holder's own key encrypts ``k`` with ``|k| ≤ 2^ℓ``; the evaluator learns only
  ``|k| ≤ 2^(ℓ+ε+1)`` (the slack).
- :mod:`~bund.compute.zk.randomness` — ``check_unit`` for every received ciphertext, and
  re-randomisation by ``r^N`` with the evaluator's own full randomness instead of the key
  owner's DJN base ``h_s``.
- :mod:`~bund.compute.zk.transcript` — the Fiat–Shamir transcript every proof hashes its
  challenges from: bound to the modulus, the key id, the caller's context (job id, role) and
  every first message.

Source: R. Canetti, R. Gennaro, S. Goldfeder, N. Makriyannis, U. Peled, *UC Non-Interactive,
Proactive, Threshold ECDSA with Identifiable Aborts*, ACM CCS 2020, ePrint 2021/060. Pure
computation: randomness from ``secrets`` only, no network, disk or clock.
"""
