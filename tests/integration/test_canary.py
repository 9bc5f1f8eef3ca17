"""The canary test of issue 9: planted ids and values, and every secret key, stay with their owner.

Seven in-process nodes (bank, tax, registry, three hospitals, insurer) run every registered
protocol once over mTLS: psi, psi_multi, woe_iv, vertical_lr, vertical_score,
vertical_secureboost, vertical_tree_score and a serving_contract (one request, then its total
limit ends it) between the bank and its providers, psi_unbalanced (a labeled setup and a query)
between the registry and the bank; dp_stats, fed_dp_sgd, ckks_scoring, paillier_scoring and
cox_ph between the hospitals and the insurer. Their datasets carry canaries:

* ids that only their owner holds: bank-only borrowers and applicants, tax-only filers,
  registry-only firms, and in every hospital patients recorded nowhere else;
* marked values (``7777.123457``...) in the feature columns of each party, on rows that take part
  in the computation (the canary companies present at all three finance parties, the canary
  patients), plus the insurer's model weights.

No result may contain them: the PSI result at the bank holds only ids that both parties hold (the
canary ids are each held by one party), psi_multi's at the bank and the registry only ids all
three hold, the unbalanced PSI's filter and sealed labels at the bank open only for the bank's
own applicants that the registry holds (the payload column released is ``industry_code``, which
carries no value canary: a released payload is meant to reach the bank), the vertical
protocols' results hold each party's own model part and metrics, the scores of
``vertical_score`` go to the bank (they list its own applicants), and so do the decisions of the
serving contract (its loan system's answer; it asks about applicants that every provider holds:
the ids it names are shown to the providers in the clear by design, so it names none of its own
canary ids), ``ckks_scoring`` here sends the scores to the hospital only, and dp_stats,
fed_dp_sgd and cox_ph release noisy aggregates and a model, never a record.

Every payload a node sends to another (``NodeClient._call``: deliver, propose, start, status,
resume, abort, and each answer and error coming back) is recorded with its sender and receiver,
and after the jobs every file under each node's state directory (SQLite databases with their
``-wal``/``-shm``, the sealed ``resume.db``) and each receiver's results are read. The search
looks for every canary in every encoding it could take (a value's text where no digit precedes
it: after one it is another number, such as an audit timestamp's seconds), and for every secret
key made during the
jobs (Paillier ``p``, ``q``; PSI blinding scalars; the job secrets of multi-party PSI and their
zero-sharing keys; X25519 masking keys of ``pairwise_masks``; the round seeds and keys of
``secagg``; the CKKS secret key, dumped from inside the sandbox worker) in everything every node
sends and stores, the owner's own stores included: resume states must hold secrets only sealed.
Controls show that the capture and the search do find what is legitimately there (public keys on
the wire, the intersection at the bank) and deliberately leaked copies.
"""

from __future__ import annotations

import base64
import bisect
import csv
import dataclasses
import hashlib
import io
import json
import logging
import os
import re
import secrets
import struct
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from bund.compute import insecure, mpsi
from bund.compute import paillier as pl
from bund.compute.dp import dropout_secagg, pairwise_masks
from bund.compute.errors import BundError
from bund.compute.psi import BlindingKey, create_blinding_key, hash_to_points
from bund.compute.psi_oprf import setup_context
from bund.parties import client as client_module
from bund.parties import identity
from bund.parties.data import Table
from bund.parties.demo_data import (
    generate_finance,
    generate_health,
    resident_id_check_char,
    uscc_check_char,
)
from bund.parties.follow import follow_job, in_state
from bund.parties.jobs import JobSpec, Participant
from bund.parties.lifecycle.states import JobState
from bund.parties.protocols import PROTOCOLS, ckks_scoring, paillier_scoring
from bund.parties.serving.service import Applicant
from tests.conftest import Federation, NodeFactory
from tests.integration.test_node import wait_final
from tests.integration.test_psi_scale_nodes import add_policy
from tests.integration.test_serving_nodes import contract_spec as serving_spec
from tests.protocols.test_fed_dp_sgd import spec as fed_spec
from tests.protocols.test_vertical_lr import make_spec as vlr_spec
from tests.protocols.test_vertical_lr import trust_of
from tests.protocols.test_vertical_score import score_spec
from tests.protocols.test_vertical_secureboost import make_spec as vsb_spec
from tests.protocols.test_vertical_secureboost import score_spec as tree_score_spec
from tests.protocols.test_woe_iv import make_spec as woe_spec

FINANCE_DATASETS = {
    "bank": ("loan_book", "applicants"),
    "tax": ("tax_filings",),
    "registry": ("business_registry",),
}
HOSPITALS = {"hospital-a": "hospital_a", "hospital-b": "hospital_b", "hospital-c": "hospital_c"}
#: The shortest needle: shorter ones would match by chance in megabytes of ciphertext.
MIN_NEEDLE = 8
#: Fractional bits of the fixed-point forms searched: those of compute.learn.logistic
#: (16 features, 24 scores and residuals, 40 gradients) and 32 between them.
FRAC_BITS = (16, 24, 32, 40)
#: Where the CKKS sandbox hook writes the secret keys it sees made.
CKKS_DUMP_ENV = "BUND_CANARY_CKKS_DUMP"


# --- the canaries -------------------------------------------------------------------------------


def company_id(kind: int, k: int) -> str:
    """A valid-looking USCC that no generated firm has (prefix 91310000 is no district)."""
    body = f"91310000{kind}{k:08d}"
    return body + uscc_check_char(body)


def patient_id(hospital: int, k: int) -> str:
    """A valid-looking resident id that no generated patient has."""
    body = f"999777{hospital}{k:010d}"
    return body + resident_id_check_char(body)


#: Companies present at the bank, the tax bureau and the registry: their ids are legitimately in
#: the intersection, so they are no canaries; they carry the value canaries into the computation
#: (two rows, adjacent in the aligned order, so a leaked matrix shows value pairs).
SHARED = (company_id(1, 1), company_id(1, 2))
#: Applicants of the bank that both providers hold: they carry the same value canaries into
#: ``vertical_score`` (the shared borrowers above are no applicants).
SHARED_APPLICANTS = (company_id(6, 1), company_id(6, 2))
#: Ids each held by one party only: no protocol may let them leave it.
ONLY_IDS = {
    "bank": (company_id(2, 1), company_id(2, 2), company_id(5, 1), company_id(5, 2)),
    "tax": (company_id(3, 1), company_id(3, 2)),
    "registry": (company_id(4, 1), company_id(4, 2)),
    **{h: (patient_id(i, 1), patient_id(i, 2)) for i, h in enumerate(HOSPITALS, 1)},
}
#: Value canaries: owner -> (dataset, two adjacent numeric columns, the 2x2 block of values by
#: canary row). Mid-range values with odd decimals, so no clamp, bin edge or range rounds to them.
VALUES: dict[str, tuple[str, tuple[str, str], tuple[tuple[str, str], tuple[str, str]]]] = {
    "bank": (
        "loan_book", ("loan_amount_10k_cny", "term_months"),
        (("777.654321", "13.777713"), ("812.345679", "19.313137")),
    ),
    "tax": (
        "tax_filings", ("annual_revenue_10k_cny", "vat_paid_10k_cny"),
        (("7777.123457", "194.428571"), ("6543.210987", "163.580247")),
    ),
    "registry": (
        "business_registry", ("registered_capital_10k_cny", "company_age_years"),
        (("4321.987654", "12.345679"), ("3456.789012", "17.654329")),
    ),
    **{
        h: ("patients", ("bmi_kg_m2", "hba1c_pct"), (
            (f"{26 + i}.777123", f"{5 + i}.543217"), (f"{29 + i}.246813", f"{5 + i}.318642"),
        ))
        for i, h in enumerate(HOSPITALS)
    },
}  # fmt: skip


