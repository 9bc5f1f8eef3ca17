"""Serving the console with uvicorn: on loopback by default, else TLS with client certificates.

:func:`open_console` builds what ``bund console`` serves from its files (a ``node.toml`` or
``operator.toml``, or a ``regulator.toml``); :class:`ConsoleServer` serves an app on a socket it
binds first, so the URL it prints names the real port (``--port 0`` lets the OS choose), and a
test can run it in a thread and stop it.
"""

from __future__ import annotations

import socket
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn
from starlette.applications import Starlette

from bund.parties.console.app import LOOPBACK_HOSTS, PartyAccess, RegulatorAccess, create_app
from bund.parties.console.security import Listen, check_listen, is_loopback
from bund.parties.errors import ConfigError


@dataclass
class ConsoleServer:
    """An app served by uvicorn on ``listen``, bound when constructed.

    Attributes:
        app: The console.
        listen: Where, and the TLS for a non-loopback address.
    """

    app: Starlette
    listen: Listen
    _sock: socket.socket = field(init=False)
    _server: uvicorn.Server = field(init=False)
    _thread: threading.Thread | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        family = socket.AF_INET6 if ":" in self.listen.host.strip("[]") else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((self.listen.host.strip("[]"), self.listen.port))
        self._sock.listen(128)  # browsers may connect at once; uvicorn accepts when it is up
        tls = self.listen
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=2,
            ssl_certfile=str(tls.cert) if tls.cert else None,
            ssl_keyfile=str(tls.key) if tls.key else None,
            ssl_ca_certs=str(tls.client_ca) if tls.client_ca else None,
            ssl_cert_reqs=ssl.CERT_REQUIRED if tls.client_ca else ssl.CERT_NONE,
        )
        self._server = uvicorn.Server(config)

    @property
    def port(self) -> int:
        """The port it listens on."""
        port: int = self._sock.getsockname()[1]
        return port

    @property
    def url(self) -> str:
        """The console's address for a browser."""
        scheme = "https" if self.listen.tls else "http"
        host = self.listen.host
        host = f"[{host}]" if ":" in host and not host.startswith("[") else host
        return f"{scheme}://{host}:{self.port}/"

    def run(self) -> None:
        """Serve until SIGINT/SIGTERM (or :meth:`stop`)."""
        self._server.run(sockets=[self._sock])

    def start(self) -> None:
        """Serve in a background thread (tests)."""
        self._thread = threading.Thread(target=self.run, name="bund-console", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and wait for the thread."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._sock.close()


def allowed_hosts(listen: Listen) -> tuple[str, ...]:
    """The ``Host`` names the console answers to: loopback names, or the address it serves."""
    return LOOPBACK_HOSTS if is_loopback(listen.host) else (listen.host.strip("[]"),)


def make_server(
    listen: Listen,
    allow_remote: bool,
    party: PartyAccess | None = None,
    regulator: RegulatorAccess | None = None,
) -> ConsoleServer:
    """A console server for a party or a regulator, after checking where it may listen.

    Off loopback the console is shared by whoever holds a client certificate: it holds no
    approver key.

    Raises:
        ConfigError: A non-loopback address without ``allow_remote``, TLS or client CA.
    """
    check_listen(listen, allow_remote)
    if party is not None and party.approver_key is not None and not is_loopback(listen.host):
        raise ConfigError(
            "a console served to others holds no approver key: pass --shared (approvers approve "
            "on their own machine)"
        )
    app = create_app(party, regulator, allowed_hosts(listen))
    return ConsoleServer(app, listen)


def approver_key_of(given: Path | None, configured: Path | None, shared: bool) -> Path | None:
    """The approver key a console uses: none when shared, else the given or configured one.

    A configured key that is not on this machine means no approval is offered.

    Raises:
        ConfigError: A key given on the command line that does not exist, or with ``--shared``.
    """
    if shared:
        if given is not None:
            raise ConfigError("a shared console holds no approver key: drop --approver-key")
        return None
    if given is not None:
        if not given.is_file():
            raise ConfigError(f"approver key {given} not found")
        return given
    return configured if configured is not None and configured.is_file() else None
