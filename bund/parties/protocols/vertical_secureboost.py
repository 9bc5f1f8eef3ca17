"""Vertical gradient-boosted trees (SecureBoost): the bank holds labels and key, providers features.

Roles and column bindings as in ``vertical_lr`` (``label_holder`` binds ``id`` and ``label``, each
``feature_holder`` binds ``id``); every numeric column but those is a feature of its owner. The
algorithm is ``bund.compute.learn.secureboost``: the bank runs its tree-growing loop with its own
features in the clear and each provider behind the messages below, so the model equals the
plaintext reference split for split. ``docs/protocols/vertical-secureboost.md`` has the sizes,
what each role learns and what a deviating party can do. After the alignment of
:func:`bund.parties.protocols.vertical_alignment.align_label_holder`:

1. ``vsb/key`` (bank → provider): the public key of the job's scheme (``scheme``: Paillier, the
   default, or ``"ou"``) with, for Paillier, the bank's Π^mod proof that its modulus is a
   Paillier–Blum modulus; the provider verifies it before using the key (under OU, which has no
   such proof, its policy must trust the bank).
2. Per tree ``t`` (from ``complete_secure_trees`` on): ``vsb/tree/t`` (bank → provider): go,
   with the gradients' bit sizes, or the end with the number of trees kept; ``vsb/gh/t/i``: one
   ciphertext per training row packing ``(g, h)``; ``vsb/m/t`` (provider → bank): how many
   candidate splits it offers.
3. Per level ``d``: ``vsb/lvl/t/d`` (bank → provider): the node of every aligned row;
   ``vsb/h/t/d/k`` (provider → bank): for the level's ``k``-th node, the encrypted left sums
   ``(G_L, H_L)`` of all its candidate splits (histograms by bucket products, the larger sibling
   by subtraction, cumulated, shuffled by a fresh secret permutation per node, packed, and
   re-randomised with the provider's own ``r^N`` / ``u^n``); ``vsb/win/t/d`` (bank → provider):
   the nodes whose best split is one of this provider's, each with the tied split ids; and
   ``vsb/part/t/d`` (provider → bank): for each, the id it picked, the lookup id it keeps, and
   which of the node's rows go left. The bank checks that those rows add up to exactly the sums
   it decrypted for that id.

The bank keeps the trees and leaf weights (``model.json``, :data:`MODEL_FORMAT`), with the joint
and bank-only metrics, feature importance and ``roc.png``; each provider keeps its own splits
(lookup id → feature, threshold) and nothing of the bank's. ``vertical_tree_score`` applies both.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import Field

from bund.compute import he
from bund.compute.encoding import squeeze_slots
from bund.compute.errors import InvalidMessageError
from bund.compute.layout import Header
from bund.compute.learn import logistic as lg
from bund.compute.learn import secureboost as sb
from bund.compute.learn.metrics import auc, confusion, ks_statistic, roc_curve
from bund.compute.zk.transcript import make_context
from bund.parties.jobs import InvalidJobSpecError, JobContext, JobSpec, ProtocolDef, Result
from bund.parties.protocols.plots import png, roc_points
from bund.parties.protocols.vertical_alignment import (
    FEATURE_HOLDER,
    FEATURE_HOLDER_NEEDS,
    ID_COLUMN,
    LABEL_COLUMN,
    LABEL_HOLDER,
    LABEL_HOLDER_NEEDS,
    MAX_FEATURES,
    MAX_MESSAGE_BYTES,
    QUALITY_SKIPPED_COLUMNS,
    PaillierParams,
    align_feature_holder,
    align_label_holder,
    aligned_once,
    alignment_outputs,
    decode_meta,
    encode_meta,
    feature_matrix,
    label_holder_aligns,
    numeric_features,
    pack_state,
    roles_of,
    unpack_state,
)
from bund.parties.transport import MessagePlan

#: The ``format`` of every party's ``model.json``: what ``vertical_tree_score`` accepts.
MODEL_FORMAT = "bund.vertical_secureboost.part/1"
#: Most candidate splits one provider may offer per node.
MAX_CANDIDATES = MAX_FEATURES * (sb.MAX_BIN - 1)
#: Largest bit size of a quantised gradient the bank may announce.
MAX_GRADIENT_BITS = 48

_KEY = Header(b"BVSK", 1)
_LEVEL = Header(b"BVSL", 1)
_PARTS = Header(b"BVSP", 1)
_U32 = struct.Struct(">I")
_PART = struct.Struct(">IIII")  # node, picked id, lookup id, rows
_NO_NODE = -1


def _tag(*parts: object) -> str:
    return "vsb/" + "/".join(str(p) for p in parts)


def config_of(params: VerticalSecureBoostParams) -> sb.BoostConfig:
    """The algorithm's configuration from the job's parameters."""
    return sb.BoostConfig(
        n_estimators=params.n_estimators,
        max_depth=params.max_depth,
        learning_rate=params.learning_rate,
        reg_lambda=params.reg_lambda,
        gamma=params.gamma,
        min_child_weight=params.min_child_weight,
        max_bin=params.max_bin,
        subsample=params.subsample,
        colsample_bytree=params.colsample_bytree,
        objective=params.objective,
        base_score=params.base_score,
        early_stopping_rounds=params.early_stopping_rounds,
        complete_secure_trees=params.complete_secure_trees,
        seed=params.seed,
    )


@dataclass(frozen=True)
class Layout:
    """How ``(g, h)`` pairs are packed: both sides derive it from the tree's header.

    A row's plaintext is ``g + h·2^W`` (two signed slots of ``W`` bits); every sum of up to
    ``rows`` of them keeps each slot within ``±2^(W−1)``, so a candidate's ``(G_L, H_L)`` is one
    ``2W``-bit signed value, squeezed ``per`` to a ciphertext.
    """

    width: int
    per: int
    capacity: int

    @classmethod
    def of(cls, gbits: int, hbits: int, rows: int, capacity: int) -> Layout:
        """The layout for gradients of ``gbits``/``hbits`` bits summed over ``rows`` rows."""
        width = max(gbits, hbits, 1) + max(rows, 1).bit_length() + 1
        _, per = squeeze_slots(cls.bound_of(width), capacity)
        return cls(width, per, capacity)

    @staticmethod
    def bound_of(width: int) -> int:
        """The magnitude bound of one packed pair of ``width``-bit slots."""
        return (1 << (2 * width - 1)) - 1

    @property
    def bound(self) -> int:
        """The magnitude bound of one packed pair."""
        return self.bound_of(self.width)

    def pack(self, gq: lg.IntArray, hq: lg.IntArray) -> list[int]:
        """Each row's ``g + h·2^W``."""
        return [
            int(g) + (int(h) << self.width) for g, h in zip(gq.tolist(), hq.tolist(), strict=True)
        ]

    def unpack(self, values: Sequence[int]) -> tuple[lg.IntArray, lg.IntArray]:
        """The ``(G_L, H_L)`` of each packed pair."""
        mask, half, full = (1 << self.width) - 1, 1 << (self.width - 1), 1 << self.width
        gl, hl = [], []
        for v in values:
            low = v & mask
            low = low - full if low >= half else low
            gl.append(low)
            hl.append((v - low) >> self.width)
        return np.asarray(gl, dtype=np.int64), np.asarray(hl, dtype=np.int64)


