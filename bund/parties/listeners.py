"""What a node listens on besides its gRPC port, and why an address cannot be bound.

:class:`HealthListener` is the node's plain-HTTP health check (``[health] listen`` in
``node.toml``): a load balancer or an orchestrator asks it, without a client certificate, whether
the node serves. It answers ``GET`` and ``HEAD`` on any path with ``200 serving`` or
``503 not serving`` and nothing else: no job, no party, no version, not even in its ``Server``
header, so it can face a network that the mTLS port does not trust. Every other method gets
``405``. It reads one flag, which the node sets when its gRPC server serves and clears when it
begins to stop.

:func:`listen_failure` turns "could not bind" into one line that says what to do: a port in use,
an address that is not this host's, a port that needs privileges, a host name that does not
resolve.
"""

from __future__ import annotations

import errno
import logging
import socket
import socketserver
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from bund.parties.errors import ConfigError

log = logging.getLogger("bund.node")


class ListenError(ConfigError):
    """An address in ``node.toml`` that the node cannot listen on; the message says what to do."""


def split_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:7443`` for IPv6) as ``(host, port)``; ValueError if malformed.

    >>> split_address("[::1]:7443")
    ('::1', 7443)
    """
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f'{address!r} is not "HOST:PORT"')
    return host.strip("[]"), int(port)


def _probe(host: str, port: int) -> OSError | None:
    """Why binding ``host:port`` fails now, trying each of its addresses; None if it does not."""
    for family, kind, proto, _, sockaddr in socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM
    ):
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds
            try:
                probe.bind(sockaddr)
            except OSError as exc:
                return exc
    return None


def listen_failure(
    address: str, key: str, source: Path | None, cause: OSError | None = None
) -> ListenError:
    """Why ``address`` cannot be bound, as one line that says what to do.

    Args:
        address: ``HOST:PORT`` as configured.
        key: The ``node.toml`` key that holds it (``listen``, ``health.listen``).
        source: The ``node.toml`` it came from, to name in the message.
        cause: The bind's own error; without one (gRPC gives none) the address is tried with
            a plain socket to find it.
    """
    where = str(source) if source is not None else "node.toml"
    host, port = split_address(address)
    fix = f"change {key} in {where}"
    try:
        reason = cause if cause is not None and cause.errno else _probe(host, port)
    except socket.gaierror as exc:
        reason = exc
    if isinstance(reason, socket.gaierror):
        return ListenError(f"cannot listen on {address}: host {host!r} does not resolve; {fix}")
    if reason is None:
        return ListenError(
            f"could not listen on {address}, though the address is free now: try again, or set "
            "GRPC_VERBOSITY=debug to see gRPC's reason"
        )
    if reason.errno == errno.EADDRINUSE:
        return ListenError(f"port {port} is in use: stop the other process or {fix}")
    if reason.errno == errno.EADDRNOTAVAIL:
        return ListenError(f"{host} is not an address of this host: {fix}")
    if reason.errno == errno.EACCES:
        return ListenError(
            f"port {port} needs privileges (ports below 1024): {fix}, or grant the service "
            "CAP_NET_BIND_SERVICE"
        )
    return ListenError(f"cannot listen on {address} ({reason.strerror}): {fix}")


class _HealthHandler(BaseHTTPRequestHandler):
    """Answers GET and HEAD with the node's serving state; 405 to everything else."""

    server: _HealthServer
    protocol_version = "HTTP/1.0"

    def version_string(self) -> str:
        """No software name or version: the check tells nothing but serving or not."""
        return "bund"

    def _answer(self, body: bool) -> None:
        serving = self.server.serving.is_set()
        status = HTTPStatus.OK if serving else HTTPStatus.SERVICE_UNAVAILABLE
        text = b"serving\n" if serving else b"not serving\n"
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(text)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if body:
            self.wfile.write(text)

    def do_GET(self) -> None:  # noqa: N802 - the name http.server dispatches to
        """The serving state, with a one-word body."""
        self._answer(body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        """The serving state, status only."""
        self._answer(body=False)

    def _refuse(self) -> None:
        self.send_response(HTTPStatus.METHOD_NOT_ALLOWED)
        self.send_header("Allow", "GET, HEAD")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse  # noqa: N815

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base's name
        """Probes come every few seconds: not worth a line of the node log each."""


class _HealthServer(ThreadingHTTPServer):
    daemon_threads = True
    serving: threading.Event

    def server_bind(self) -> None:
        """Bind, without the reverse DNS look-up of ``HTTPServer`` (it can stall a start)."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "bund", self.server_address[1]


class _HealthServer6(_HealthServer):
    address_family = socket.AF_INET6


class HealthListener:
    """The plain-HTTP health check of a node, on its own address and thread.

    It answers ``503 not serving`` until :meth:`set_serving` says otherwise.

    Args:
        address: ``HOST:PORT`` to listen on (port 0: the OS picks one; see :attr:`port`).
        source: The ``node.toml`` that configured it, named in a bind error.

    Raises:
        ListenError: The address cannot be bound (in use, not this host's, privileged).
    """

    def __init__(self, address: str, source: Path | None = None) -> None:
        host, port = split_address(address)
        kind = _HealthServer6 if ":" in host else _HealthServer
        try:
            self._server: _HealthServer = kind((host, port), _HealthHandler)
        except OSError as exc:
            raise listen_failure(address, "health.listen", source, exc) from None
        self._server.serving = threading.Event()
        #: The port it bound.
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="bund-health", daemon=True
        )
        self._thread.start()
        log.info("health check on http://%s:%d/ (no client certificate)", host, self.port)

    def set_serving(self, serving: bool) -> None:
        """Answer 200 (``serving``) or 503 from now on."""
        if serving:
            self._server.serving.set()
        else:
            self._server.serving.clear()

    def close(self) -> None:
        """Stop answering and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
