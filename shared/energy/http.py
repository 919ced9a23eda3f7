"""The one HTTP client of the energy sources that talk to a server (Redfish, Prometheus).

GET a URL, decode its JSON body, and turn every failure into an ``HttpFailure`` whose message
is safe to log. The rules that keep secrets where they belong live here once, for every source:

- URLs are shown redacted (``redact_url``: no userinfo, no query string), and a URL carrying
  ``user:password@`` is refused (``check_http_url``): such a URL ends up in the experiment
  config, which the WebUI shows, and in every log line that prints it.
- Redirects are never followed: urllib would replay the Authorization header to the new
  location, whatever its host or scheme.
- TLS is verified by default (``make_ssl_context``); turning it off is logged as a warning.
- A body larger than ``MAX_BODY_BYTES`` is refused rather than read into memory.
- A request has a total deadline (``shared.energy.deadline``), not only a per-read socket
  timeout: a server that trickles bytes cannot hold the caller past ``timeout_s``.

Whether proxies from the environment apply is the caller's choice (``use_env_proxies``): a
BMC on a management network must not be reached through a proxy with Basic credentials, a
site's Prometheus may well sit behind one.
"""
from __future__ import annotations

import functools
import http.client
import json
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, List, Mapping, Optional

from .deadline import Deadline
from .redact import energy_logger
from .sources.base import SourceUnavailable

log = energy_logger(__name__)

# A BMC or Prometheus answer is a few KiB; a larger body is not a document of theirs (and must
# not eat memory).
MAX_BODY_BYTES = 4 * 1024 * 1024


def redact_url(url: str) -> str:
    """The URL as it may appear in a log line: userinfo and query string removed."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unparsable URL>"
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = host if port is None else f"{host}:{port}"
    if parts.username is not None or parts.password is not None:
        netloc = "***@" + netloc
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def check_http_url(url: str, env_name: str, secret_env: str) -> urllib.parse.SplitResult:
    """Parse an http(s) URL from the environment; raise SourceUnavailable naming the variable.

    URLs carrying ``user:password@`` are refused: such a URL ends up in the experiment
    config's environment (visible in the WebUI) and in every log that prints it.
    """
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError as err:
        raise SourceUnavailable(f"{env_name}={redact_url(url)} is not a valid URL ({err})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SourceUnavailable(f"{env_name}={redact_url(url)} must be an http:// or https:// "
                                "URL with a host name")
    if parts.username is not None or parts.password is not None:
        raise SourceUnavailable(
            f"{env_name}={redact_url(url)} contains credentials (user:password@); remove them "
            f"from the URL and put them in the file named by {secret_env}: a URL is shown in "
            "the experiment config and in logs")
    return parts


def make_ssl_context(ca_bundle: Optional[str], insecure: bool, what: str) -> ssl.SSLContext:
    """A client TLS context: system CAs, or ``ca_bundle`` (PEM) when given; verification off
    only when ``insecure`` (logged as a warning, naming ``what``)."""
    if ca_bundle:
        try:
            ctx = ssl.create_default_context(cafile=ca_bundle)
        except (OSError, ssl.SSLError) as err:
            raise SourceUnavailable(f"{what}: cannot load the CA bundle {ca_bundle} ({err})") from None
    else:
        ctx = ssl.create_default_context()
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        log.warning("%s: TLS certificate verification is OFF (insecure flag set); anyone on "
                    "the path can impersonate the server", what)
    return ctx


class HttpFailure(Exception):
    """A request that did not give a JSON document; the message is safe to log (no secrets,
    URL redacted). ``status`` is the HTTP status when there was one."""

    def __init__(self, message: str, status: Optional[int] = None) -> None:
        super().__init__(message)
        self.status = status


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse redirects: urllib would replay the Authorization header to the new location,
    whatever its host or scheme."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[override]
        return None  # urllib then raises HTTPError with the 3xx status


class _DeadlineConnection:
    """Mixin of an http.client connection: every socket it opens is shut down by the
    request's deadline watchdog, which ends a read in progress wherever it is blocked."""

    def __init__(self, *args: Any, deadline: Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        self._deadline = deadline
        self._create_connection = self._connect_guarded

    def _connect_guarded(self, address: Any, timeout: Any = None, source_address: Any = None
                         ) -> socket.socket:
        wait = self._deadline.wait_s(timeout if isinstance(timeout, (int, float)) else None)
        sock = socket.create_connection(address, wait, source_address)
        self._deadline.on_expiry(lambda: sock.shutdown(socket.SHUT_RDWR))
        return sock


class _DeadlineHTTPConnection(_DeadlineConnection, http.client.HTTPConnection):
    pass


class _DeadlineHTTPSConnection(_DeadlineConnection, http.client.HTTPSConnection):
    pass


class _DeadlineHTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req):  # type: ignore[override]
        return self.do_open(functools.partial(_DeadlineHTTPConnection,
                                              deadline=req.energy_deadline), req)