def max_decryptions(config: sb.BoostConfig, providers: int) -> int:
    """A bound on the bank's decryptions of provider ciphertexts in the job (both sides know it)."""
    nodes = (1 << config.max_depth) - 1
    return max(1, config.n_estimators * nodes * providers * MAX_CANDIDATES)


def _capacity(public: he.HePublicKey, config: sb.BoostConfig, providers: int) -> int:
    return public.packing_bits(max_decryptions(config, providers))


def _per_message(public: he.HePublicKey) -> int:
    return max(1, (MAX_MESSAGE_BYTES - 64) // public.ciphertext_bytes)


def _context(spec: JobSpec) -> bytes:
    return make_context(spec.job_id, "vertical_secureboost", "mod")


def _features(ctx: JobContext, exclude: set[str], rows: list[int]) -> tuple[list[str], Any]:
    table = ctx.table()
    names, skipped = numeric_features(table, exclude)
    ctx.note_quality(QUALITY_SKIPPED_COLUMNS, len(skipped))
    if not 1 <= len(names) <= MAX_FEATURES:
        raise InvalidJobSpecError(
            f"{ctx.party}'s dataset has {len(names)} numeric feature columns; vertical_secureboost "
            f"needs 1 to {MAX_FEATURES}"
        )
    return names, feature_matrix(table, names, rows)


def _split(rows: int, params: VerticalSecureBoostParams) -> sb.BoolArray:
    train, _ = lg.split_rows(rows, params.test_fraction, params.seed)
    mask = np.zeros(rows, dtype=bool)
    mask[train] = True
    return mask


# --- wire layouts -------------------------------------------------------------------------------


def encode_key(public: bytes, proof: bytes | None) -> bytes:
    """``BVSK`` v1: the public key's length (4), the key, then the modulus proof (may be empty)."""
    return _KEY.pack(_U32.pack(len(public)), public, proof or b"")


def decode_key(payload: bytes) -> tuple[bytes, bytes]:
    """The key and the proof of :func:`encode_key`.

    Raises:
        InvalidMessageError: If the layout is wrong.
    """
    body = _KEY.split(payload, "the bank's key message")
    if len(body) < _U32.size:
        raise InvalidMessageError("the bank's key message is too short")
    (size,) = _U32.unpack_from(body)
    if len(body) < _U32.size + size:
        raise InvalidMessageError("the bank's key message is truncated")
    return bytes(body[4 : 4 + size]), bytes(body[4 + size :])


def encode_level(assignment: lg.IntArray) -> bytes:
    """``BVSL`` v1: row count (4), then each aligned row's node as a signed 16-bit integer."""
    return _LEVEL.pack(_U32.pack(len(assignment)), assignment.astype(">i2").tobytes())


def decode_level(
    payload: bytes, rows: int, depth: int, previous: lg.IntArray | None
) -> lg.IntArray:
    """Check a level's assignment: every row in a node of ``depth`` (or none), a child of its last.

    Raises:
        InvalidMessageError: If the layout, the count or a node is wrong.
    """
    body = _LEVEL.split(payload, "a level's node assignment")
    if len(body) != _U32.size + 2 * rows or _U32.unpack_from(body)[0] != rows:
        raise InvalidMessageError("a level's node assignment has the wrong length")
    at = np.frombuffer(body, dtype=">i2", offset=_U32.size).astype(np.int64)
    level = sb.level_nodes(depth)
    inside = at != _NO_NODE
    if np.any(inside & ((at < level.start) | (at >= level.stop))):
        raise InvalidMessageError(f"a row is assigned to a node outside level {depth}")
    if previous is not None:
        parents = (at[inside] - 1) // 2
        if not np.array_equal(parents, previous[inside]):
            raise InvalidMessageError("a row moved to a node that is no child of its last one")
    elif np.any(at[inside] != 0):
        raise InvalidMessageError("the first level has only the root")
    return at


def encode_parts(parts: Sequence[tuple[int, int, int, sb.BoolArray]]) -> bytes:
    """``BVSP`` v1: per won node, node, picked id, lookup id, row count (4 each), left bitmap."""
    chunks = [_U32.pack(len(parts))]
    for node, picked, lookup, left in parts:
        chunks += [_PART.pack(node, picked, lookup, len(left)), np.packbits(left).tobytes()]
    return _PARTS.pack(*chunks)


def decode_parts(payload: bytes) -> dict[int, tuple[int, int, sb.BoolArray]]:
    """Node -> (picked id, lookup id, left mask) of :func:`encode_parts`.

    Raises:
        InvalidMessageError: If the layout is wrong.
    """
    body = memoryview(_PARTS.split(payload, "a provider's partitions"))
    if len(body) < _U32.size:
        raise InvalidMessageError("a provider's partitions are truncated")
    (count,) = _U32.unpack_from(body)
    at, out = _U32.size, {}
    for _ in range(count):
        if len(body) < at + _PART.size:
            raise InvalidMessageError("a provider's partitions are truncated")
        node, picked, lookup, rows = _PART.unpack_from(body, at)
        at += _PART.size
        size = (rows + 7) // 8
        if len(body) < at + size or node in out:
            raise InvalidMessageError("a provider's partitions are truncated or repeat a node")
        bits = np.unpackbits(np.frombuffer(body[at : at + size], dtype=np.uint8))[:rows]
        out[node] = (picked, lookup, bits.astype(bool))
        at += size
    if at != len(body):
        raise InvalidMessageError("a provider's partitions have trailing bytes")
    return out


# --- the bank -----------------------------------------------------------------------------------


@dataclass
class _BankState:
    """The bank's state, saved when each tree starts, with its encrypted gradients (write-ahead).

    A restarted bank redoes the current tree from its start: it re-sends the saved gradients and
    derives every later message of the tree from them and from the providers' messages, which
    its node keeps since this save.
    """

    tree: int = 0
    trees: list[dict[str, Any]] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    best: float = float("inf")
    best_round: int = -1
    stale: int = 0
    stopped: bool = False
    used: int = 0
    gbits: int = 0
    hbits: int = 0
    margin: bytes = b""
    best_margin: bytes = b""
    pending: list[bytes] = field(default_factory=list)

    _BLOBS = ("margin", "best_margin", "pending")

    def save(self, ctx: JobContext) -> None:
        doc = {k: v for k, v in vars(self).items() if k not in self._BLOBS}
        blobs = [self.margin, self.best_margin, *self.pending]
        ctx.save_state("train", pack_state(doc, blobs))

    @classmethod
    def load(cls, ctx: JobContext) -> _BankState | None:
        saved = ctx.load_state("train")
        if saved is None:
            return None
        doc, blobs = unpack_state(saved)
        return cls(**doc, margin=blobs[0], best_margin=blobs[1], pending=blobs[2:])


def _tree_to_doc(tree: sb.Tree) -> dict[str, Any]:
    return {
        "splits": {
            str(k): [s.party, s.ref, None if np.isnan(s.threshold) else s.threshold, s.gain]
            for k, s in tree.splits.items()
        },
        "leaves": {str(k): w for k, w in tree.leaves.items()},
    }


def _tree_from_doc(doc: Mapping[str, Any]) -> sb.Tree:
    splits = {
        int(k): sb.Split(int(p), int(r), float("nan") if t is None else float(t), float(g))
        for k, (p, r, t, g) in doc["splits"].items()
    }
    return sb.Tree(splits, {int(k): float(w) for k, w in doc["leaves"].items()})


class _RemoteProvider:
    """A provider as the bank's tree-growing loop sees it: histograms arrive encrypted."""

    def __init__(
        self,
        ctx: JobContext,
        peer: str,
        secret: he.HeSecretKey,
        service: he.HeDecryptionService,
        train: sb.BoolArray,
        capacity: int,
        state: _BankState,
    ) -> None:
        self.ctx, self.peer, self.secret, self.service = ctx, peer, secret, service
        self.public = secret.public_key
        self.train, self.capacity, self.state = train, capacity, state
        self.tree, self.depth, self.count = 0, 0, 0
        self.layout = Layout(1, 1, capacity)
        self.assignment = np.zeros(len(train), dtype=np.int64)
        self.nodes: list[int] = []
        self.gq = self.hq = np.zeros(0, dtype=np.int64)

    def start_tree(self, tree: int, gq: lg.IntArray, hq: lg.IntArray) -> None:
        self.tree, self.gq, self.hq = tree, gq, hq
        st = self.state
        header = {"go": True, "gbits": st.gbits, "hbits": st.hbits}
        self.ctx.send(self.peer, _tag("tree", tree), encode_meta(header))
        for i, chunk in enumerate(st.pending):
            self.ctx.send(self.peer, _tag("gh", tree, i), chunk)
        meta = decode_meta(self.ctx.recv(self.peer, _tag("m", tree)))
        count = meta.get("candidates")
        if (
            not isinstance(count, int)
            or isinstance(count, bool)
            or not 0 <= count <= MAX_CANDIDATES
        ):
            raise InvalidMessageError(f"{self.peer} announced an invalid number of candidates")
        self.count = count
        self.layout = Layout.of(st.gbits, st.hbits, int(self.train.sum()), self.capacity)

    def begin_level(self, depth: int, assignment: lg.IntArray) -> None:
        self.depth, self.assignment = depth, assignment
        self.ctx.send(self.peer, _tag("lvl", self.tree, depth), encode_level(assignment))

    def candidates(self, nodes: Sequence[int]) -> list[sb.Candidates]:
        self.nodes = list(nodes)
        out = []
        for k, node in enumerate(nodes):
            payload = self.ctx.recv(self.peer, _tag("h", self.tree, self.depth, k))
            out.append(self._decrypt(node, payload))
        return out

    def _decrypt(self, node: int, payload: bytes) -> sb.Candidates:
        layout = self.layout
        packed = self.public.packed_from_bytes(
            payload,
            slot_bits=2 * layout.width,
            slots=layout.per,
            count=self.count,
            bound=layout.bound,
            frac_bits=0,
        )
        self.state.used += len(packed)
        gl, hl = layout.unpack(self.service.decrypt_packed(packed))
        rows = (self.assignment == node) & self.train
        h_total = int(self.hq[rows].sum())
        g_abs = int(np.abs(self.gq[rows]).sum())
        if len(hl) and (hl.min() < 0 or hl.max() > h_total or np.abs(gl).max() > g_abs):
            raise InvalidMessageError(
                f"{self.peer}'s histogram of node {node} holds sums its rows cannot have: the "
                "provider deviated from the protocol"
            )
        return sb.Candidates(gl, hl)

    def choose(self, won: Mapping[int, Sequence[int]]) -> dict[int, sb.Chosen]:
        doc = {str(node): [int(i) for i in tied] for node, tied in won.items()}
        self.ctx.send(self.peer, _tag("win", self.tree, self.depth), encode_meta({"won": doc}))
        if not won:
            return {}
        parts = decode_parts(self.ctx.recv(self.peer, _tag("part", self.tree, self.depth)))
        return {
            node: sb.Chosen(left, picked, lookup) for node, (picked, lookup, left) in parts.items()
        }


def _bank_key(ctx: JobContext, scheme: he.HeScheme, bits: int) -> tuple[he.HeSecretKey, bytes]:
    """The job's key and its message (key and Π^mod proof), made once and saved before sending."""
    saved = ctx.load_state("key")
    if saved is not None:
        doc, (key, message) = unpack_state(saved)
        del doc
        return scheme.secret_key_from_resume_state(key), message
    secret = scheme.generate_keypair(bits)
    proof = secret.prove_modulus(_context(ctx.spec)) if scheme.proves_modulus else None
    message = encode_key(secret.public_key.to_bytes(), proof)
    ctx.save_state("key", pack_state({}, [secret.export_for_resume(), message]))
    return secret, message


def run_label_holder(ctx: JobContext) -> Result:
    """The bank's side: align, grow every tree over all parties' candidates, evaluate, report.

    Resumable: the alignment, the key and each tree's encrypted gradients are saved before they
    are sent, so a restarted bank redoes the current tree with byte-identical messages.

    Raises:
        InvalidJobSpecError: If the aligned rows leave no usable split.
        InvalidMessageError: If a provider's message is malformed or its histogram or partition
            is inconsistent.
        InvalidCiphertextError: If a ciphertext fails the engine's validation.
    """
    spec = ctx.spec
    bank, providers = roles_of(spec)
    me = spec.participant(ctx.party)
    params = VerticalSecureBoostParams.of(spec)
    config = config_of(params)
    alignment = aligned_once(ctx, lambda: align_label_holder(ctx, providers))
    rows = alignment.rows
    table = ctx.table()
    y = table.numeric(me.columns[LABEL_COLUMN])[rows]
    if config.objective == "binary:logistic" and not np.isin(y, (0.0, 1.0)).all():
        raise InvalidJobSpecError("binary:logistic needs a 0/1 label column; use reg:squarederror")
    names, x = _features(ctx, {me.columns[ID_COLUMN], me.columns[LABEL_COLUMN]}, rows)
    train = _split(len(rows), params)
    test = ~train
    if (
        not train.any()
        or not test.any()
        or (config.objective == "binary:logistic" and len(set(y[test].tolist())) < 2)
    ):
        raise InvalidJobSpecError(
            f"{len(rows)} aligned rows leave no usable training or held-out split: change "
            "test_fraction or align more rows"
        )
    secret, key_message = _bank_key(ctx, scheme_of(spec), params.key_bits)
    public = secret.public_key
    encryptor = secret.encryptor_for(ctx.executor)
    for peer in providers:
        ctx.send(peer, "vsb/key", key_message)
    binning = sb.fit_binning(x[train], config.max_bin)
    own = sb.LocalSplits(binning.apply(x), binning, train, 0, config)
    st = _BankState.load(ctx) or _BankState(margin=np.full(len(rows), config.base_margin).tobytes())
    bound = max_decryptions(config, len(providers))
    service = secret.decryption_service(bound, used=min(st.used, bound))
    capacity = _capacity(public, config, len(providers))
    remotes = [_RemoteProvider(ctx, p, secret, service, train, capacity, st) for p in providers]
    stop = sb.EarlyStop(config.early_stopping_rounds, st.best, st.best_round, st.stale)
    trees = [_tree_from_doc(d) for d in st.trees]
    while st.tree < config.n_estimators and not st.stopped:
        t = st.tree
        margin = np.frombuffer(st.margin, dtype=np.float64).copy()
        gq, hq = sb.round_gradients(margin, y, train, config, t)
        joint = t >= config.complete_secure_trees
        if joint and not st.pending:
            st.gbits = max(1, int(np.abs(gq).max(initial=0)).bit_length())
            st.hbits = max(1, int(hq.max(initial=0)).bit_length())
            if st.gbits > MAX_GRADIENT_BITS:
                raise InvalidJobSpecError(
                    "the gradients are too large to pack: scale the regression target down"
                )
            layout = Layout.of(st.gbits, st.hbits, int(train.sum()), capacity)
            vector = encryptor.encrypt(layout.pack(gq[train], hq[train]), executor=ctx.executor)
            st.pending = [part.to_bytes(encryptor) for part in vector.split(_per_message(public))]
            st.save(ctx)  # write-ahead: the gradients' random encryption, before sending
        sources: list[sb.SplitSource] = [own, *(remotes if joint else [])]
        tree, leaf = sb.grow_tree(sources, t, gq, hq, train, config)
        margin = margin + sb.leaf_values(tree, leaf)
        trees.append(tree)
        st.losses.append(sb.loss(margin[test], y[test], config.objective))
        st.stopped = stop.update(t, st.losses[-1])
        st.best, st.best_round, st.stale = stop.best, stop.best_round, stop.stale
        if stop.best_round == t:
            st.best_margin = margin.tobytes()
        st.trees.append(_tree_to_doc(tree))
        st.tree, st.pending, st.margin = t + 1, [], margin.tobytes()
        st.save(ctx)
        ctx.progress("trees", t + 1, config.n_estimators)
    kept = stop.kept(len(trees))
    end = encode_meta({"go": False, "kept": kept})
    for peer in providers:
        ctx.send(peer, _tag("tree", max(st.tree, config.complete_secure_trees)), end)
    ensemble = sb.Ensemble(tuple(trees[:kept]), config.base_margin, config.objective)
    final = st.best_margin if kept < len(trees) else st.margin
    margin = np.frombuffer(final, dtype=np.float64).copy()
    ctx.record("vertical_secureboost.finished", {"aligned_rows": len(rows), "trees": kept})
    baseline, _ = sb.fit([x], y, train, config)
    return _report(params, names, ensemble, y, test, margin, baseline.margins, providers, st)


def _importance(
    ensemble: sb.Ensemble, names: Sequence[str], providers: Sequence[str]
) -> dict[str, Any]:
    """Gain and split count per own feature, and per provider in total (what the bank may see)."""
    gain = dict.fromkeys(names, 0.0)
    count = dict.fromkeys(names, 0)
    per_party = {p: {"gain": 0.0, "splits": 0} for p in providers}
    for tree in ensemble.trees:
        for split in tree.splits.values():
            if split.party == 0:
                gain[names[split.ref]] += split.gain
                count[names[split.ref]] += 1
            else:
                entry = per_party[providers[split.party - 1]]
                entry["gain"] += split.gain
                entry["splits"] += 1
    return {"gain": gain, "splits": count, "providers": per_party}


def _report(
    params: VerticalSecureBoostParams,
    names: list[str],
    ensemble: sb.Ensemble,
    y: lg.FloatArray,
    test: sb.BoolArray,
    margin: lg.FloatArray,
    bank_margin: lg.FloatArray,
    providers: list[str],
    st: _BankState,
) -> Result:
    objective = params.objective
    y_test, z_test, z_bank = y[test], margin[test], bank_margin[test]
    summary: dict[str, str | int | float | bool | None] = {
        "aligned_rows": len(y),
        "test_rows": int(test.sum()),
        "trees": len(ensemble.trees),
        "trees_grown": len(st.trees),
        "final_loss": st.losses[-1] if st.losses else None,
        "loss_bank_only": sb.loss(z_bank, y_test, objective),
    }
    metrics: dict[str, Any] = {"losses": st.losses}
    artifacts: dict[str, bytes] = {}
    if objective == "binary:logistic":
        p_test = sb.sigmoid(z_test)
        ks, ks_at = ks_statistic(y_test, p_test)
        bank_ks, _ = ks_statistic(y_test, sb.sigmoid(z_bank))
        table = confusion(y_test, p_test, params.cutoff)
        joint_auc, bank_auc = auc(y_test, z_test), auc(y_test, z_bank)
        summary |= {
            "auc": joint_auc,
            "auc_bank_only": bank_auc,
            "ks": ks,
            "ks_bank_only": bank_ks,
            "cutoff": params.cutoff,
            "true_positive": table.true_positive,
            "false_positive": table.false_positive,
            "true_negative": table.true_negative,
            "false_negative": table.false_negative,
        }
        metrics |= {
            "joint": {
                "auc": joint_auc,
                "ks": ks,
                "ks_threshold": ks_at,
                "roc": roc_points(y_test, z_test),
            },
            "bank_only": {"auc": bank_auc, "ks": bank_ks, "roc": roc_points(y_test, z_bank)},
        }
        artifacts["roc.png"] = _roc_chart(y_test, z_test, z_bank, joint_auc, bank_auc)
    model = {
        "format": MODEL_FORMAT,
        "role": LABEL_HOLDER,
        "providers": providers,
        "features": names,
        "objective": objective,
        "base_margin": ensemble.base_margin,
        "cutoff": params.cutoff,
        "trees": [_bank_tree_doc(tree, names, providers) for tree in ensemble.trees],
        "importance": _importance(ensemble, names, providers),
        "metrics": metrics,
        "note": "the bank's own splits and every leaf weight; providers keep their thresholds",
    }
    artifacts["model.json"] = json.dumps(model, indent=1).encode()
    return Result(summary, artifacts)


def _bank_tree_doc(tree: sb.Tree, names: Sequence[str], providers: Sequence[str]) -> dict[str, Any]:
    """A tree as the bank stores it (``vertical_tree_score`` reads it)."""
    splits: dict[str, Any] = {}
    for node, s in sorted(tree.splits.items()):
        if s.party == 0:
            splits[str(node)] = {"feature": names[s.ref], "threshold": s.threshold}
        else:
            splits[str(node)] = {"provider": providers[s.party - 1], "lookup": s.ref}
    return {"splits": splits, "leaves": {str(k): w for k, w in sorted(tree.leaves.items())}}


def _roc_chart(
    y: lg.FloatArray, z: lg.FloatArray, z_bank: lg.FloatArray, joint: float, bank: float
) -> bytes:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    for scores, label in (
        (z, f"joint trees, AUC {joint:.3f}"),
        (z_bank, f"bank-only trees, AUC {bank:.3f}"),
    ):
        curve = roc_curve(y, scores)
        ax.plot(curve.fpr, curve.tpr, label=label, drawstyle="steps-post")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=0.8)
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.set_title("ROC on the held-out rows")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return png(fig)


