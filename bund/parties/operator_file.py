"""``operator.toml``, the TLS paths a client presents, and what ``bund job ...`` is pointed at.

An operator's ``operator.toml`` says where the party's node listens and which credential
``bund job ...`` presents to it. Its schema is :class:`bund.parties.config.OperatorFile`
(pydantic, like every file a person writes): the one authority on what the file may hold and on
the words of every error. Importing pydantic costs a status command a third of its start, so a
*well-formed* file (only the schema's keys, each value of its kind and passing the schema's own
checks of names, addresses and non-empty text, from :mod:`bund.parties.tomlfile`) is read here
directly, and any other file goes to the schema, which accepts it or words what is wrong.
Whatever this reads, the schema reads alike (``tests/parties/test_operator_file.py``).

The credential check, where asked for, is the same either way: the certificate must carry the
operator usage and name the party (``cryptography.x509``, in :mod:`bund.parties.certificates`).
The ``bund`` command leaves it to the node, which refuses any other certificate in words.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from bund.parties.errors import ConfigError
from bund.parties.tomlfile import is_name, peer_address, read_toml

if TYPE_CHECKING:
    from bund.parties.config import NodeConfig

_MIB = 1 << 20

#: ``operator.toml``'s top-level keys (those of ``OperatorFile``).
OPERATOR_KEYS: Final = ("party", "node", "port_file", "approver_key", "tls")
#: Its ``[tls]`` keys and their defaults (``OperatorFile``'s ``[tls]`` takes them from here).
OPERATOR_TLS_DEFAULTS: Final = {"ca": "ca.pem", "cert": "operator.pem", "key": "operator.key"}


@dataclass(frozen=True)
class TlsPaths:
    """TLS material: the federation CA, and a node's or an operator's certificate with its key."""

    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class OperatorConfig:
    """What the ``bund`` command needs to call its party's node as an operator.

    Read from an operator's ``operator.toml`` (:func:`load_operator_config`), or from a
    ``node.toml`` on the node's host with its ``[operators] credential`` (:func:`load_cli_config`).
    """

    party: str
    #: ``HOST:PORT`` of the node, or None to read the port from ``port_file``.
    node: str | None
    port_file: Path | None
    #: The federation CA (verifies the node) and the operator credential.
    tls: TlsPaths
    #: The approver's Ed25519 private key, if this operator approves jobs.
    approver_key: Path | None = None
    max_message_bytes: int = 8 * _MIB
    source: Path | None = field(default=None, compare=False)


@dataclass(frozen=True)
class OperatorValues:
    """``operator.toml``'s values as written; paths are relative to the file."""

    party: str
    node: str | None
    port_file: str | None
    approver_key: str | None
    ca: str
    cert: str
    key: str


def _text(value: object) -> bool:
    """Whether ``value`` is what the schema's ``Text`` takes: a non-empty string."""
    return type(value) is str and value != ""


def _address(value: object) -> bool:
    """Whether ``value`` is what the schema's ``PeerAddress`` takes (its own check)."""
    if type(value) is not str:
        return False
    try:
        peer_address(value)
    except ValueError:
        return False
    return True


def well_formed(doc: dict[str, Any]) -> OperatorValues | None:
    """``doc``'s values when it is plainly a valid ``operator.toml``, else None (ask the schema).

    Only the schema's keys, each value of its kind and passing the schema's own check. It never
    refuses a file: a None sends the file to the schema, which words what is wrong (or accepts
    a file this does not recognise).
    """
    tls = doc.get("tls", {})
    if not set(doc) <= set(OPERATOR_KEYS) or type(tls) is not dict:
        return None
    if not set(tls) <= set(OPERATOR_TLS_DEFAULTS):
        return None
    party = doc.get("party")
    if type(party) is not str or not is_name(party):
        return None
    node, port_file, approver_key = doc.get("node"), doc.get("port_file"), doc.get("approver_key")
    if node is not None and not _address(node):
        return None
    if not all(v is None or _text(v) for v in (port_file, approver_key)):
        return None
    paths = {**OPERATOR_TLS_DEFAULTS, **tls}
    if not all(_text(v) for v in paths.values()):
        return None
    return OperatorValues(party, node, port_file, approver_key, **paths)


