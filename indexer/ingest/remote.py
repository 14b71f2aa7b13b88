"""Fetching a bulk job's http(s) URL into a worker's scratch folder, safely.

A URL comes from a client, and the worker fetching it sits inside the deployment's network, so a URL must never
make it reach what the client could not (server-side request forgery). The rules, for every request:

- only ``http`` and ``https``; no proxy from the environment is used (it would resolve names on our behalf);
- the host name is resolved once, every address it resolves to is checked, and the connection goes to the
  checked address (``Host`` and TLS name stay the URL's host), so a second DNS answer cannot swap in another
  address between the check and the connection (DNS rebinding);
- loopback, private (RFC 1918, unique local), link-local, cloud metadata (169.254.169.254, fd00:ec2::254,
  100.100.100.200), shared, multicast, reserved and unspecified addresses are refused, as are IPv6 forms that
  embed one (IPv4-mapped, 6to4, NAT64, Teredo), unless a network in ``SAVE_SEARCH_URL_ALLOWED_NETWORKS``
  contains the address;
- redirects are followed by hand (at most ``MAX_REDIRECTS``), each target checked again as above;
- the same limits as an upload: the declared length and then the bytes received against the maximum size,
  silence longer than ``SAVE_SEARCH_URL_TIMEOUT_S`` and the whole body against the upload body timeout; the
  type and duration are the probe's, as for every item.

Failures are ``indexer.errors`` words: a refused address or scheme, a 4xx answer or a name that does not resolve
are permanent (``AccessError``), a timeout, a dropped connection or a 5xx/429 answer transient.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from indexer.errors import AccessError, BadInputError, TransientError
from indexer.names import url_problem

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_REDIRECTS = 5
REDIRECTS = frozenset({301, 302, 303, 307, 308})
CHUNK = 1 << 20
USER_AGENT = "save-search (video ingest)"
METADATA = frozenset(ipaddress.ip_address(a) for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254",
                                                        "100.100.100.200", "192.0.0.192"))
NAT64 = ipaddress.ip_network("64:ff9b::/96")


@dataclass(frozen=True)
class Fetched:
    path: Path
    url: str  # after redirects
    size: int
    content_type: str | None


def _embedded(ip: IPAddress) -> list[IPAddress]:
    """The IPv4 addresses an IPv6 address carries (mapped, 6to4, Teredo, NAT64), then the address itself: what it
    reaches is named first (``::ffff:127.0.0.1`` is loopback, more than it is an IPv4-mapped address)."""
    out: list[IPAddress] = []
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            out.append(ip.ipv4_mapped)
        if ip.sixtofour is not None:
            out.append(ip.sixtofour)
        if ip.teredo is not None:
            out.extend(ip.teredo)
        if ip in NAT64:
            out.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return [*out, ip]


def address_problem(ip: IPAddress, allowed: Sequence[IPNetwork] = ()) -> str | None:
    """Why the service must not connect to ``ip`` (a few words), else None. An allowed network wins."""
    if any(ip.version == net.version and ip in net for net in allowed):
        return None
    for addr in _embedded(ip):
        if addr in METADATA:
            return "a cloud metadata address"
        if addr.is_loopback:
            return "a loopback address"
        if addr.is_link_local:
            return "a link-local address"
        if addr.is_unspecified:
            return "an unspecified address"
        if addr.is_multicast:
            return "a multicast address"
        if addr.is_private:
            return "a private address"
        if not addr.is_global or addr.is_reserved:
            return "not a public address"
    return None


def allowed_networks(texts: Sequence[str]) -> list[IPNetwork]:
    return [ipaddress.ip_network(t, strict=False) for t in texts]


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to, once (a literal address resolves to itself)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
            raise AccessError(f"{host} does not resolve to an address", kind="not_found") from exc
        raise TransientError(f"could not resolve {host}: {exc}") from exc
    out: list[IPAddress] = []
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])  # drop an IPv6 scope id
        if ip not in out:
            out.append(ip)
    if not out:
        raise AccessError(f"{host} does not resolve to an address", kind="not_found")
    return out


def checked_address(url: str, allowed: Sequence[IPNetwork]) -> IPAddress:
    """The address to connect to for ``url``: its host resolved once, every answer checked (one refused address
    refuses the URL)."""
    if problem := url_problem(url):
        raise AccessError(f"{url}: {problem}", kind="bad_url")
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    addresses = resolve(host, port)
    literal = _is_literal(host)
    for ip in addresses:
        if why := address_problem(ip, allowed):
            where = f"{host} is {why}" if literal else f"{host} resolves to {why}"
            raise AccessError(f"{where}: refused (URL ingest reaches public addresses only; an operator can allow a "
                              "network with SAVE_SEARCH_URL_ALLOWED_NETWORKS)", kind="forbidden_address")
    return addresses[0]


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to the checked address, whatever a new DNS lookup would say now."""

    def __init__(self, host: str, port: int, address: IPAddress, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((str(self.address), self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, address: IPAddress, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self.address = address

    def connect(self) -> None:
        sock = socket.create_connection((str(self.address), self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


def _open(url: str, address: IPAddress, timeout: float) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    parts = urlsplit(url)
    https = parts.scheme.lower() == "https"
    port = parts.port or (443 if https else 80)
    cls = _PinnedHTTPSConnection if https else _PinnedHTTPConnection
    conn = cls(parts.hostname or "", port, address, timeout)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        conn.request("GET", target, headers={"User-Agent": USER_AGENT, "Accept": "*/*",
                                             "Accept-Encoding": "identity"})
        return conn, conn.getresponse()
    except ssl.SSLCertVerificationError as exc:
        conn.close()
        raise AccessError(f"{url}: the TLS certificate is not valid for {parts.hostname} ({exc.verify_message})",
                          kind="tls") from exc
    except (OSError, http.client.HTTPException) as exc:
        conn.close()
        raise TransientError(f"{url}: {type(exc).__name__}: {exc}") from exc


def fetch_url(url: str, dest: Path, *, max_bytes: int, allowed: Sequence[str] = (), timeout_s: float = 30.0,
              body_timeout_s: float = 3600.0) -> Fetched:
    """Download ``url`` into ``dest`` under the rules of the module docstring."""
    networks = allowed_networks(allowed)
    deadline = time.monotonic() + body_timeout_s
    current = url
    for _hop in range(MAX_REDIRECTS + 1):
        address = checked_address(current, networks)
        conn, resp = _open(current, address, timeout_s)
        try:
            if resp.status in REDIRECTS:
                location = resp.getheader("Location")
                if not location:
                    raise AccessError(f"{current} answered {resp.status} without a Location", kind="http_error")
                current = urljoin(current, location.strip())
                continue
            _check_status(current, resp)
            return _receive(current, resp, dest, max_bytes, deadline)
        finally:
            conn.close()
    raise AccessError(f"{url}: more than {MAX_REDIRECTS} redirects", kind="too_many_redirects")


def _check_status(url: str, resp: http.client.HTTPResponse) -> None:
    if 200 <= resp.status < 300:
        return
    said = f"{url} answered {resp.status} {resp.reason}".rstrip()
    if resp.status in (408, 425, 429) or resp.status >= 500:
        raise TransientError(said)
    raise AccessError(said, kind="not_found" if resp.status in (404, 410) else "http_error")


def _receive(url: str, resp: http.client.HTTPResponse, dest: Path, max_bytes: int, deadline: float) -> Fetched:
    content_type = resp.getheader("Content-Type")
    if content_type and content_type.split(";")[0].strip().lower() == "text/html":
        raise BadInputError(f"{url} is a web page (text/html), not a video file", kind="not_media")
    declared = resp.getheader("Content-Length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise BadInputError(f"{url} is {declared} bytes, over the maximum of {max_bytes}", kind="too_large")
    size = 0
    try:
        with dest.open("wb") as out:
            while block := resp.read(CHUNK):
                size += len(block)
                if size > max_bytes:
                    raise BadInputError(f"{url} is over the maximum of {max_bytes} bytes", kind="too_large")
                if time.monotonic() > deadline:
                    raise TransientError(f"{url}: the download took longer than the body timeout")
                out.write(block)
    except (OSError, http.client.HTTPException) as exc:  # timeouts (silence), resets, a short body
        raise TransientError(f"{url}: the download broke off after {size} bytes: {type(exc).__name__}: {exc}") \
            from exc
    return Fetched(dest, url, size, content_type)