def with_rows(table: Table, rows: Sequence[Mapping[str, str]]) -> Table:
    """``table`` with ``rows`` appended; columns a row leaves out copy the first row's."""
    columns = {c: list(table.column(c)) for c in table.columns}
    template = {c: v[0] for c, v in columns.items()}
    for row in rows:
        for c, v in columns.items():
            v.append({**template, **row}[c])
    return Table.from_columns(table.name, columns)


#: Declared outputs that carry an owner's ids to another party (in its messages and store): the
#: paillier_scoring job releases hospital-c's scores, by patient id, to the insurer (hospital-c's
#: policy says release_scores_to).
IDS_OUT = {("hospital-c", "insurer")}


def value_rows(owner: str, id_column: str, ids: Sequence[str]) -> list[dict[str, str]]:
    """The canary rows of ``owner``'s value block, keyed by ``ids``."""
    _, cols, block = VALUES[owner]
    return [{id_column: i, cols[0]: a, cols[1]: b} for i, (a, b) in zip(ids, block, strict=True)]


def finance_tables() -> dict[str, dict[str, Table]]:
    """Each finance party's datasets with its canaries planted."""
    data = generate_finance(1500, 11, applicants=200)
    cid = "company_id"
    label = [{"default_12m": "0"}, {"default_12m": "1"}]
    bank_shared = [r | y for r, y in zip(value_rows("bank", cid, SHARED), label, strict=True)]
    bank_only = [{cid: i, "default_12m": "0"} for i in ONLY_IDS["bank"][:2]]
    return {
        "bank": {
            "loan_book": with_rows(data["loan_book"], bank_shared + bank_only),
            "applicants": with_rows(
                data["applicants"],
                value_rows("bank", cid, SHARED_APPLICANTS)
                + [{cid: i} for i in ONLY_IDS["bank"][2:]],
            ),
        },
        **{
            party: {
                name: with_rows(
                    data[name],
                    value_rows(party, cid, SHARED)
                    + value_rows(party, cid, SHARED_APPLICANTS)
                    + [{cid: i} for i in ONLY_IDS[party]],
                )
            }
            for party, (name,) in (("tax", ("tax_filings",)), ("registry", ("business_registry",)))
        },
    }


def health_tables() -> dict[str, Table]:
    """Each hospital's patients, two canary patients (own ids, marked values) appended."""
    data = generate_health(80, 11)
    return {
        h: with_rows(data[t], value_rows(h, "patient_id", ONLY_IDS[h]))
        for h, t in HOSPITALS.items()
    }


# --- needles: every form a canary or a secret could take ----------------------------------------


@dataclass(frozen=True)
class Needle:
    """A byte string to look for: ``owner`` may hold it in its stores (None: nobody may)."""

    owner: str | None
    what: str
    data: bytes
    #: For a number written as text, the bytes of one character (1 UTF-8, 2 UTF-16); 0 otherwise.
    numeral: int = 0

    def stands_alone(self, data: bytes, pos: int) -> bool:
        """Whether the find at ``pos`` is this needle and not the tail of a longer number.

        A value's text after a digit is another number: ``6.318642`` in an audit timestamp's
        ``...:16.318642Z`` (its seconds and microseconds) is no copy of the value 6.318642.
        """
        if not self.numeral or pos < self.numeral:
            return True
        before = data[pos - self.numeral : pos]  # one character: a digit, then zero bytes
        return not (before[:1].isdigit() and before[1:] == bytes(self.numeral - 1))


def text_needles(owner: str | None, what: str, texts: Iterable[str]) -> list[Needle]:
    """UTF-8 (and UTF-16) forms of ``texts`` that are long enough not to match by chance."""
    out = []
    for t in dict.fromkeys(texts):
        numeral = re.fullmatch(r"\d+(\.\d+)?(e[+-]\d+)?", t) is not None
        for enc, width in (("utf-8", 1), ("utf-16-le", 2)):
            if len(t.encode(enc)) >= MIN_NEEDLE:
                data = t.encode(enc)
                out.append(Needle(owner, f"{what} as {enc} {t!r}", data, width * numeral))
    return out


def id_needles(owner: str, raw: str) -> list[Needle]:
    """An id as text (normalised by ``bund.compute.psi.normalise_ids``: its UTF-8) and hash."""
    normalised = raw.strip().encode()
    return [
        *text_needles(owner, f"id {raw}", [raw]),
        Needle(owner, f"sha256 of id {raw}", hashlib.sha256(normalised).digest()),
    ]


def value_needles(owner: str, text: str) -> list[Needle]:
    """A value as decimal text, float64 and fixed-point int64, both byte orders."""
    v = float(text)
    what = f"value {text}"
    texts = [
        text,
        repr(v),
        f"{v:e}",
        *(f"{v:.{k}f}" for k in range(2, 10)),
        *(f"{v:.{k}g}" for k in range(6, 18)),
    ]
    out = text_needles(owner, what, texts)
    for order in "<>":
        out.append(Needle(owner, f"{what} as float64 {order}", struct.pack(f"{order}d", v)))
        for bits in FRAC_BITS:
            q = round(v * (1 << bits))
            packed = struct.pack(f"{order}q", q)
            if dense(packed):  # a sparser one is searched in pairs (pair_needles)
                out.append(Needle(owner, f"{what} as {bits}-bit fixed {order}", packed))
            out += text_needles(owner, f"{what} as {bits}-bit fixed", [str(q)])
    return out


def dense(data: bytes) -> bool:
    """Whether ``data`` has at least 6 bytes other than 0x00 and 0xFF.

    A sparser binary needle (a small integer padded to 8 bytes) would match by chance in the
    zero-padded pages of a database.
    """
    return sum(b not in (0, 255) for b in data) >= 6


