"""The plain-HTTP health check, and the one line a node gives for an address it cannot bind."""

from __future__ import annotations

import errno
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from bund.parties.listeners import HealthListener, ListenError, listen_failure, split_address


def _ask(port: int, method: str = "GET", path: str = "/") -> tuple[int, bytes, dict[str, str]]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 - http on loopback
            return answer.status, answer.read(), dict(answer.headers)
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read(), dict(refused.headers)


@pytest.fixture
def health() -> Iterator[HealthListener]:
    listener = HealthListener("127.0.0.1:0")
    yield listener
    listener.close()


def test_it_answers_serving_or_not_serving_and_nothing_else(health: HealthListener) -> None:
    assert _ask(health.port)[:2] == (503, b"not serving\n")  # until the node serves
    health.set_serving(True)
    status, body, headers = _ask(health.port, path="/healthz")
    assert (status, body) == (200, b"serving\n")
    assert headers["Server"] == "bund" and "Python" not in str(headers)  # no version
    assert _ask(health.port, "HEAD")[:2] == (200, b"")
    for method in ("POST", "PUT", "DELETE"):
        assert _ask(health.port, method)[0] == 405
    health.set_serving(False)
    assert _ask(health.port, path="/jobs")[:2] == (503, b"not serving\n")


def test_a_busy_port_says_what_to_do(health: HealthListener) -> None:
    with pytest.raises(ListenError) as refused:
        HealthListener(f"127.0.0.1:{health.port}", Path("/etc/bund/node.toml"))
    assert str(refused.value) == (
        f"port {health.port} is in use: stop the other process or change health.listen in "
        "/etc/bund/node.toml"
    )
    assert str(listen_failure(f"127.0.0.1:{health.port}", "listen", None)) == (
        f"port {health.port} is in use: stop the other process or change listen in node.toml"
    )


def test_other_bind_failures_say_what_to_do() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    assert "though the address is free now" in str(
        listen_failure(f"127.0.0.1:{free}", "listen", None)
    )
    gone = listen_failure("nohost.invalid:7443", "listen", None)
    assert "does not resolve; change listen in node.toml" in str(gone)
    not_here = OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")
    assert str(listen_failure("192.0.2.1:7443", "listen", None, not_here)) == (
        "192.0.2.1 is not an address of this host: change listen in node.toml"
    )
    privileged = OSError(errno.EACCES, "Permission denied")
    assert "needs privileges" in str(listen_failure("0.0.0.0:443", "listen", None, privileged))
    assert split_address("[::1]:7443") == ("::1", 7443)
    with pytest.raises(ValueError, match="HOST:PORT"):
        split_address("7443")