class _DeadlineHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, context: Optional[ssl.SSLContext]) -> None:
        super().__init__(context=context)
        self._energy_context = context

    def https_open(self, req):  # type: ignore[override]
        return self.do_open(functools.partial(_DeadlineHTTPSConnection,
                                              deadline=req.energy_deadline), req,
                            context=self._energy_context)


class JsonHttpClient:
    """GET a URL, return its JSON body. Every failure becomes an ``HttpFailure`` whose message
    names the (redacted) URL and what went wrong."""

    def __init__(self, *, timeout_s: float, headers: Mapping[str, str],
                 ssl_context: Optional[ssl.SSLContext], use_env_proxies: bool,
                 tls_hint: str = "") -> None:
        self.timeout_s = timeout_s
        self._headers = dict(headers)
        self._tls_hint = tls_hint
        handlers: List[urllib.request.BaseHandler] = [_NoRedirect(), _DeadlineHTTPHandler(),
                                                      _DeadlineHTTPSHandler(ssl_context)]
        if not use_env_proxies:
            handlers.append(urllib.request.ProxyHandler({}))
        self._opener = urllib.request.build_opener(*handlers)

    def get_json(self, url: str, deadline: Optional[Deadline] = None) -> Any:
        """The decoded JSON document at ``url``; raises HttpFailure.

        ``deadline`` bounds the whole request (connect, TLS, headers, body); default
        ``timeout_s`` from now. Pass one deadline to several calls to bound them together.
        """
        if deadline is None:
            with Deadline(self.timeout_s, redact_url(url)) as own:
                return self.get_json(url, own)
        shown = redact_url(url)
        request = urllib.request.Request(url, headers=self._headers, method="GET")
        request.energy_deadline = deadline  # type: ignore[attr-defined]
        if deadline.expired:
            raise self._deadline_failure(deadline, shown)
        try:
            with self._opener.open(request, timeout=deadline.wait_s(self.timeout_s)) as response:
                body = response.read(MAX_BODY_BYTES + 1)
        except urllib.error.HTTPError as err:
            if deadline.fired:
                raise self._deadline_failure(deadline, shown) from None
            status, reason = err.code, err.reason
            location = err.headers.get("Location") if err.headers else None
            detail = _error_detail(err)
            err.close()
            if 300 <= status < 400:
                raise HttpFailure(
                    f"HTTP {status} redirect from {shown} to "
                    f"{redact_url(location) if location else '?'}; redirects are not followed "
                    "(credentials must not travel to another URL): configure the final URL",
                    status) from None
            raise HttpFailure(f"HTTP {status} {reason} from {shown}{detail}", status) from None
        except urllib.error.URLError as err:
            if deadline.fired:
                raise self._deadline_failure(deadline, shown) from None
            raise self._connection_failure(err.reason, shown) from None
        except (http.client.HTTPException, OSError) as err:
            if deadline.fired:
                raise self._deadline_failure(deadline, shown) from None
            raise self._connection_failure(err, shown) from None
        if deadline.fired:  # a body cut short by the watchdog (no Content-Length): not data
            raise self._deadline_failure(deadline, shown)
        if len(body) > MAX_BODY_BYTES:
            raise HttpFailure(f"response from {shown} is larger than {MAX_BODY_BYTES} bytes; "
                              "not a Redfish/Prometheus JSON document")
        try:
            return json.loads(body)
        except ValueError:  # JSONDecodeError and UnicodeDecodeError
            raise HttpFailure(f"response from {shown} is not valid JSON "
                              f"({len(body)} bytes)") from None

    def _deadline_failure(self, deadline: Deadline, shown: str) -> HttpFailure:
        return HttpFailure(f"no answer from {shown} within {deadline.seconds:g} s (timeout); "
                           "the limit is for the whole request: a server that sends too "
                           "slowly counts as not answering")

    def _connection_failure(self, reason: Any, shown: str) -> HttpFailure:
        if isinstance(reason, ssl.SSLCertVerificationError):
            hint = f"; {self._tls_hint}" if self._tls_hint else ""
            return HttpFailure(f"TLS certificate verification failed for {shown} "
                               f"({reason.verify_message}){hint}")
        if isinstance(reason, TimeoutError):
            return HttpFailure(f"no answer from {shown} within {self.timeout_s:g} s (timeout)")
        if isinstance(reason, BaseException):
            return HttpFailure(f"cannot read {shown}: {type(reason).__name__}: {reason}")
        return HttpFailure(f"cannot read {shown}: {reason}")


def _error_detail(err: urllib.error.HTTPError) -> str:
    """The server's own explanation from an error body, if it is JSON: Prometheus'
    ``{"errorType", "error"}`` or Redfish's ``{"error": {"code", "message"}}``; else ''."""
    try:
        doc = json.loads(err.read(64 * 1024))
    except Exception:  # no body, not JSON, connection gone: the status line says enough
        return ""
    error = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(error, str):
        text = f"{doc.get('errorType', 'error')}: {error}"
    elif isinstance(error, dict):
        text = str(error.get("message") or error.get("code") or "")
    else:
        return ""
    return f" ({text[:300]})" if text else ""
