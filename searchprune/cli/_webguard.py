"""Who may use ``searchprune dashboard``: a WSGI middleware in front of optuna-dashboard's app.

- **Host.** A request whose ``Host`` header is not an address of this server (the ``--host`` it
  listens on with its port; for a loopback bind also ``127.0.0.1``, ``localhost`` and
  ``[::1]``) is refused with 403. A web page that rebinds its own DNS name to 127.0.0.1 reaches
  the port, but its requests still name its own host, so they stop here. On a wildcard bind
  (``0.0.0.0``, ``::``) the machine's names cannot be listed: any Host passes and the token
  guards the server.
- **Token.** When set, every request carries it: a header ``Authorization: Bearer TOKEN``, the
  cookie this middleware sets, or ``?token=TOKEN`` once, which sets that cookie (HttpOnly,
  SameSite=Strict, so no other site's page sends it) and redirects to the same page without
  the token. A request without it gets 401.
- **Read-only** unless ``allow_write``: only GET, HEAD and OPTIONS pass (403 otherwise), so a
  browser cannot delete or rename studies, tell trials or upload artifacts. With
  ``allow_write``, a write whose ``Origin`` is another site is still refused (a cross-site form
  can post to 127.0.0.1 without any DNS trick).

:func:`serve` runs it on wsgiref (as optuna-dashboard's own ``run_server`` does), with an access
log that never shows a token.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
import socket
from collections.abc import Callable, Iterable
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

__all__ = ["TOKEN_ENV", "DashboardGuard", "allowed_hosts", "is_loopback", "is_wildcard", "serve"]

# A token chosen by the user (never on the command line, which ``ps`` shows to everyone).
TOKEN_ENV = "SEARCHPRUNE_DASHBOARD_TOKEN"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
App = Callable[[Environ, StartResponse], Iterable[bytes]]


def is_wildcard(host: str) -> bool:
    """``0.0.0.0``, ``::`` or empty: every interface of the machine."""
    return host in ("", "0.0.0.0", "::")


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allowed_hosts(host: str, port: int) -> frozenset[str] | None:
    """The ``Host`` header values that name this server (lower case), or None for any (a
    wildcard bind)."""
    if is_wildcard(host):
        return None
    names = {host.lower()} | (set(_LOOPBACK_NAMES) if is_loopback(host) else set())
    out: set[str] = set()
    for name in names:
        name = f"[{name}]" if ":" in name and not name.startswith("[") else name
        out.add(f"{name}:{port}")
        if port == 80:  # a browser leaves the default port out
            out.add(name)
    return frozenset(out)


class DashboardGuard:
    """Wraps a WSGI ``app``; see the module docstring for what it refuses."""

    def __init__(self, app: App, *, host: str, port: int, token: str | None = None,
                 allow_write: bool = False) -> None:
        self.app = app
        self.hosts = allowed_hosts(host, port)
        self.token = token
        self.allow_write = allow_write
        self.cookie = f"searchprune_dashboard_{port}"  # cookies ignore ports: one per server

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        host = str(environ.get("HTTP_HOST", "")).lower()
        if self.hosts is not None and host not in self.hosts:
            return _refuse(start_response, "403 Forbidden",
                           f"forbidden: Host '{host}' is not this dashboard's address; open it "
                           f"as http://{sorted(self.hosts)[0]}/dashboard/")
        if self.token is not None:
            refused = self._check_token(environ, start_response)
            if refused is not None:
                return refused
        method = str(environ.get("REQUEST_METHOD", "GET")).upper()
        if method not in _SAFE_METHODS:
            if not self.allow_write:
                return _refuse(start_response, "403 Forbidden",
                               "forbidden: this dashboard is read-only; start it with "
                               "'searchprune dashboard --allow-write' to change studies")
            if not self._same_origin(environ, host):
                return _refuse(start_response, "403 Forbidden",
                               "forbidden: a change requested by another site's page")
        return self.app(environ, start_response)

    def _check_token(self, environ: Environ, start_response: StartResponse
                     ) -> Iterable[bytes] | None:
        """None when the request carries the token; else the 401 (or the redirect that sets
        the cookie after ``?token=``)."""
        query = parse_qsl(str(environ.get("QUERY_STRING", "")), keep_blank_values=True)
        given = [v for k, v in query if k == "token"]
        if given:
            if not self._matches(given[-1]):
                return self._unauthorized(start_response)
            rest = urlencode([(k, v) for k, v in query if k != "token"])
            path = str(environ.get("SCRIPT_NAME", "")) + str(environ.get("PATH_INFO", "/"))
            cookie = f"{self.cookie}={self.token}; Path=/; HttpOnly; SameSite=Strict"
            start_response("303 See Other", [("Location", path + (f"?{rest}" if rest else "")),
                                             ("Set-Cookie", cookie), ("Content-Length", "0")])
            return [b""]
        if self._matches(_bearer(environ)) or self._matches(self._cookie(environ)):
            return None
        return self._unauthorized(start_response)

    def _matches(self, value: str | None) -> bool:
        if value is None or self.token is None:
            return False
        return hmac.compare_digest(value.encode(), self.token.encode())

    def _cookie(self, environ: Environ) -> str | None:
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(str(environ.get("HTTP_COOKIE", "")))
        except Exception:  # noqa: BLE001  # a malformed Cookie header carries no token
            return None
        morsel = jar.get(self.cookie)
        return morsel.value if morsel is not None else None

    def _same_origin(self, environ: Environ, host: str) -> bool:
        """False when the browser says another site asked (``Origin``, ``Sec-Fetch-Site``)."""
        if environ.get("HTTP_SEC_FETCH_SITE", "same-origin") not in ("same-origin", "none"):
            return False
        origin = environ.get("HTTP_ORIGIN")
        if origin is None:
            return True  # not sent by a browser's cross-site request
        netloc = urlsplit(str(origin)).netloc.lower()
        return netloc == host if self.hosts is None else netloc in self.hosts

    @staticmethod
    def _unauthorized(start_response: StartResponse) -> Iterable[bytes]:
        return _refuse(start_response, "401 Unauthorized",
                       "unauthorized: this dashboard needs its token; open the address printed "
                       f"when it started (or the one with ?token= and the value of {TOKEN_ENV})")


def _bearer(environ: Environ) -> str | None:
    value = str(environ.get("HTTP_AUTHORIZATION", ""))
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _refuse(start_response: StartResponse, status: str, message: str) -> Iterable[bytes]:
    body = (message + "\n").encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                            ("Content-Length", str(len(body)))])
    return [body]


_TOKEN_IN_LOG = re.compile(r"token=[^&\s\"]*")


class _Handler(WSGIRequestHandler):
    """wsgiref's request handler, whose access log shows no token."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  # wsgiref's name
        super().log_message(format, *(_TOKEN_IN_LOG.sub("token=***", str(a)) for a in args))


class _Server6(WSGIServer):
    address_family = socket.AF_INET6


def serve(app: App, host: str, port: int) -> None:
    """Serve ``app`` on ``host:port`` (IPv4 or IPv6) until Ctrl-C."""
    server_class = _Server6 if ":" in host else WSGIServer
    with make_server(host, port, app, server_class=server_class,
                     handler_class=_Handler) as server:
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