def _by_schema(doc: dict[str, Any], path: Path) -> OperatorValues:
    """``doc``'s values as the schema reads them; ``ConfigError`` listing every problem."""
    from bund.parties.config import OperatorFile
    from bund.parties.schema import parse_file

    file = parse_file(OperatorFile, doc, path, ConfigError)
    return OperatorValues(
        party=file.party,
        node=file.node,
        port_file=file.port_file,
        approver_key=file.approver_key,
        ca=file.tls.ca,
        cert=file.tls.cert,
        key=file.tls.key,
    )


def _read(path: Path) -> dict[str, Any]:
    return read_toml(path, "configuration file", ConfigError)


def load_operator_config(path: Path, check_credential: bool = True) -> OperatorConfig:
    """Read and validate an ``operator.toml``; paths are relative to the file.

    ``check_credential`` reads ``tls.cert`` (``cryptography.x509``: 40 ms to load) and refuses
    one that is not an operator credential of the party before anything is sent. The ``bund``
    command leaves that to the node, which refuses any other certificate in words (its own node
    certificate with PERMISSION_DENIED, another party's at the TLS handshake).

    Raises:
        ConfigError: Naming the file and the key to fix.
    """
    path = path.resolve()
    doc = _read(path)
    values = well_formed(doc) or _by_schema(doc, path)
    if (values.node is None) == (values.port_file is None):
        raise ConfigError(f'{path}: give exactly one of node = "HOST:PORT" and port_file = "PATH"')
    base = path.parent
    tls = TlsPaths(ca=base / values.ca, cert=base / values.cert, key=base / values.key)
    if check_credential:
        _check_credential(path, tls.cert, values.party)
    return OperatorConfig(
        party=values.party,
        node=values.node,
        port_file=base / values.port_file if values.port_file is not None else None,
        tls=tls,
        approver_key=base / values.approver_key if values.approver_key is not None else None,
        source=path,
    )


def _check_credential(path: Path, cert: Path, party: str) -> None:
    """Refuse ``cert`` unless it is an operator credential of ``party``."""
    from bund.parties.certificates import IdentityError, certificate_facts

    try:
        facts = certificate_facts(cert.read_bytes())
    except (OSError, IdentityError) as exc:
        raise ConfigError(f"{path}: tls.cert: {exc}") from None
    if not facts.operator_usage or facts.organisation != party:
        raise ConfigError(
            f"{path}: tls.cert is not an operator credential of {party} "
            f"({facts.describe()}); `bund operator issue` makes one"
        )


def is_operator_file(path: Path) -> bool:
    """Whether ``path`` is an operator's file rather than a ``node.toml``.

    It is when it is named ``operator.toml`` or has a ``node`` or ``port_file`` key (a
    ``node.toml`` has neither).

    Raises:
        ConfigError: The file is missing or not TOML.
    """
    if path.name == "operator.toml":
        return True
    doc = _read(path)
    return "node" in doc or "port_file" in doc


def load_cli_config(
    path: Path, check_credential: bool = True
) -> tuple[OperatorConfig, NodeConfig | None]:
    """What a ``bund job ...`` command was pointed at: an ``operator.toml`` or a ``node.toml``.

    A file named ``operator.toml``, or one with a ``node`` or ``port_file`` key, is an operator's
    file (``check_credential``: see :func:`load_operator_config`); anything else is read as a
    ``node.toml`` (on the node's host, with the node's whole configuration:
    :func:`bund.parties.config.load_config`), whose configuration is returned too.

    Raises:
        ConfigError: The file is invalid, or a node.toml names no operator credential.
    """
    if is_operator_file(path):
        return load_operator_config(path, check_credential), None
    from bund.parties.config import load_config, operator_of

    config = load_config(path)
    return operator_of(config), config