# --- a provider ---------------------------------------------------------------------------------


@dataclass
class _ProviderState:
    """A provider's state: saved before each level's histograms are sent (write-ahead).

    ``gh`` (the tree's encrypted gradients, as received) is saved with the first level of the
    tree; ``payloads`` and ``perms`` are the current level's messages and secret shuffles. A
    restarted provider recomputes that level's histograms from ``gh`` and ``assignment`` and
    re-sends the saved bytes.
    """

    key: bytes
    lookups: list[list[Any]] = field(default_factory=list)
    tree: int = 0
    depth: int = -1
    kept: int = -1
    header: dict[str, Any] = field(default_factory=dict)
    assignment: list[int] = field(default_factory=list)
    perms: list[list[int]] = field(default_factory=list)
    payloads: list[bytes] = field(default_factory=list)
    gh: list[bytes] = field(default_factory=list)

    def save(self, ctx: JobContext) -> None:
        doc = {k: v for k, v in vars(self).items() if k not in ("key", "payloads", "gh")}
        doc["n_payloads"] = len(self.payloads)
        ctx.save_state("train", pack_state(doc, [self.key, *self.payloads, *self.gh]))

    @classmethod
    def load(cls, ctx: JobContext) -> _ProviderState | None:
        saved = ctx.load_state("train")
        if saved is None:
            return None
        doc, blobs = unpack_state(saved)
        n = doc.pop("n_payloads")
        return cls(key=blobs[0], payloads=blobs[1 : 1 + n], gh=blobs[1 + n :], **doc)


