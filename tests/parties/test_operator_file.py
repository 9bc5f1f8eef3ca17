"""operator.toml read without pydantic: whatever the light reader reads, the schema reads alike."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bund.parties import operator_file
from bund.parties.config import OperatorFile, load_operator_config, operator_template
from bund.parties.errors import ConfigError
from bund.parties.operator_file import (
    OPERATOR_KEYS,
    OPERATOR_TLS_DEFAULTS,
    OperatorValues,
    well_formed,
)
from tests.conftest import Federation

NAMES = ["bank", "hospital-a", "a.b_c", "x" * 64]
BAD_NAMES = ["x" * 65, "", "bank\n", " bank", "-bank", "银行", "bank!"]
ADDRESSES = ["127.0.0.1:7443", "bank.example:1", "[::1]:7443", "h:65535"]
BAD_ADDRESSES = ["h:0", "h:65536", ":80", "h:", "h:8 0", "a b:1", "h:²", "h:٣", "h:1\n"]
TEXTS = ["ca.pem", " ", "../x/operator.pem", "银行.pem"]
OTHER = st.one_of(
    st.integers(-2, 70_000),
    st.booleans(),
    st.floats(allow_nan=False),
    st.lists(st.text(max_size=3), max_size=2),
    st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
)
#: Any value a file may hold where a key expects a name, an address or a path.
ANY = st.one_of(
    st.sampled_from([*NAMES, *BAD_NAMES, *ADDRESSES, *BAD_ADDRESSES, *TEXTS, ""]),
    st.text(max_size=12),
    OTHER,
)


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    """A valid operator.toml's keys, then up to three changes: a key set to anything, or gone."""
    doc: dict[str, Any] = draw(
        st.fixed_dictionaries(
            {"party": st.sampled_from(NAMES)},
            optional={
                "node": st.sampled_from(ADDRESSES),
                "port_file": st.sampled_from(TEXTS),
                "approver_key": st.sampled_from(TEXTS),
                "tls": st.fixed_dictionaries(
                    {}, optional={k: st.sampled_from(TEXTS) for k in ("ca", "cert", "key")}
                ),
            },
        )
    )
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from([*OPERATOR_KEYS, "prot_file", "tls.cert", "tls.certificate"]))
        table, _, sub = key.partition(".")
        value = draw(st.one_of(ANY, st.dictionaries(st.sampled_from(["ca", "key", "x"]), ANY)))
        if sub and isinstance(doc.get(table), dict):
            doc[table][sub] = value
        elif draw(st.booleans()):
            doc[table] = value
        else:
            doc.pop(table, None)
    return doc


def _schema_reads(doc: dict[str, Any]) -> OperatorValues | None:
    try:
        return operator_file._by_schema(doc, Path("operator.toml"))
    except ConfigError:
        return None


@settings(max_examples=600, deadline=None)
@given(doc=documents())
@example(doc={"party": "bank\n", "node": "127.0.0.1:7443"})
@example(doc={"party": "bank", "node": "127.0.0.1:7443\n"})
@example(doc={"party": "bank", "port_file": ""})
@example(doc={"party": "bank", "node": "h:1", "tls": {"cert": ""}})
def test_what_the_light_reader_reads_the_schema_reads_alike(doc: dict[str, Any]) -> None:
    light = well_formed(doc)
    if light is not None:
        assert _schema_reads(doc) == light


@pytest.mark.parametrize(
    "doc",
    [
        {"party": "bank", "node": "bank.example:7443"},
        {"party": "bank", "port_file": "../state/port", "approver_key": "approver.key"},
        {"party": "hospital-a", "node": "[::1]:1", "tls": {"ca": "fed.pem", "key": "k"}},
    ],
)
def test_a_well_formed_file_is_read_without_the_schema(doc: dict[str, Any]) -> None:
    assert well_formed(doc) is not None
    assert well_formed(doc) == _schema_reads(doc)


def test_the_light_reader_knows_the_schema_s_keys_and_defaults() -> None:
    assert set(OPERATOR_KEYS) == set(OperatorFile.model_fields)
    tls = OperatorFile.model_fields["tls"].get_default(call_default_factory=True)
    assert tls.model_dump() == OPERATOR_TLS_DEFAULTS


def _station(federation: Federation, tmp_path: Path, text: str) -> Path:
    station = tmp_path / "alice"
    shutil.copytree(federation.party_dir("bank") / "operator", station)
    (station / "operator.toml").write_text(text, encoding="utf-8")
    return station / "operator.toml"


@pytest.mark.parametrize(
    ("node", "port_file"), [("bank.example:7443", None), (None, "../bank/state/port")]
)
def test_what_operator_issue_writes_loads_without_pydantic(
    federation: Federation,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    node: str | None,
    port_file: str | None,
) -> None:
    def no_schema(doc: dict[str, Any], path: Path) -> OperatorValues:
        raise AssertionError("a well-formed operator.toml went to the schema")

    monkeypatch.setattr(operator_file, "_by_schema", no_schema)
    path = _station(federation, tmp_path, operator_template("bank", node, port_file))
    config = load_operator_config(path)
    assert config.party == "bank" and config.node == node
    assert config.port_file == (path.parent / port_file if port_file else None)
    assert config.tls.cert == path.parent / "operator.pem"


def test_the_credential_is_checked_on_the_light_path_too(
    federation: Federation, tmp_path: Path
) -> None:
    # The bank's node certificate is not an operator credential: refused before any call.
    path = _station(
        federation, tmp_path, 'party = "bank"\nnode = "h:1"\n[tls]\ncert = "../node.pem"\n'
    )
    shutil.copy(federation.party_dir("bank") / "node.pem", tmp_path / "node.pem")
    assert well_formed({"party": "bank", "node": "h:1", "tls": {"cert": "../node.pem"}})
    with pytest.raises(ConfigError, match="is not an operator credential of bank"):
        load_operator_config(path)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('party = "bank"\nprot_file = "p"\n', "prot_file: unknown key (unknown keys are refused"),
        ('party = "bank"\nprot_file = "p"\n', "did you mean 'port_file'?"),
        ('party = "bank"\nnode = "bank.example"\n', 'node must be "HOST:PORT" with a port from 1'),
        ('node = "h:1"\n', "party is missing: the party whose node this operator works"),
        ('party = "bank"\nnode = "h:1"\n[tls]\ncertificate = "x"\n', "did you mean 'tls.cert'?"),
        ('party = "bank"\nnode = "h:1"\nport_file = "p"\n', "give exactly one of node"),
        ('party = "bank"\n', "give exactly one of node"),
    ],
)
def test_a_malformed_file_gets_the_schema_s_words(
    federation: Federation, tmp_path: Path, text: str, words: str
) -> None:
    path = _station(federation, tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_operator_config(path)
    assert str(caught.value).startswith(str(path.resolve())) and words in str(caught.value)