def pair_needles(owner: str, a: str, b: str) -> list[Needle]:
    """Two canaries adjacent in a matrix, as float32 and as fixed-point int32 and int64.

    One float32, or one small fixed-point integer, alone is too short or too sparse to search.
    """
    fa, fb = float(a), float(b)
    out = []
    for o in "<>":
        out.append(Needle(owner, f"values {a},{b} as float32 {o}", struct.pack(f"{o}ff", fa, fb)))
        for bits in FRAC_BITS:
            qa, qb = round(fa * (1 << bits)), round(fb * (1 << bits))
            for width, code in (("int32", "i"), ("int64", "q")):
                if max(qa, qb) < 1 << (8 * struct.calcsize(code) - 1):
                    packed = struct.pack(f"{o}{code}{code}", qa, qb)
                    name = f"values {a},{b} as {bits}-bit fixed {width} {o}"
                    out.append(Needle(owner, name, packed))
    return out


def data_needles() -> list[Needle]:
    """Every planted id and value, in every form, with its owner."""
    out: list[Needle] = []
    for owner, ids in ONLY_IDS.items():
        for raw in ids:
            out += id_needles(owner, raw)
    for owner, (_, _, ((a, b), (c, d))) in VALUES.items():
        for text in (a, b, c, d):
            out += value_needles(owner, text)
        for x, y in ((a, b), (c, d), (a, c), (b, d)):  # row-major and column-major neighbours
            out += pair_needles(owner, x, y)
    return out


def int_needles(what: str, value: int) -> list[Needle]:
    """A secret integer as big- and little-endian bytes, decimal and hex text."""
    n = int(value)
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return [
        Needle(None, f"{what} big-endian", raw),
        Needle(None, f"{what} little-endian", raw[::-1]),
        *text_needles(None, what, [str(n), f"{n:x}", f"{n:X}"]),
    ]


def bytes_needles(what: str, raw: bytes, x25519: bool = False) -> list[Needle]:
    """A secret byte string: as is, reversed, hex, base64 and as an integer either way.

    An X25519 private key also as its clamped scalar, the form the maths uses.
    """
    forms = [raw]
    if x25519:
        clamped = bytearray(raw)
        clamped[0] &= 248
        clamped[31] = (clamped[31] & 127) | 64
        forms.append(bytes(clamped))
    out = []
    for i, form in enumerate(forms):
        name = f"{what}{' clamped' if i else ''}"
        out += [Needle(None, name, form), Needle(None, f"{name} reversed", form[::-1])]
        out += text_needles(
            None,
            name,
            [
                form.hex(),
                form.hex().upper(),
                base64.b64encode(form).decode(),
                base64.urlsafe_b64encode(form).decode().rstrip("="),
                str(int.from_bytes(form, "big")),
                str(int.from_bytes(form, "little")),
            ],
        )
    return out


# --- recording secrets as they are made -----------------------------------------------------------


@dataclass
class Secrets:
    """Every secret key made while the hooks are on, by kind."""

    paillier: list[tuple[int, int]] = field(default_factory=list)
    blinding: list[bytes] = field(default_factory=list)
    masking: list[bytes] = field(default_factory=list)
    rounds: list[tuple[bytes, bytes, bytes]] = field(default_factory=list)
    ckks: list[tuple[bytes, bytes]] = field(default_factory=list)
    #: SEAL saves of the public keys of the CKKS secret contexts (a control, not a secret).
    ckks_public: list[bytes] = field(default_factory=list)
    #: Multi-party PSI job secrets (psi_multi, and the alignments with two or more providers).
    mpsi: list[bytes] = field(default_factory=list)

    def needles(self) -> list[Needle]:
        """The searchable forms of every recorded secret."""
        out: list[Needle] = []
        for i, (p, q) in enumerate(self.paillier):
            out += int_needles(f"paillier key {i} p", p)
            out += int_needles(f"paillier key {i} q", q)
            out += int_needles(f"paillier key {i} phi", (p - 1) * (q - 1))
        for i, raw in enumerate(self.blinding):
            out += bytes_needles(f"psi blinding scalar {i}", raw, x25519=True)
        for i, raw in enumerate(self.masking):
            out += bytes_needles(f"pairwise_masks masking key {i}", raw, x25519=True)
        for i, (seed, c, s) in enumerate(self.rounds):
            out += bytes_needles(f"secagg round seed {i}", seed)
            out += bytes_needles(f"secagg c-key {i}", c, x25519=True)
            out += bytes_needles(f"secagg s-key {i}", s, x25519=True)
        for i, (coeffs, saved) in enumerate(self.ckks):
            out += ckks_needles(f"ckks secret key {i}", coeffs, saved)
        for i, raw in enumerate(self.mpsi):
            # Its OPRF key and query blinds are BlindingKeys, recorded with the PSI scalars.
            out += bytes_needles(f"psi_multi secret {i}", raw)
            zs = mpsi_zero_sharing_key(raw)
            out += bytes_needles(f"psi_multi zero-sharing key {i}", zs, x25519=True)
        return out


def mpsi_zero_sharing_key(raw: bytes) -> bytes:
    """The X25519 private key a multi-party PSI member derives from its job secret."""
    return mpsi.MpsiSecret(raw).derive(b"zero-sharing-key")