def _shuffle(count: int) -> list[int]:
    """A uniformly random permutation of ``range(count)`` from ``secrets`` (Fisher–Yates)."""
    perm = list(range(count))
    for i in range(count - 1, 0, -1):
        j = secrets.randbelow(i + 1)
        perm[i], perm[j] = perm[j], perm[i]
    return perm


class _ProviderTree:
    """One tree at a provider: its encrypted gradients, and histograms kept for subtraction."""

    def __init__(
        self,
        ctx: JobContext,
        public: he.HePublicKey,
        gh: he.HeVector,
        bins: lg.IntArray,
        binning: sb.Binning,
        features: lg.IntArray,
        train: sb.BoolArray,
    ) -> None:
        self.ctx, self.public, self.gh = ctx, public, gh
        self.bins, self.binning, self.features, self.train = bins, binning, features, train
        self.position = np.cumsum(train) - 1  # a training row's index in gh
        self.widths = [binning.candidates[int(f)] + 1 for f in features]
        self.keys = sb.candidate_keys(features, binning)
        starts = np.cumsum([0, *self.widths])
        # Every bin's running sum but each feature's last (its total: no split).
        self.left = [int(starts[i] + k) for i, w in enumerate(self.widths) for k in range(w - 1)]
        self.kept: dict[int, he.HeVector] = {}

    def direct(self, node: int, assignment: lg.IntArray) -> he.HeVector:
        rows = np.flatnonzero((assignment == node) & self.train)
        cts = self.gh.take(self.position[rows].tolist())
        buckets = self.bins[rows][:, self.features].T
        return cts.histogram(buckets, self.widths, self.ctx.executor)

    def level(self, nodes: Sequence[int], assignment: lg.IntArray) -> list[he.HeVector]:
        """Each node's bin sums: the smaller sibling directly, the larger by subtraction."""
        counts = {n: int(((assignment == n) & self.train).sum()) for n in nodes}
        out: dict[int, he.HeVector] = {}
        for node in nodes:
            if node in out:
                continue
            parent = (node - 1) // 2
            sibling = node + 1 if node % 2 == 1 else node - 1
            if node > 0 and parent in self.kept and sibling in counts:
                small, large = sorted((node, sibling), key=lambda n: (counts[n], n))
                out[small] = self.direct(small, assignment)
                out[large] = self.kept[parent] - out[small]
            else:
                out[node] = self.direct(node, assignment)
        self.kept = out
        return [out[n] for n in nodes]

    def candidates(self, hist: he.HeVector, perm: Sequence[int]) -> he.HeVector:
        """The left sums of every candidate, in the shuffled order ``perm``."""
        running = hist.prefix_sums(self.widths)
        return running.take([self.left[i] for i in perm])


