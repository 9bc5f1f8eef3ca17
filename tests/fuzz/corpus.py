"""Mutations of a fixed seed corpus for the fuzz tests: random, truncated, bit-flipped, oversized.

Every strategy starts from valid encodings (the seeds), so the fuzzer reaches past the first
length or magic check, and Hypothesis runs it derandomised: the same inputs on every run.
"""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

#: Bytes appended to make one oversized input per seed (far past any layout's length).
OVERSIZE = 1 << 20


def _truncate(seed_and_cut: tuple[bytes, int]) -> bytes:
    seed, cut = seed_and_cut
    return seed[: cut % (len(seed) + 1)]


def _flip(seed_and_flips: tuple[bytes, list[tuple[int, int]]]) -> bytes:
    seed, flips = seed_and_flips
    if not seed:
        return seed
    out = bytearray(seed)
    for position, bit in flips:
        out[position % len(out)] ^= 1 << bit
    return bytes(out)


def _splice(parts: tuple[bytes, int, bytes]) -> bytes:
    seed, at, insert = parts
    cut = at % (len(seed) + 1)
    return seed[:cut] + insert + seed[cut:]


def mutations(seeds: Sequence[bytes], max_random: int = 512) -> st.SearchStrategy[bytes]:
    """Random bytes, the seeds themselves, and seeds truncated, bit-flipped, spliced or repeated."""
    seed = st.sampled_from(list(seeds))
    return st.one_of(
        st.binary(max_size=max_random),
        seed,
        st.tuples(seed, st.integers(0, 1 << 24)).map(_truncate),
        st.tuples(
            seed,
            st.lists(st.tuples(st.integers(0, 1 << 24), st.integers(0, 7)), min_size=1, max_size=8),
        ).map(_flip),
        st.tuples(seed, st.integers(0, 1 << 24), st.binary(min_size=1, max_size=64)).map(_splice),
        st.tuples(seed, st.integers(2, 4)).map(lambda t: t[0] * t[1]),
    )


def oversized(seed: bytes) -> bytes:
    """The seed followed by a mebibyte of 0xff: a valid header announcing far too little."""
    return seed + b"\xff" * OVERSIZE


def populate(message: Message, depth: int = 3) -> Message:
    """Fill every field of a protobuf message with a plausible value (nested up to ``depth``)."""
    for field in message.DESCRIPTOR.fields:
        repeated = field.is_repeated
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if depth == 0:
                continue
            if field.message_type.GetOptions().map_entry:
                target = getattr(message, field.name)
                value_field = field.message_type.fields_by_name["value"]
                if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                    populate(target["k"], depth - 1)
                else:
                    target["k"] = _scalar(value_field)
                continue
            child = getattr(message, field.name).add() if repeated else getattr(message, field.name)
            populate(child, depth - 1)
            continue
        value = _scalar(field)
        if repeated:
            getattr(message, field.name).append(value)
        elif field.containing_oneof is None or not message.WhichOneof(field.containing_oneof.name):
            setattr(message, field.name, value)
    return message


def _scalar(field: FieldDescriptor) -> object:
    if field.type == FieldDescriptor.TYPE_STRING:
        return "a" * 32
    if field.type == FieldDescriptor.TYPE_BYTES:
        return bytes(range(32))
    if field.type == FieldDescriptor.TYPE_BOOL:
        return True
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return 1.5
    if field.type == FieldDescriptor.TYPE_ENUM:
        return field.enum_type.values[-1].number
    return 1