def ckks_needles(what: str, coeffs: bytes, saved: bytes) -> list[Needle]:
    """Windows of a CKKS secret key: its NTT coefficients (u64 either order) and SEAL's save.

    SEAL compresses a saved key deterministically, and TenSEAL embeds that save in a serialised
    context, so windows of it find a key serialised either way.
    """
    words = np.frombuffer(coeffs, dtype="<u8")
    out = []
    for start in range(0, len(words) - 4, len(words) // 5):
        window = words[start : start + 4]
        out.append(Needle(None, f"{what} coefficients {start} LE", window.tobytes()))
        out.append(Needle(None, f"{what} coefficients {start} BE", window.astype(">u8").tobytes()))
    body = saved[16:]  # after SEAL's header, which every saved object shares
    for start in range(0, len(body) - 32, len(body) // 5):
        out.append(Needle(None, f"{what} saved bytes {start}", body[start : start + 32]))
    return out


#: Runs first in every CKKS sandbox worker (``sitecustomize`` on its PYTHONPATH): each secret
#: context made there also writes its secret key to the test's dump directory. Test-only.
SANDBOX_HOOK = f'''
import os
_dump = os.environ.get("{CKKS_DUMP_ENV}")
if _dump:
    import secrets
    import numpy as np
    from bund.compute import ckks as _ckks
    _create = _ckks.CkksContext.create.__func__

    def _recording_create(cls, *args, **kwargs):
        made = _create(cls, *args, **kwargs)
        if made.is_private:
            key = made._ctx.secret_key().data
            plain = key.data()
            coeffs = np.array([plain.data(i) for i in range(plain.coeff_count())], dtype="<u8")
            base = os.path.join(_dump, secrets.token_hex(8))
            key.save(base + ".seal")
            made._ctx.public_key().data.save(base + ".pub")
            with open(base + ".coeffs", "wb") as out:
                out.write(coeffs.tobytes())
        return made

    _ckks.CkksContext.create = classmethod(_recording_create)
'''


def sorted_pair(a: int, b: int) -> tuple[int, int]:
    return (a, b) if a < b else (b, a)


def keep_once(kept: list[bytes], raw: bytes) -> None:
    """Append ``raw`` to ``kept`` unless it is there already."""
    if raw not in kept:
        kept.append(raw)


def install_secret_hooks(mp: pytest.MonkeyPatch, record: Secrets) -> None:
    """Record each secret key where its class is constructed (fresh or from a resume state)."""
    lock = threading.Lock()

    def wrap(cls: type, keep: Callable[[Any, tuple[Any, ...]], None]) -> None:
        real = cls.__init__  # type: ignore[misc]

        def init(self: Any, *args: Any) -> None:
            real(self, *args)
            with lock:
                keep(self, args)

        mp.setattr(cls, "__init__", init)

    # PrivateKey orders its factors (p < q), and so does the record: p is what it exports.
    wrap(pl.PrivateKey, lambda _, a: record.paillier.append(sorted_pair(int(a[1]), int(a[2]))))
    wrap(BlindingKey, lambda _, a: record.blinding.append(a[0].private_bytes_raw()))
    wrap(pairwise_masks.MaskingKey, lambda _, a: record.masking.append(a[0].private_bytes_raw()))
    # Once per secret: a resumed party, and the needles' own derivations, make it again.
    wrap(mpsi.MpsiSecret, lambda _, a: keep_once(record.mpsi, bytes(a[0])))
    wrap(
        dropout_secagg.RoundSecrets,
        lambda s, a: record.rounds.append(
            (a[0], s._c.private_bytes_raw(), s._s.private_bytes_raw())
        ),
    )


# --- capturing what nodes send --------------------------------------------------------------------


@dataclass(frozen=True)
class Sent:
    """One payload a node sent another: a request, an answer or an error message."""

    sender: str
    receiver: str
    what: str
    data: bytes


def install_capture(mp: pytest.MonkeyPatch, sent: list[Sent]) -> None:
    """Record every request a node's client makes to another node, and what comes back.

    A client's own party is the one whose certificate it presents (a node certificate lies in
    the party's directory, an operator credential in its ``operator/``); a test's operator client
    talks to its own node (sender == receiver), which is not a node sending, and is skipped.
    """
    real_init = client_module.NodeClient.__init__
    real_call = client_module.NodeClient._call

    def init(self: Any, address: str, party: str, tls: Any, *args: Any, **kw: Any) -> None:
        real_init(self, address, party, tls, *args, **kw)
        home = Path(tls.cert).parent
        self._canary_sender = (home.parent if home.name == identity.OPERATOR_DIR else home).name

    def call(
        self: Any, service: str, method: str, request: Any, response: Any, timeout: Any = None
    ) -> Any:
        sender, receiver = self._canary_sender, self.party
        peer = sender != receiver
        if peer:
            sent.append(Sent(sender, receiver, method, request.SerializeToString()))
        try:
            out = real_call(self, service, method, request, response, timeout)
        except BundError as exc:
            if peer:
                sent.append(Sent(receiver, sender, f"{method} error", str(exc).encode()))
            raise
        if peer:
            sent.append(Sent(receiver, sender, f"{method} answer", out.SerializeToString()))
        return out

    mp.setattr(client_module.NodeClient, "__init__", init)
    mp.setattr(client_module.NodeClient, "_call", call)


# --- the search -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Haystack:
    """Bytes to search: ``kind`` "sent" (between nodes), "store" (at ``party``) or "log"."""

    kind: str
    party: str
    parts: tuple[tuple[str, bytes], ...]

    @property
    def label(self) -> str:
        return f"{self.kind} {self.party}"


def find(needles: Sequence[Needle], data: bytes) -> dict[int, int]:
    """Index of each needle found in ``data`` -> its first offset.

    One pass per byte alignment: every 8-byte window of ``data`` is looked up among the needles'
    first 8 bytes (numpy), and candidates are checked in full, so hundreds of needles cost about
    what one does.
    """
    by_prefix: dict[int, list[int]] = {}
    for i, n in enumerate(needles):
        assert len(n.data) >= MIN_NEEDLE, n.what
        by_prefix.setdefault(int.from_bytes(n.data[:MIN_NEEDLE], "little"), []).append(i)
    keys = np.array(sorted(by_prefix), dtype=np.uint64)
    found: dict[int, int] = {}
    for shift in range(MIN_NEEDLE):
        count = (len(data) - shift) // MIN_NEEDLE
        if count <= 0:
            continue
        words = np.frombuffer(data, dtype="<u8", count=count, offset=shift)
        at = np.searchsorted(keys, words).clip(0, len(keys) - 1)
        for w in np.flatnonzero(keys[at] == words):
            pos = shift + MIN_NEEDLE * int(w)
            for i in by_prefix[int(words[w])]:
                n = needles[i]
                if (
                    data.startswith(n.data, pos)
                    and n.stands_alone(data, pos)
                    and pos < found.get(i, len(data))
                ):
                    found[i] = pos
    return found


def search(needles: Sequence[Needle], hay: Haystack) -> list[tuple[Needle, str]]:
    """Each needle found in ``hay``, with the part (message or file) it was found in."""
    blob = b"\x00".join(d for _, d in hay.parts)
    starts = list(np.cumsum([0] + [len(d) + 1 for _, d in hay.parts[:-1]]))
    out = []
    for i, pos in sorted(find(needles, blob).items()):
        part = hay.parts[bisect.bisect_right(starts, pos) - 1][0]
        out.append((needles[i], part))
    return out


def forbidden(needle: Needle, hay: Haystack) -> bool:
    """Whether ``needle`` may not be in ``hay``: a canary outside its owner's stores, a secret
    anywhere (logs are searched for secrets only: in-process nodes share one log)."""
    if needle.owner is None:
        return True
    if hay.kind == "log":
        return False
    if needle.what.startswith("id ") and any(
        (hay.kind, hay.party) in (("store", to), ("sent", f"{owner}->{to}"))
        for owner, to in IDS_OUT
        if owner == needle.owner
    ):
        return False
    return not (hay.kind == "store" and hay.party == needle.owner)


# --- the federation and its jobs ------------------------------------------------------------------


@dataclass
class World:
    """What the jobs left: every payload sent, every node's stores, the secrets made."""

    jobs: dict[str, JobSpec]
    #: Jobs that only prepare one in ``jobs``: the unbalanced PSI's setup, by protocol.
    setups: dict[str, JobSpec]
    haystacks: list[Haystack]
    secrets: Secrets
    finance: dict[str, dict[str, Table]]
    health: dict[str, Table]
    model: Table

    def hay(self, kind: str, party: str) -> Haystack:
        return next(h for h in self.haystacks if h.kind == kind and h.party == party)


def read_state(dirs: Mapping[str, Path], when: str) -> dict[str, list[tuple[str, bytes]]]:
    """Every file under each node's state directory (the port file aside), named by ``when``."""
    return {
        name: [
            (f"{when} {p.relative_to(root)}", p.read_bytes())
            for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "port"
        ]
        for name, root in dirs.items()
    }


def start_nodes(
    factory: NodeFactory, model: Table
) -> tuple[dict[str, dict[str, Table]], dict[str, Table]]:
    """The seven nodes, each with its own canary-planted datasets; returns the datasets."""
    finance, health = finance_tables(), health_tables()
    for party, tables in finance.items():
        others = [p for p in finance if p != party]
        config = factory.write_config(
            party,
            allowed=others,
            tables=tables,
            trusted_for=[*trust_of(party), *secureboost_trust(party)],
        )
        if party == "registry":  # labeled unbalanced PSI releases one column to the bank
            add_policy(factory, party, ['payload_columns = ["industry_code"]'])
        factory.run(party, config)
    for h, table in health.items():
        others = [p for p in (*HOSPITALS, "insurer") if p != h]
        factory.start(
            h, allowed=others, level="restricted-personal", budget_epsilon="100",
            budget_delta="1/1000", tables={"patients": table},
            release_scores_to=[p for o, p in IDS_OUT if o == h],
        )  # fmt: skip
    factory.start("insurer", allowed=list(HOSPITALS), tables={"risk_model": model})
    return finance, health


def secureboost_trust(party: str) -> list[tuple[str, str]]:
    """SecureBoost rests on each side following it: the policies say so (the doc says why)."""
    if party == "bank":
        return [(p, "vertical_secureboost") for p in ("tax", "registry")]
    return [("bank", "vertical_secureboost"), ("bank", "vertical_tree_score")]


def unbalanced_spec(phase: str, setup_job: str | None = None) -> JobSpec:
    """Labeled unbalanced PSI of the bank's applicants against the registry, ``phase``."""
    querier = (
        Participant("bank", "querier", "applicants", {"id": "company_id"})
        if phase == "query"
        else Participant("bank", "querier")
    )
    columns = {"id": "company_id", "payload.industry": "industry_code"}
    return JobSpec(
        protocol="psi_unbalanced",
        participants=(Participant("registry", "holder", "business_registry", columns), querier),
        receivers=("bank",),
        purpose=f"canary: registered applicants ({phase})",
        requester="bank",
        params={"phase": phase, **({"setup_job": setup_job} if setup_job else {})},
    )


def run_jobs(
    factory: NodeFactory, applicants: Table
) -> tuple[dict[str, JobSpec], dict[str, JobSpec], list[tuple[str, bytes]]]:
    """Every registered protocol once, each to success; returns the specs as the nodes hold them,
    those of the jobs that prepare one (the unbalanced setup), and the serving contract's answer
    to the bank's loan system (a result it keeps no copy of).

    The health jobs run at the insurer while the finance chain runs at the bank. The serving
    contract scores the two shared applicants (``applicants`` holds the bank's features) in one
    request that spends its total limit, so it ends, succeeded.
    """
    dp = JobSpec(
        protocol="dp_stats",
        participants=(
            *(Participant(h, "contributor", "patients") for h in HOSPITALS),
            Participant("insurer", "analyst"),
        ),
        receivers=("insurer",),
        purpose="canary: survival across hospitals",
        requester="insurer",
        params={
            "kind": "survival", "column": "follow_up_days", "event": "event", "lower": "0",
            "upper": "2190", "bins": 6, "epsilon": "1/2", "min_cell": 5,
        },
    )  # fmt: skip
    cox = JobSpec(
        protocol="cox_ph",
        participants=(
            *(Participant(h, "hospital", "patients", {"time": "follow_up_days"})
              for h in HOSPITALS),
            Participant("insurer", "analyst"),
        ),
        receivers=("insurer",),
        purpose="canary: a Cox model across hospitals",
        requester="insurer",
        params={
            "features": "age,bmi_kg_m2", "upper": "2190", "bins": 6, "iterations": 2,
            "min_cell": 5, "concordance_bins": 10,
        },
    )  # fmt: skip
    fed = dataclasses.replace(fed_spec(rounds=2, noise_multiplier=1.0), job_id="")
    # Scores to the hospital only: sent to the insurer, they would carry the patient ids.
    cks = ckks_scoring.make_spec("hospital-a", "insurer", receivers=("hospital-a",))
    # Scores by patient id to the insurer: a declared output (IDS_OUT).
    pai = paillier_scoring.make_spec(
        "hospital-c", "insurer", ckks_scoring.DEMO_FEATURES, key_bits=768
    )
    psi = JobSpec(
        protocol="psi",
        participants=(
            Participant("bank", "member", "loan_book", {"id": "company_id"}),
            Participant("tax", "member", "tax_filings", {"id": "company_id"}),
        ),
        receivers=("bank",),
        purpose="canary: common borrowers",
        requester="bank",
        params={"mode": "intersection"},
    )
    psi_multi = JobSpec(
        protocol="psi_multi",
        participants=(
            Participant("bank", "leader", "loan_book", {"id": "company_id"}),
            Participant("tax", "member", "tax_filings", {"id": "company_id"}),
            Participant("registry", "member", "business_registry", {"id": "company_id"}),
        ),
        receivers=("bank", "registry"),
        purpose="canary: one cohort for three parties",
        requester="bank",
        params={"mode": "intersection"},
    )
    jobs: dict[str, tuple[str, str]] = {}
    with factory.client("insurer") as insurer, factory.client("bank") as bank:
        health_jobs = (
            ("dp_stats", dp), ("fed_dp_sgd", fed), ("ckks_scoring", cks), ("paillier_scoring", pai),
            ("cox_ph", cox),
        )  # fmt: skip
        for name, spec in health_jobs:
            jobs[name] = ("insurer", insurer.submit(spec))
        chain = (
            ("psi", psi),
            ("psi_multi", psi_multi),
            ("woe_iv", woe_spec()),
            ("vertical_lr", vlr_spec()),
        )
        for name, spec in chain:
            jobs[name] = ("bank", bank.submit(spec))
            status = wait_final(bank, jobs[name][1], timeout=240)
            assert status.state is JobState.SUCCEEDED, (name, status.error)
        jobs["vertical_score"] = ("bank", bank.submit(score_spec(jobs["vertical_lr"][1])))
        trees = vsb_spec(n_estimators=2, max_depth=2)
        jobs["vertical_secureboost"] = ("bank", bank.submit(trees))
        status = wait_final(bank, jobs["vertical_secureboost"][1], timeout=240)
        assert status.state is JobState.SUCCEEDED, ("vertical_secureboost", status.error)
        factory.wait_closed(jobs["vertical_secureboost"][1])  # the providers hold their parts
        tree_scores = tree_score_spec(jobs["vertical_secureboost"][1])
        jobs["vertical_tree_score"] = ("bank", bank.submit(tree_scores))
        setup = bank.submit(unbalanced_spec("setup"))
        status = wait_final(bank, setup, timeout=240)
        assert status.state is JobState.SUCCEEDED, ("psi_unbalanced setup", status.error)
        setups = {"psi_unbalanced": status.spec}
        factory.wait_closed(setup)
        jobs["psi_unbalanced"] = ("bank", bank.submit(unbalanced_spec("query", setup)))
        one = len(SHARED_APPLICANTS)
        contract = serving_spec(jobs["vertical_lr"][1], max_batch=one, max_total=one)
        jobs["serving_contract"] = ("bank", bank.submit(contract))
        for party in FINANCE_DATASETS:
            with factory.client(party) as c:
                status = follow_job(
                    c, jobs["serving_contract"][1], until=in_state(JobState.SERVING), timeout=240
                )
            assert status.state is JobState.SERVING, (party, status.error)
        rows = list(applicants.column("company_id"))
        features = [c for c in applicants.columns if c != "company_id"]
        scored = bank.score(
            jobs["serving_contract"][1],
            [
                Applicant(i, {c: float(applicants.column(c)[rows.index(i)]) for c in features})
                for i in SHARED_APPLICANTS
            ],
        )
    assert [d.id for d in scored.decisions] == list(SHARED_APPLICANTS)
    assert all(d.probability is not None for d in scored.decisions)  # held by both providers
    answer = json.dumps([dataclasses.asdict(d) for d in scored.decisions]).encode()
    specs = {}
    for name, (requester, job_id) in jobs.items():
        with factory.client(requester) as c:
            status = wait_final(c, job_id, timeout=240)
        assert status.state is JobState.SUCCEEDED, (name, status.error)
        specs[name] = status.spec
        factory.wait_closed(job_id)
    return specs, setups, [("serving_contract decisions", answer)]


def received_results(
    factory: NodeFactory, jobs: Mapping[str, JobSpec]
) -> dict[str, list[tuple[str, bytes]]]:
    """Each node's results as its operator reads them: summary and artifacts (a standing
    contract keeps none: its answers go to the loan system, request by request)."""
    out: dict[str, list[tuple[str, bytes]]] = {n: [] for n in factory.nodes}
    for name, spec in jobs.items():
        if PROTOCOLS[spec.protocol].standing:
            continue
        for party in spec.receivers:
            with factory.client(party) as c:
                result = c.result(spec.job_id)
            out[party].append((f"result {name} summary", json.dumps(result.summary).encode()))
            out[party] += [(f"result {name} {a}", d) for a, d in result.artifacts.items()]
    return out


@pytest.fixture(scope="module")
def world(federation: Federation, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Run every protocol once with the capture and the secret hooks on; stop the nodes."""
    root = tmp_path_factory.mktemp("canary")
    hook_dir, dump_dir = root / "hook", root / "ckks-keys"
    hook_dir.mkdir()
    dump_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(SANDBOX_HOOK, encoding="utf-8")
    sent: list[Sent] = []
    made = Secrets()
    logs = LogCapture()
    root_logger = logging.getLogger()
    level = root_logger.level
    root_logger.addHandler(logs)
    root_logger.setLevel(logging.DEBUG)
    factory = NodeFactory(federation, root / "nodes")
    with pytest.MonkeyPatch.context() as mp:
        path = os.environ.get("PYTHONPATH", "")
        mp.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(hook_dir), path) if p))
        mp.setenv(CKKS_DUMP_ENV, str(dump_dir))
        install_capture(mp, sent)
        install_secret_hooks(mp, made)
        insecure.enable_insecure_test_parameters()  # 512-bit Paillier keys: tests only
        try:
            model = ckks_scoring.make_demo_model(generate_health(80, 12)["hospital_b"])
            finance, health = start_nodes(factory, model)
            dirs = {n: node.config.state_dir for n, node in factory.nodes.items()}
            jobs, setups, answers = run_jobs(factory, finance["bank"]["applicants"])
            results = received_results(factory, jobs)
            results["bank"] += answers
            running = read_state(dirs, "running")
        finally:
            factory.stop_all()
            insecure.disable_insecure_test_parameters()
            root_logger.removeHandler(logs)
            root_logger.setLevel(level)
        stopped = read_state(dirs, "stopped")  # what a clean stop flushed (WAL checkpoints)
        for coeffs in sorted(dump_dir.glob("*.coeffs")):
            made.ckks.append((coeffs.read_bytes(), coeffs.with_suffix(".seal").read_bytes()))
            made.ckks_public.append(coeffs.with_suffix(".pub").read_bytes())
        pairs = sorted({(m.sender, m.receiver) for m in sent})
        haystacks = [
            Haystack(
                "sent",
                f"{s}->{r}",
                tuple((m.what, m.data) for m in sent if (m.sender, m.receiver) == (s, r)),
            )
            for s, r in pairs
        ]
        haystacks += [
            Haystack("store", n, tuple(running[n] + stopped[n] + results[n])) for n in dirs
        ]
        haystacks.append(Haystack("log", "all", tuple(("log", m.encode()) for m in logs.lines)))
        yield World(jobs, setups, haystacks, made, finance, health, model)


class LogCapture(logging.Handler):
    """Every log record of the in-process nodes, formatted with its traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(logging.Formatter().format(record))


# --- the tests ------------------------------------------------------------------------------------


def hash_point_needles(jobs: Mapping[str, JobSpec], setups: Mapping[str, JobSpec]) -> list[Needle]:
    """Each finance canary id hashed to the curve as each vertical or PSI job hashes it, unblinded
    (a dictionary attack would recognise it). Unbalanced PSI hashes with its setup's context."""
    contexts = {
        name: bytes.fromhex(jobs[name].digest())
        for name in ("psi", "psi_multi", "woe_iv", "vertical_lr", "vertical_score")
    }
    contexts["psi_unbalanced"] = setup_context(bytes.fromhex(setups["psi_unbalanced"].digest()))
    out = []
    for name, context in contexts.items():
        for owner in FINANCE_DATASETS:
            for raw in ONLY_IDS[owner]:
                (point,) = hash_to_points([raw.encode()], context)
                out.append(Needle(owner, f"id {raw} hashed to the curve in {name}", point))
    return out


def violations(world: World, needles: Sequence[Needle]) -> list[str]:
    """Each forbidden find: what, where."""
    return [
        f"{needle.what} (owner {needle.owner or 'nobody'}) in {hay.label}: {part}"
        for hay in world.haystacks
        for needle, part in search(needles, hay)
        if forbidden(needle, hay)
    ]


def found_in(world: World, needles: Sequence[Needle], kind: str) -> set[str]:
    """The ``what`` of each needle found in any haystack of ``kind``."""
    return {n.what for hay in world.haystacks if hay.kind == kind for n, _ in search(needles, hay)}


def test_every_job_ran_and_the_capture_holds_its_traffic(world: World) -> None:
    # Every registered protocol ran and succeeded: a new protocol must join this test.
    assert set(world.jobs) == set(PROTOCOLS), "add the new protocol's job to run_jobs"
    assert world.hay("log", "all").parts, "the nodes' log records were not captured"
    pairs = {h.party for h in world.haystacks if h.kind == "sent"}
    expected = {"bank->tax", "tax->bank", "bank->registry", "registry->bank"}
    expected |= {f"{h}->insurer" for h in HOSPITALS} | {f"insurer->{h}" for h in HOSPITALS}
    assert expected <= pairs
    methods = {what for h in world.haystacks if h.kind == "sent" for what, _ in h.parts}
    assert {"ScoreParts", "ScoreParts answer"} <= methods  # the serving contract's request
    for party in (*FINANCE_DATASETS, *HOSPITALS, "insurer"):
        names = [n for n, _ in world.hay("store", party).parts]
        assert any(n.endswith("resume.db") for n in names), names
        assert any(n.endswith("audit.db") for n in names), names
    made = world.secrets
    assert len(made.paillier) >= 2  # woe_iv's and vertical_lr's keys at the bank
    assert len(made.blinding) >= 2 + 3 * 4  # psi; three alignments with two providers each
    assert len(made.masking) >= 3 + 3 + 2  # dp_stats, cox_ph at each hospital; vertical_score
    assert len(made.rounds) >= 2 * len(HOSPITALS)  # fed_dp_sgd: each hospital, each round
    assert len(made.mpsi) >= 3 * 4  # psi_multi and three alignments, three parties each
    assert made.ckks and made.ckks_public, "the sandbox worker did not report its secret key"


def test_controls_the_search_finds_what_is_legitimately_there(world: World) -> None:
    """Public keys that the recorded secrets belong to are on the wire, and the intersection ids
    are in the bank's own store: capture, hooks and search all see real traffic."""
    made = world.secrets
    publics = [Needle(None, f"paillier n {i}", int_needles("n", p * q)[0].data)
               for i, (p, q) in enumerate(made.paillier)]  # fmt: skip
    publics += [
        Needle(None, f"masking public key {i}", public_x25519(raw))
        for i, raw in enumerate(made.masking)
    ]
    publics += [
        Needle(None, f"secagg {k}-key public {i}", public_x25519(raw))
        for i, keys in enumerate(made.rounds)
        for k, raw in zip("cs", keys[1:], strict=True)
    ]
    # Each multi-party PSI member sends the public half of its zero-sharing key to the others
    # (the leader has none): two members in each of four exchanges. One search for all of them.
    zero_sharing = [
        Needle(
            None,
            f"psi_multi zero-sharing public key {i}",
            public_x25519(mpsi_zero_sharing_key(raw)),
        )
        for i, raw in enumerate(made.mpsi)
    ]
    found = found_in(world, publics + zero_sharing, "sent")
    assert {n.what for n in publics} <= found
    assert len(found - {n.what for n in publics}) >= 2 * 4
    # The hospital sends its CKKS public key inside the public context, as SEAL saved it.
    ckks_public = [
        Needle(None, f"ckks public key {i} bytes {s}", pub[16 + s : 48 + s])
        for i, pub in enumerate(made.ckks_public)
        for s in range(0, len(pub) - 64, (len(pub) - 64) // 4)
    ]
    assert found_in(world, ckks_public, "sent") == {n.what for n in ckks_public}
    # The bank's blinded points of a shared canary id reach the tax bureau: the hash-to-curve
    # context used for the unblinded-point needles is the protocols' own.
    context = bytes.fromhex(world.jobs["psi"].digest())
    (point,) = hash_to_points([SHARED[0].encode()], context)
    blinded = [
        Needle(None, f"blinded with key {i}", blind_x25519(raw, point))
        for i, raw in enumerate(made.blinding)
    ]
    assert search(blinded, world.hay("sent", "bank->tax")) != []
    # The PSI intersection at the bank holds the shared canary companies.
    shared = [n for raw in SHARED for n in id_needles("bank", raw)]
    assert {n.what for n, _ in search(shared, world.hay("store", "bank"))} >= {
        f"id {raw} as utf-8 {raw!r}" for raw in SHARED
    }
    # The unbalanced query matched the bank's applicants that the registry holds, with a label.
    matches = dict(world.hay("store", "bank").parts)["result psi_unbalanced matches.csv"]
    rows = list(csv.DictReader(io.StringIO(matches.decode("utf-8"))))
    assert {r["id"] for r in rows} >= set(SHARED_APPLICANTS)
    assert all(r["industry"] for r in rows)


def public_x25519(raw: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(raw).public_key().public_bytes_raw()


def blind_x25519(raw: bytes, point: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(raw).exchange(
        X25519PublicKey.from_public_bytes(point)
    )


def test_no_planted_id_or_value_leaves_its_owner(world: World) -> None:
    for owner, ids in ONLY_IDS.items():  # the canaries are really planted
        tables = world.finance.get(owner) or {"patients": world.health[owner]}
        held = {
            i
            for t in tables.values()
            for c in ("company_id", "patient_id")
            if c in t.columns
            for i in t.column(c)
        }
        assert set(ids) <= held
    needles = data_needles() + hash_point_needles(world.jobs, world.setups)
    needles += model_needles(world.model)
    assert violations(world, needles) == []


def model_needles(model: Table) -> list[Needle]:
    """The insurer's model weights: the hospital learns scores only, never a weight."""
    out = []
    for text in model.column("weight"):
        v = float(text)
        out += text_needles("insurer", f"model weight {text}", [text, repr(v)])
        for o in "<>":
            packed = struct.pack(f"{o}d", v)
            if dense(packed):  # a round weight (0.5) is no fingerprint
                out.append(Needle("insurer", f"model weight {text} as float64 {o}", packed))
    return out


def test_no_secret_key_material_is_sent_or_stored_unsealed(world: World) -> None:
    assert violations(world, world.secrets.needles()) == []


def embedded(leak: bytes) -> bytes:
    """``leak`` between random bytes, as it would sit inside a message or a file."""
    return secrets.token_bytes(4099) + leak + secrets.token_bytes(4099)


def test_the_search_finds_deliberately_leaked_copies(world: World) -> None:
    """Copies made the ways code would leak them (CSV, numpy, JSON, key exports) are all found."""
    needles = data_needles()
    whats = {n.what for n in needles}
    blocks = {o: np.array(v[2], dtype=np.float64) for o, v in VALUES.items()}
    texts = [t for o, v in VALUES.items() for row in v[2] for t in row]
    leaks: dict[str, tuple[bytes, set[str]]] = {}
    for order in "<>":
        values = np.concatenate([b.ravel() for b in blocks.values()])
        leaks[f"float64 {order}"] = (
            values.astype(f"{order}f8").tobytes(),
            {f"value {t} as float64 {order}" for t in texts},
        )
        for bits in FRAC_BITS:
            fixed = np.rint(values * (1 << bits))
            rows = [(a, b) for v in VALUES.values() for a, b in v[2]]
            for width, dtype in (("int32", "i4"), ("int64", "i8")):
                if width == "int32" and fixed.max() >= 1 << 31:
                    continue
                leaks[f"fixed {bits} {width} {order}"] = (
                    fixed.astype(f"{order}{dtype}").tobytes(),
                    {f"values {a},{b} as {bits}-bit fixed {width} {order}" for a, b in rows},
                )
        for layout in ("rows", "columns"):
            matrix = b"".join(
                (b if layout == "rows" else b.T).astype(f"{order}f4").tobytes()
                for b in blocks.values()
            )
            expect = set()
            for v in VALUES.values():
                (a, b), (c, d) = v[2]
                pairs = ((a, b), (c, d)) if layout == "rows" else ((a, c), (b, d))
                expect |= {f"values {x},{y} as float32 {order}" for x, y in pairs}
            leaks[f"float32 {layout} {order}"] = (matrix, expect)
    leaks["json"] = (
        json.dumps([float(t) for t in texts]).encode(),
        {f"value {t} as utf-8 {repr(float(t))!r}" for t in texts},
    )
    every_id = [(o, i) for o, ids in ONLY_IDS.items() for i in ids]
    for owner, tables in world.finance.items():
        csv = "\n".join(",".join(t.columns) for t in tables.values())
        for table in tables.values():
            csv += "\n".join(",".join(r) for r in zip(*table.data.values(), strict=True))
        leaks[f"{owner} csv"] = (csv.encode(), {f"id {i} as utf-8 {i!r}" for i in ONLY_IDS[owner]})
    leaks["sha256"] = (
        b"".join(hashlib.sha256(i.encode()).digest() for _, i in every_id),
        {f"sha256 of id {i}" for _, i in every_id},
    )
    leaks["utf-16"] = (
        " ".join(i for _, i in every_id).encode("utf-16-le"),
        {f"id {i} as utf-16-le {i!r}" for _, i in every_id},
    )
    for name, (leak, expect) in leaks.items():
        assert expect <= whats, name  # the expected labels name real needles
        assert {needles[i].what for i in find(needles, embedded(leak))} >= expect, name
    assert find(needles, secrets.token_bytes(1 << 20)) == {}  # noise alone matches nothing


def test_the_search_finds_leaked_secret_keys(world: World) -> None:
    """Keys made now are recorded by the hooks, and their exports and text forms are found."""
    made = world.secrets
    start = (
        len(made.paillier),
        len(made.blinding),
        len(made.masking),
        len(made.rounds),
        len(made.mpsi),
    )
    insecure.enable_insecure_test_parameters()
    _, private = pl.generate_keypair(512)
    blinding = create_blinding_key()
    masking = pairwise_masks.create_masking_key()
    seed = secrets.token_bytes(dropout_secagg.SEED_BYTES)
    dropout_secagg.RoundSecrets.from_seed(seed)
    job_secret = mpsi.create_mpsi_secret()
    zero_sharing = mpsi_zero_sharing_key(job_secret.export_for_resume())
    fresh = Secrets(
        made.paillier[start[0] :],
        made.blinding[start[1] :],
        made.masking[start[2] :],
        made.rounds[start[3] :],
        mpsi=made.mpsi[start[4] :],
    )
    kinds = (fresh.paillier, fresh.blinding, fresh.masking, fresh.rounds, fresh.mpsi)
    assert [len(x) for x in kinds] == [1, 1, 1, 1, 1]
    p, q = fresh.paillier[0]
    leaks = {
        "paillier export": (private.export_for_resume(), "paillier key 0 p big-endian"),
        "paillier json": (json.dumps({"q": q}).encode(), f"paillier key 0 q as utf-8 {str(q)!r}"),
        "paillier hex": (f"{p:x}".encode(), f"paillier key 0 p as utf-8 {f'{p:x}'!r}"),
        "blinding export": (blinding.export_for_resume(), "psi blinding scalar 0"),
        "masking export": (masking.export_for_resume(), "pairwise_masks masking key 0"),
        "psi_multi export": (job_secret.export_for_resume(), "psi_multi secret 0"),
        "psi_multi zero-sharing key": (
            zero_sharing.hex().encode(),
            f"psi_multi zero-sharing key 0 as utf-8 {zero_sharing.hex()!r}",
        ),
        "round seed json": (
            json.dumps({"seed": seed.hex()}).encode(),
            f"secagg round seed 0 as utf-8 {seed.hex()!r}",
        ),
    }
    needles = fresh.needles()
    for name, (leak, expect) in leaks.items():
        assert expect in {needles[i].what for i in find(needles, embedded(leak))}, name


def test_the_search_finds_a_serialised_ckks_secret_key(tmp_path: Path) -> None:
    """The CKKS needles (windows of the key's coefficients and of SEAL's save) find a secret
    context serialised with its secret key, and not the public one."""
    ts = pytest.importorskip("tenseal")
    context = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 40, 60])
    key = context.secret_key().data
    plain = key.data()
    coeffs = np.array([plain.data(i) for i in range(plain.coeff_count())], dtype="<u8")
    saved = tmp_path / "key.seal"
    key.save(str(saved))
    needles = ckks_needles("ckks secret key 0", coeffs.tobytes(), saved.read_bytes())
    assert find(needles, embedded(context.serialize(save_secret_key=True))) != {}
    assert find(needles, context.serialize(save_secret_key=False)) == {}
    assert find(needles, embedded(coeffs.astype(">u8").tobytes())) != {}


def test_a_value_inside_a_longer_number_is_no_find() -> None:
    """A value's text after a digit is another number, such as an audit timestamp's seconds.

    hospital-b's HbA1c canary ``6.318642`` was once found in hospital-a's audit WAL: the shape
    of a timestamp's ``...:16.318642Z``, which one timestamp in 10^7 has by chance.
    """
    needles = value_needles("hospital-b", "6.318642")
    stamp = "2026-12-06T09:32:16.318642Z"
    for enc in ("utf-8", "utf-16-le"):
        assert find(needles, embedded(stamp.encode(enc))) == {}
        for leak in ('"hba1c": 6.318642', "[6.318642,7.318642]", "hba1c=6.318642000000001"):
            found = find(needles, embedded(leak.encode(enc)))
            assert f"value 6.318642 as {enc} '6.318642'" in {needles[i].what for i in found}