def run_feature_holder(ctx: JobContext) -> Result:
    """A provider's side: histograms of its own features under the bank's key, its own splits.

    Resumable: each level's histograms are saved before they are sent (write-ahead).

    Raises:
        ProofError: If the bank's modulus proof fails (Paillier).
        InvalidKeyError: If the bank's key fails validation.
        InvalidCiphertextError: If a ciphertext fails the engine's validation.
        InvalidMessageError: If a message is malformed.
    """
    spec = ctx.spec
    bank, providers = roles_of(spec)
    me = spec.participant(ctx.party)
    party = providers.index(ctx.party) + 1
    params = VerticalSecureBoostParams.of(spec)
    config = config_of(params)
    alignment = aligned_once(ctx, lambda: align_feature_holder(ctx, bank))
    rows = alignment.rows
    names, x = _features(ctx, {me.columns[ID_COLUMN]}, rows)
    train = _split(len(rows), params)
    binning = sb.fit_binning(x[train], config.max_bin)
    bins = binning.apply(x)
    scheme = scheme_of(spec)
    st = _ProviderState.load(ctx)
    if st is None:
        key, proof = decode_key(ctx.recv(bank, "vsb/key"))
        public = scheme.public_key_from_bytes(key)  # validated before anything is kept
        if scheme.proves_modulus:
            public.verify_modulus(proof, _context(spec))  # Π^mod, before any use
        st = _ProviderState(key, tree=config.complete_secure_trees)
        st.save(ctx)
    public = scheme.public_key_from_bytes(st.key)
    capacity = _capacity(public, config, len(providers))
    pool = public.encryptor().pool(capacity=64)  # this provider's own r^N (u^n), never h_s
    n_train = int(train.sum())
    while True:
        t = st.tree
        resumed = st.depth >= 0  # a restart in the middle of tree t: its header and gh are saved
        header = st.header if resumed else decode_meta(ctx.recv(bank, _tag("tree", t)))
        if header.get("go") is not True:
            kept = header.get("kept")
            if not isinstance(kept, int) or isinstance(kept, bool) or not 0 <= kept <= t:
                raise InvalidMessageError("the bank's end of training is malformed")
            st.kept = kept
            break
        gbits, hbits = header.get("gbits"), header.get("hbits")
        if not all(isinstance(b, int) and 1 <= b <= MAX_GRADIENT_BITS for b in (gbits, hbits)):
            raise InvalidMessageError("the bank's gradient sizes are malformed")
        layout = Layout.of(int(gbits), int(hbits), n_train, capacity)  # type: ignore[arg-type]
        if not resumed:
            st.header = header
            st.gh = [
                ctx.recv(bank, _tag("gh", t, i))
                for i in range(-(-max(n_train, 1) // _per_message(public)))
            ]
        gh = _gradients(public, st.gh, n_train)
        features = sb.sample_features(len(names), config.colsample_bytree, config.seed, t, party)
        tree = _ProviderTree(ctx, public, gh, bins, binning, features, train)
        ctx.send(bank, _tag("m", t), encode_meta({"candidates": len(tree.keys)}))
        previous: lg.IntArray | None = None
        for depth in range(max(st.depth, 0), config.max_depth):
            if st.depth == depth:  # resumed: this level's histograms were saved, not all sent
                assignment = np.asarray(st.assignment, dtype=np.int64)
            else:
                payload = ctx.recv(bank, _tag("lvl", t, depth))
                assignment = decode_level(payload, len(rows), depth, previous)
            nodes = sorted(set(assignment[assignment != _NO_NODE].tolist()))
            if not nodes:
                break
            hists = tree.level(nodes, assignment)
            if st.depth != depth:
                perms = [_shuffle(len(tree.keys)) for _ in nodes]
                payloads = []
                for hist, perm in zip(hists, perms, strict=True):
                    packed = tree.candidates(hist, perm).squeeze(layout.bound, capacity)
                    pool.refill(len(packed), ctx.executor)
                    payloads.append(packed.to_bytes(pool))
                st.depth, st.assignment, st.perms, st.payloads = (
                    depth,
                    assignment.tolist(),
                    perms,
                    payloads,
                )
                st.save(ctx)  # write-ahead: the shuffles and the re-randomised histograms
            for k, payload in enumerate(st.payloads):
                ctx.send(bank, _tag("h", t, depth, k), payload)
            won = _decode_won(ctx.recv(bank, _tag("win", t, depth)), nodes, len(tree.keys))
            if won:
                parts = []
                for node, tied in sorted(won.items()):
                    perm = st.perms[nodes.index(node)]
                    picked = min(tied, key=lambda j: tree.keys[perm[j]])  # noqa: B023
                    feature, cut = tree.keys[perm[picked]]
                    at = np.flatnonzero(assignment == node)
                    st.lookups.append([t, node, int(feature), cut])
                    parts.append((node, picked, len(st.lookups) - 1, bins[at, feature] <= cut))
                ctx.send(bank, _tag("part", t, depth), encode_parts(parts))
            previous = assignment
            ctx.progress("levels", depth + 1, config.max_depth)
        st.tree, st.depth, st.header, st.gh = t + 1, -1, {}, []
        st.assignment, st.perms, st.payloads = [], [], []
        st.save(ctx)
    ctx.record("vertical_secureboost.finished", {"aligned_rows": len(rows), "trees": st.kept})
    splits = {
        str(i): {"feature": names[f], "threshold": float(binning.cuts[f][k])}
        for i, (t, _node, f, k) in enumerate(st.lookups)
        if t < st.kept
    }
    counts = dict.fromkeys(names, 0)
    for entry in splits.values():
        counts[entry["feature"]] += 1
    model = {
        "format": MODEL_FORMAT,
        "role": FEATURE_HOLDER,
        "party": ctx.party,
        "label_holder": bank,
        "features": names,
        "splits": splits,
        "importance": {"splits": counts},
        "note": f"{ctx.party}'s own splits: lookup id -> feature and threshold",
    }
    summary: dict[str, str | int | float | bool | None] = {
        "aligned_rows": len(rows),
        "features": len(names),
        "trees": st.kept,
        "splits": len(splits),
    }
    return Result(summary, {"model.json": json.dumps(model, indent=1).encode()})


def _gradients(public: he.HePublicKey, chunks: Sequence[bytes], count: int) -> he.HeVector:
    """The tree's encrypted gradients, every ciphertext validated by the engine."""
    per = _per_message(public)
    parts = []
    for i, chunk in enumerate(chunks):
        want = min(per, count - i * per)
        part = public.vector_from_bytes(chunk, frac_bits=0, max_count=want)
        if len(part) != want:
            raise InvalidMessageError(f"expected {want} gradient ciphertexts, got {len(part)}")
        parts.append(part)
    return parts[0].extended(parts[1:])


def _decode_won(payload: bytes, nodes: Sequence[int], count: int) -> dict[int, list[int]]:
    """The bank's winners: node -> tied split ids, every node active and every id in range.

    Raises:
        InvalidMessageError: If a node or an id is out of range.
    """
    won = decode_meta(payload).get("won")
    if not isinstance(won, dict):
        raise InvalidMessageError("the bank's winners message is malformed")
    out: dict[int, list[int]] = {}
    for key, tied in won.items():
        if not key.isdigit() or int(key) not in nodes or not isinstance(tied, list) or not tied:
            raise InvalidMessageError("the bank named a node that is not being split")
        if any(not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < count for i in tied):
            raise InvalidMessageError("the bank named a split id out of range")
        out[int(key)] = [int(i) for i in tied]
    return out


# --- the job spec -------------------------------------------------------------------------------

_DEFAULT = sb.BoostConfig()


class VerticalSecureBoostParams(PaillierParams):
    """The parameters of a ``vertical_secureboost`` job (XGBoost's names and meanings)."""

    n_estimators: int = Field(
        default=_DEFAULT.n_estimators, ge=1, le=1000, description="most trees"
    )
    max_depth: int = Field(
        default=_DEFAULT.max_depth, ge=1, le=sb.MAX_DEPTH, description="depth of each tree"
    )
    learning_rate: float = Field(
        default=_DEFAULT.learning_rate, gt=0, le=1, description="eta: the leaf weights' scale"
    )
    reg_lambda: float = Field(
        default=_DEFAULT.reg_lambda, ge=0, le=1e6, description="L2 penalty on leaf weights"
    )
    gamma: float = Field(
        default=_DEFAULT.gamma, ge=0, le=1e6, description="least loss change to split"
    )
    min_child_weight: float = Field(
        default=_DEFAULT.min_child_weight, ge=0, le=1e6, description="least hessian sum in a child"
    )
    max_bin: int = Field(
        default=_DEFAULT.max_bin, ge=2, le=sb.MAX_BIN, description="most bins per feature"
    )
    subsample: float = Field(
        default=_DEFAULT.subsample, gt=0, le=1, description="share of training rows per tree"
    )
    colsample_bytree: float = Field(
        default=_DEFAULT.colsample_bytree,
        gt=0,
        le=1,
        description="share of each party's features per tree",
    )
    objective: Literal["binary:logistic", "reg:squarederror"] = Field(
        default="binary:logistic", description="binary:logistic (0/1 label) or reg:squarederror"
    )
    base_score: float = Field(
        default=0.5, ge=-1e6, le=1e6, description="initial prediction (a probability for logistic)"
    )
    early_stopping_rounds: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="stop after this many trees without a better held-out loss; keep the best",
    )
    complete_secure_trees: int = Field(
        default=0,
        ge=0,
        le=1000,
        description="the first this-many trees use the bank's features only (FATE's complete "
        "secure mode: providers see no instance space of them)",
    )
    seed: int = Field(
        default=0, ge=0, le=2**63 - 1, description="public seed of splits and sampling"
    )
    test_fraction: float = Field(
        default=0.3, ge=0.01, le=0.9, description="share of the aligned rows held out"
    )
    cutoff: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="default probability at which the confusion table declines",
    )
    scheme: Literal["paillier", "ou"] = Field(
        default="paillier",
        description="the additively homomorphic scheme: Paillier (the bank proves its modulus), "
        "or Okamoto–Uchiyama (faster; no proof exists, so each provider's policy must trust "
        "the bank)",
    )


def scheme_of(spec: JobSpec) -> he.HeScheme:
    """The job's additively homomorphic scheme."""
    return he.create_scheme(VerticalSecureBoostParams.of(spec).scheme)


def check(spec: JobSpec) -> None:
    """A logistic base score must be a probability.

    Raises:
        InvalidJobSpecError: Naming the parameter.
    """
    params = VerticalSecureBoostParams.of(spec)
    if params.objective == "binary:logistic" and not 0 < params.base_score < 1:
        raise InvalidJobSpecError("parameter base_score of binary:logistic lies in (0, 1)")


def validate(spec: JobSpec) -> None:
    """Check that ``spec`` is a runnable ``vertical_secureboost`` job.

    Raises:
        InvalidJobSpecError: Naming the field to fix.
    """
    DEFINITION.validate(spec)


def outputs(spec: JobSpec) -> frozenset[str]:
    """What the job releases: a model, and the alignment's membership (``policy.OUTPUTS``)."""
    return frozenset({"model"}) | alignment_outputs(spec)


def learns(spec: JobSpec) -> dict[str, str]:
    """What each party learns, as ``docs/protocols/vertical-secureboost.md`` states it."""
    bank, providers = roles_of(spec)
    params = VerticalSecureBoostParams.of(spec)
    ou = params.scheme == "ou"
    out = {
        bank: (
            f"{label_holder_aligns(spec)}; per tree and node, each provider's "
            "candidate splits as (provider, shuffled split id) with their summed gradients "
            "(G_L, H_L) — the per-bin gradient sums of the providers' features that SecureBoost "
            "is known to reveal — which provider's split wins each node and which rows go left "
            "there (the instance space); never a provider's feature values or thresholds. Its "
            "result: the trees, leaf weights, its own splits, metrics and feature importance"
        )
        + (
            ". Okamoto–Uchiyama: it decrypts a provider's sums only within their range; the "
            "first out-of-range one fails the job and retires the key"
            if ou
            else ""
        )
    }
    secure = (
        f" The first {params.complete_secure_trees} tree(s) use only the bank's features: "
        "providers see nothing of them."
        if params.complete_secure_trees
        else ""
    )
    for p in providers:
        out[p] = (
            f"which of its own ids are in the common set; {bank}'s set size; per tree the "
            "instance space of every node (which of its aligned rows, training and held out, go "
            "left or right at each split, the bank's and other providers' included), and at "
            "the nodes its own splits win, that they won; its own splits (feature and "
            "threshold), which it keeps. Gradients and labels reach it only encrypted. A "
            f"DEVIATING {bank} can choose the gradients it encrypts (one-hot rows, or values "
            f"packed to separate rows) and read from one node's histograms the bin of every "
            f"row in every feature of {p}: {p}'s policy accepts this protocol with {bank} only "
            f"if it trusts {bank} to follow it." + secure
        ) + (
            f" Okamoto–Uchiyama: {p}'s node TRUSTS {bank}'s key; no proof of an OU modulus "
            "exists (Paillier keys come with Π^mod, which the provider verifies)"
            if ou
            else f" {p}'s node verifies {bank}'s Π^mod proof before using its key"
        )
    return out


def trusts(spec: JobSpec, party: str) -> dict[str, str]:
    """Whom each party's protection rests on: the bank on every provider, providers on the bank.

    A deviating provider can craft histograms (the encrypted gradient of one row as a candidate's
    sums) and learn from whether they win how that row's gradient compares, i.e. its label; a
    deviating bank can encrypt chosen gradients and read every row's bins. Both are inherent to
    SecureBoost (``docs/protocols/vertical-secureboost.md``): each side's policy names the other
    as trusted for this protocol, or refuses the job.
    """
    bank, providers = roles_of(spec)
    if party == bank:
        why = (
            "a provider that deviates can offer crafted candidate splits (for example the "
            "encrypted gradient of a single row) and learn from which ones win how the labels of "
            "chosen rows compare: the labels are protected only against providers that follow "
            "the protocol"
        )
        return dict.fromkeys(providers, why)
    if party in providers:
        why = (
            "a bank that deviates can encrypt gradients of its choosing (one-hot rows) and read "
            "from a single node's histograms which bin of every feature each aligned row falls in"
        )
        if VerticalSecureBoostParams.of(spec).scheme == "ou":
            why += (
                "; and no proof exists that an Okamoto–Uchiyama modulus is well formed "
                '(docs/ou.md): use scheme = "paillier" for its Π^mod'
            )
        return {bank: why}
    return {}


def plan_messages(spec: JobSpec, party: str, limits: Mapping[str, int]) -> MessagePlan:
    """What a peer may send ``party``: alignment and this protocol's tags, within node limits."""
    tags = (
        r"align/.+",
        r"vsb/key",
        r"vsb/tree/\d+",
        r"vsb/gh/\d+/\d+",
        r"vsb/m/\d+",
        r"vsb/lvl/\d+/\d+",
        r"vsb/h/\d+/\d+/\d+",
        r"vsb/win/\d+/\d+",
        r"vsb/part/\d+/\d+",
    )
    return MessagePlan(limits["job_max_messages"], limits["job_max_bytes"], tags)


#: The protocol as registered in ``bund.parties.protocols.PROTOCOLS``.
DEFINITION = ProtocolDef(
    name="vertical_secureboost",
    version="1",
    roles={LABEL_HOLDER: run_label_holder, FEATURE_HOLDER: run_feature_holder},
    params=VerticalSecureBoostParams,
    role_requirements={
        # Each party keeps its own part of the model (never another's) for vertical_tree_score.
        LABEL_HOLDER: dataclasses.replace(LABEL_HOLDER_NEEDS, receives=True),
        FEATURE_HOLDER: dataclasses.replace(FEATURE_HOLDER_NEEDS, receives=True),
    },
    check=check,
    outputs=outputs,
    learns=learns,
    trusts=trusts,
    plan=plan_messages,
    description=(
        "vertical gradient-boosted trees (SecureBoost): gradients under the bank's key, "
        "providers' shuffled, re-randomised histograms, splits kept by their owners"
    ),
    resumable=True,
)
