"""SSRF-safe HTTP GET for the `fetch_url` tool: public web pages only, as readable text.

The model chooses the URL, so the URL is hostile until proven otherwise: it must not reach the
worker's own services (127.0.0.1, the database, Redis), the private network, or a cloud
metadata endpoint, whether directly, through a redirect, through an odd spelling of an address
(``http://2130706433/``, ``http://0x7f.1/``, ``http://[::ffff:127.0.0.1]/``), or through a DNS
name that resolves to such an address, or changes its answer between our check and the
connection (DNS rebinding).

How: every hop (the URL, then each redirect, followed by hand) is parsed and checked here.
The host is resolved once, *every* address in the answer is checked against `check_ip`, and
the connection goes to a checked address itself (the ``Host`` header and the TLS server name
and certificate check still use the hostname), so a second, different DNS answer is never
used. Only http and https, no credentials in URLs, no proxies from the environment.

Why http.client rather than httpx: pinning the address needs control over how the socket is
opened, which http.client gives through a documented override (`connect`), while httpx would
need a custom httpcore network backend reached through private attributes; httpx also honours
``HTTP(S)_PROXY`` by default, which would move the connection somewhere unchecked.

Limits: the body is read as it streams and cut at `max_bytes`; the whole fetch (all hops) has
one deadline, enforced by shutting the socket down when it passes, so a server trickling bytes
cannot stretch it. Name resolution itself uses the system resolver, which has its own timeouts
and is not bounded by that deadline.

Content: HTML becomes readable text (title first, headings and paragraph breaks kept, scripts,
styles and navigation dropped); plain text and JSON pass through; anything else is refused.
"""

from __future__ import annotations

import codecs
import contextlib
import http.client
import ipaddress
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from urllib.parse import quote, urljoin, urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_READ_CHUNK = 64 * 1024
_USER_AGENT = "GlassboxFetch/1.0 (+https://github.com/glassbox)"
_ACCEPT = "text/html,application/xhtml+xml,text/plain;q=0.9,application/json;q=0.9,*/*;q=0.1"
# Hostnames as sent on the wire (after IDNA): letters, digits, hyphens, dots.
_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?\.?$")
_META_CHARSET_RE = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?([A-Za-z0-9_.:-]+)""", re.I)
# Characters that may stay as they are in a request target; everything else is %-escaped.
_SAFE_PATH_CHARS = "/:@!$&'()*+,;=-._~%"
_SAFE_QUERY_CHARS = _SAFE_PATH_CHARS + "?"

# Well-known cloud metadata and platform endpoints, named so the refusal says what they are.
# (Most are also private or link-local; Azure's 168.63.129.16 is not.)
_METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(address)
    for address in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean...
        "169.254.170.2",  # AWS ECS task metadata
        "fd00:ec2::254",  # AWS IPv6
        "fd20:ce::254",  # GCP IPv6
        "100.100.100.200",  # Alibaba Cloud
        "168.63.129.16",  # Azure WireServer
    )
)
_SHARED_ADDRESS_SPACE = ipaddress.IPv4Network("100.64.0.0/10")  # CGNAT, RFC 6598
_NAT64_PREFIX = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052 well-known prefix


class FetchError(Exception):
    """The URL could not or may not be fetched; the message is fit to show the model."""


class BlockedAddress(FetchError):
    """The URL leads to an address the tool must not reach; says which address and why."""

    def __init__(self, address: IPAddress, reason: str) -> None:
        super().__init__(f"refusing to connect to {address}: {reason}")
        self.address = address
        self.reason = reason


@dataclass(frozen=True)
class FetchResult:
    """A fetched page: `final_url` is where redirects ended, `text` the readable content."""

    url: str
    final_url: str
    status: int
    content_type: str
    text: str
    truncated: bool


def check_ip(ip: IPAddress) -> None:
    """Raise `BlockedAddress` unless `ip` is a public unicast address.

    Addresses that embed an IPv4 address (IPv4-mapped, NAT64, 6to4) are judged by the
    embedded address too, since that is where the packets end up.
    """
    reason = _block_reason(ip)
    if reason is not None:
        raise BlockedAddress(ip, reason)


def _block_reason(ip: IPAddress) -> str | None:
    if ip in _METADATA_ADDRESSES:
        return "cloud metadata endpoint"
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            kind, inner_ip = embedded
            inner = _block_reason(inner_ip)
            if inner is not None:
                return f"{kind} address of {inner_ip} ({inner})"
            if kind != "6to4":
                # Mapped and NAT64 addresses reach exactly the embedded (public) address; the
                # IPv6 ranges themselves count as special-purpose only by convention.
                return None
        if ip.is_site_local:
            return "site-local address"
    if ip.is_loopback:
        return "loopback address"
    if ip.is_unspecified:
        return "unspecified address"
    if ip.is_link_local:
        return "link-local address"
    if ip.is_multicast:
        return "multicast address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED_ADDRESS_SPACE:
        return "shared address space (carrier-grade NAT)"
    if ip.is_private:
        return "private address"
    if ip.is_reserved:
        return "reserved address"
    if not ip.is_global:
        return "not a globally routable address"
    return None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    if ip.ipv4_mapped is not None:
        return "IPv4-mapped", ip.ipv4_mapped
    if ip in _NAT64_PREFIX:
        return "NAT64", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return "6to4", ip.sixtofour
    return None


def parse_host_ip(host: str) -> IPAddress | None:
    """The address `host` denotes if it is an IP literal in any spelling, else None.

    Besides dotted quads and (bracketed) IPv6 this reads the forms that ``inet_aton`` and
    browsers accept: decimal (``2130706433``), octal (``0177.0.0.1``), hex (``0x7f.1``) and
    short forms (``127.1``), so a refusal can name the real address.
    """
    if host.startswith("[") and host.endswith("]"):
        try:
            return ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return None
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return _parse_loose_ipv4(host)


def _parse_loose_ipv4(host: str) -> ipaddress.IPv4Address | None:
    # The WHATWG URL standard's IPv4 parser, which matches inet_aton.
    parts = host.split(".")
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()  # A trailing dot is allowed ("127.0.0.1.").
    if not 1 <= len(parts) <= 4:
        return None
    numbers = [_parse_ipv4_number(part) for part in parts]
    if any(number is None for number in numbers):
        return None
    values = [number for number in numbers if number is not None]
    if any(value > 255 for value in values[:-1]) or values[-1] >= 256 ** (5 - len(values)):
        return None
    address = values[-1]
    for index, value in enumerate(values[:-1]):
        address += value << (8 * (3 - index))
    return ipaddress.IPv4Address(address)


def _parse_ipv4_number(part: str) -> int | None:
    if not part:
        return None
    base, digits = 10, "0123456789"
    if part[:2].lower() == "0x":
        base, digits, part = 16, "0123456789abcdefABCDEF", part[2:]
    elif len(part) > 1 and part[0] == "0":
        base, digits, part = 8, "01234567", part[1:]
    if not part:
        return 0  # "0x" alone is zero, as for inet_aton.
    if any(char not in digits for char in part):
        return None
    return int(part, base)


def fetch_url(
    url: str,
    *,
    max_bytes: int = 2_000_000,
    timeout: float = 15.0,
    max_redirects: int = 5,
    resolver: Resolver | None = None,
    allow_endpoints: Collection[tuple[str, int]] = (),
    ssl_context: ssl.SSLContext | None = None,
) -> FetchResult:
    """GET `url` from the public internet and return its content as text.

    `resolver(host, port)` returns the host's addresses (default: ``socket.getaddrinfo``).
    `allow_endpoints` lists exact ``(address, port)`` pairs exempt from the address check:
    it exists for tests that serve pages on 127.0.0.1, and for an operator who deliberately
    trusts one internal service; never build it from model or user input. `ssl_context`
    defaults to the system's trust store with hostname checking.

    Raises `BlockedAddress` for a forbidden address (at any hop) and `FetchError` for every
    other refusal or failure (scheme, credentials, too many redirects, timeout, binary
    content, unreachable host).
    """
    deadline = time.monotonic() + timeout
    allowed = {(ipaddress.ip_address(address), port) for address, port in allow_endpoints}
    context = ssl_context or ssl.create_default_context()
    current = url
    for _ in range(max_redirects + 1):
        target = _Target.parse(current)
        addresses = _resolve_checked(target, resolver or _system_resolver, allowed)
        with _open(target, addresses, deadline, context) as exchange:
            location = exchange.response.getheader("Location")
            if exchange.response.status in _REDIRECT_STATUSES and location:
                current = urljoin(current, location.strip())
                continue
            return _read_result(url, current, exchange, max_bytes)
    raise FetchError(f"more than {max_redirects} redirects, starting at {url}")


@dataclass(frozen=True)
class _Target:
    """One hop's URL, validated: what to resolve, where to connect, what to ask for."""

    scheme: str
    host: str  # ASCII hostname or canonical IP, for the Host header and TLS
    ip: IPAddress | None  # set when the URL names an address directly
    port: int
    request_target: str

    @classmethod
    def parse(cls, url: str) -> _Target:
        try:
            parts = urlsplit(url)
        except ValueError as exc:  # e.g. an unclosed "[" in the host
            raise FetchError(f"invalid URL {url!r}: {exc}") from exc
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise FetchError(f"only http and https URLs can be fetched, not {scheme or url!r}")
        if "@" in parts.netloc:
            raise FetchError("URLs with credentials (user:password@host) are refused")
        if not parts.hostname:
            raise FetchError(f"no host in URL {url!r}")
        try:
            port = parts.port or (443 if scheme == "https" else 80)
            host = parts.hostname.encode("idna").decode("ascii")
        except (ValueError, UnicodeError) as exc:
            raise FetchError(f"invalid URL {url!r}: {exc}") from exc
        # Spellings like 0x7f.1 become the address they stand for, so that it is checked and
        # connected to as such, and TLS sees a canonical IP rather than a strange name.
        ip = parse_host_ip(host)
        if ip is not None:
            host = str(ip)
        elif not _HOSTNAME_RE.match(host):
            raise FetchError(f"invalid host name {parts.hostname!r}")
        path = quote(parts.path or "/", safe=_SAFE_PATH_CHARS)
        query = quote(parts.query, safe=_SAFE_QUERY_CHARS)
        return cls(scheme, host, ip, port, f"{path}?{query}" if query else path)


def _system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def _resolve_checked(
    target: _Target, resolve: Resolver, allowed: set[tuple[IPAddress, int]]
) -> list[IPAddress]:
    """Resolve once and check every answer: one bad address refuses the whole host."""
    if target.ip is not None:
        addresses = [target.ip]
    else:
        try:
            answers = resolve(target.host, target.port)
        except OSError as exc:
            raise FetchError(f"cannot resolve {target.host}: {exc}") from exc
        try:
            addresses = list(dict.fromkeys(ipaddress.ip_address(a) for a in answers))
        except ValueError as exc:
            raise FetchError(f"resolver gave a non-address for {target.host}: {exc}") from exc
        if not addresses:
            raise FetchError(f"{target.host} has no addresses")
    for address in addresses:
        if (address, target.port) not in allowed:
            check_ip(address)
    return addresses


class _Watchdog:
    """Shuts a socket down at the deadline, so no trickle of bytes can stretch a fetch."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.fired = False
        self._sock = sock
        self._timer = threading.Timer(max(deadline - time.monotonic(), 0.0), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        self.fired = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def cancel(self) -> None:
        self._timer.cancel()


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Speaks HTTP to `host` (Host header) over a socket to an already checked `address`."""

    watchdog: _Watchdog | None = None

    def __init__(self, host: str, port: int, address: IPAddress, deadline: float) -> None:
        super().__init__(host, port, timeout=max(deadline - time.monotonic(), 0.001))
        self.address = address
        self.deadline = deadline

    def _connect_pinned(self) -> socket.socket:
        sock = socket.create_connection((str(self.address), self.port), self.timeout)
        self.watchdog = _Watchdog(sock, self.deadline)
        return sock

    def connect(self) -> None:
        self.sock = self._connect_pinned()


class _PinnedHTTPSConnection(_PinnedHTTPConnection):
    """As `_PinnedHTTPConnection`, with TLS: SNI and certificate checked against `host`."""

    default_port = http.client.HTTPS_PORT

    def __init__(
        self,
        host: str,
        port: int,
        address: IPAddress,
        deadline: float,
        context: ssl.SSLContext,
    ) -> None:
        super().__init__(host, port, address, deadline)
        self.context = context

    def connect(self) -> None:
        self.sock = self.context.wrap_socket(self._connect_pinned(), server_hostname=self.host)


@dataclass
class _Exchange:
    target: _Target
    connection: _PinnedHTTPConnection
    response: http.client.HTTPResponse

    def timed_out(self) -> bool:
        return self.connection.watchdog is not None and self.connection.watchdog.fired


@contextlib.contextmanager
def _open(
    target: _Target, addresses: list[IPAddress], deadline: float, context: ssl.SSLContext
) -> Iterator[_Exchange]:
    """Send the GET to the first reachable checked address; yields the response headers."""
    connection = _connect(target, addresses, deadline, context)
    response: http.client.HTTPResponse | None = None
    try:
        try:
            connection.request(
                "GET",
                target.request_target,
                headers={
                    "User-Agent": _USER_AGENT,
                    "Accept": _ACCEPT,
                    "Accept-Encoding": "identity",
                    "Connection": "close",
                },
            )
            response = connection.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            if connection.watchdog is not None and connection.watchdog.fired:
                raise _timed_out(target) from exc
            raise FetchError(f"request to {target.host} failed: {exc}") from exc
        yield _Exchange(target, connection, response)
    finally:
        if connection.watchdog is not None:
            connection.watchdog.cancel()
        # With "Connection: close" http.client hands the socket to the response, so closing
        # the connection alone would leave it open.
        if response is not None:
            response.close()
        connection.close()


def _connect(
    target: _Target, addresses: list[IPAddress], deadline: float, context: ssl.SSLContext
) -> _PinnedHTTPConnection:
    failure: OSError | None = None
    for address in addresses:
        if time.monotonic() >= deadline:
            raise _timed_out(target)
        connection = (
            _PinnedHTTPSConnection(target.host, target.port, address, deadline, context)
            if target.scheme == "https"
            else _PinnedHTTPConnection(target.host, target.port, address, deadline)
        )
        try:
            connection.connect()
        except OSError as exc:
            if connection.watchdog is not None:
                connection.watchdog.cancel()
            connection.close()
            if isinstance(exc, ssl.SSLError):
                # A certificate or protocol problem is the host's, not one address's.
                raise FetchError(f"TLS with {target.host} failed: {exc}") from exc
            failure = exc
            continue
        return connection
    raise FetchError(f"cannot connect to {target.host} port {target.port}: {failure}")


def _timed_out(target: _Target) -> FetchError:
    return FetchError(f"fetching from {target.host} timed out")


def _read_result(url: str, final_url: str, exchange: _Exchange, max_bytes: int) -> FetchResult:
    response = exchange.response
    media_type, declared_charset = _parse_content_type(response.getheader("Content-Type") or "")
    kind = _content_kind(media_type)
    if kind is None:
        raise FetchError(
            f"{final_url} is {media_type}: only HTML, plain text and JSON can be fetched"
        )
    body, truncated = _read_body(exchange, max_bytes)
    if kind == "unlabelled":
        kind = _sniff(body, final_url)
    charset = _choose_charset(declared_charset, body if kind == "html" else b"")
    text = body.decode(charset, "replace")
    return FetchResult(
        url=url,
        final_url=final_url,
        status=response.status,
        content_type=media_type or ("text/html" if kind == "html" else "text/plain"),
        text=html_to_text(text) if kind == "html" else text,
        truncated=truncated,
    )


def _read_body(exchange: _Exchange, max_bytes: int) -> tuple[bytes, bool]:
    """Up to `max_bytes` of the body, and whether there was more."""
    body = bytearray()
    try:
        while len(body) <= max_bytes:
            # read1: at most one read on the socket, so the watchdog's shutdown ends the loop.
            chunk = exchange.response.read1(min(_READ_CHUNK, max_bytes + 1 - len(body)))
            if not chunk:
                break
            body += chunk
    except (OSError, http.client.HTTPException) as exc:
        if exchange.timed_out():
            raise _timed_out(exchange.target) from exc
        raise FetchError(f"reading from {exchange.target.host} failed: {exc}") from exc
    if exchange.timed_out():
        raise _timed_out(exchange.target)
    return bytes(body[:max_bytes]), len(body) > max_bytes


def _parse_content_type(value: str) -> tuple[str, str | None]:
    media_type, _, parameters = value.partition(";")
    charset = None
    for parameter in parameters.split(";"):
        key, _, raw = parameter.partition("=")
        if key.strip().lower() == "charset":
            charset = raw.strip().strip("\"'") or None
    return media_type.strip().lower(), charset


def _content_kind(media_type: str) -> str | None:
    if not media_type:
        return "unlabelled"
    if media_type in ("text/html", "application/xhtml+xml"):
        return "html"
    if media_type.startswith("text/"):
        return "text"
    if media_type in ("application/json", "application/xml") or media_type.endswith(
        ("+json", "+xml")
    ):
        return "text"
    return None


def _sniff(body: bytes, url: str) -> str:
    if b"\x00" in body[:1024]:
        raise FetchError(f"{url} sent binary content without a type: it cannot be fetched")
    if re.match(rb"\s*<(!doctype html|html|head|body)\b", body[:512], re.IGNORECASE):
        return "html"
    return "text"


def _choose_charset(declared: str | None, html: bytes) -> str:
    meta = _META_CHARSET_RE.search(html[:4096]) if html else None
    candidates = [declared, meta.group(1).decode("ascii") if meta else None, "utf-8"]
    for candidate in candidates:
        if candidate:
            try:
                return codecs.lookup(candidate).name
            except LookupError:
                continue
    return "utf-8"


# Content that is not text for a reader: dropped with everything inside it.
_SKIPPED_TAGS = frozenset(
    {"script", "style", "nav", "noscript", "template", "svg", "iframe", "canvas", "object"}
)
_BLOCK_TAGS = frozenset(
    {
        "address", "article", "aside", "blockquote", "body", "dd", "details", "dialog", "div",
        "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form", "header", "hr",
        "main", "ol", "p", "pre", "section", "summary", "table", "ul",
    }
)  # fmt: skip
_HEADING_LEVELS = {f"h{level}": level for level in range(1, 7)}


def html_to_text(html: str) -> str:
    """Readable text from an HTML page: title first, then the body with headings (``# ``),
    list items (``- ``) and paragraph breaks; scripts, styles and navigation are dropped."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    title = " ".join("".join(parser.title_parts).split())
    body = re.sub(r"\n{3,}", "\n\n", "".join(parser.parts)).strip()
    return f"{title}\n\n{body}".strip() if title else body


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title_parts: list[str] = []
        self.parts: list[str] = []
        self._skip_depth = 0
        self._pre_depth = 0
        self._in_title = False
        self._line_start = True

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIPPED_TAGS:
            self._skip_depth += 1
        elif self._skip_depth:
            return
        elif tag == "title":
            self._in_title = True
        elif tag in _HEADING_LEVELS:
            self._break(2)
            self._emit("#" * _HEADING_LEVELS[tag] + " ")
        elif tag == "li":
            self._break(1)
            self._emit("- ")
        elif tag in ("br", "tr"):
            self._break(1)
        elif tag in _BLOCK_TAGS:
            self._break(2)
            if tag == "pre":
                self._pre_depth += 1
        elif tag in ("td", "th"):
            self._emit(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED_TAGS:
            self._skip_depth = max(self._skip_depth - 1, 0)
        elif self._skip_depth:
            return
        elif tag == "title":
            self._in_title = False
        elif tag in _HEADING_LEVELS or tag in _BLOCK_TAGS:
            self._break(2)
            if tag == "pre":
                self._pre_depth = max(self._pre_depth - 1, 0)
        elif tag == "li":
            self._break(1)

    def handle_data(self, data: str) -> None:
        if self._skip_depth:
            return
        if self._in_title:
            self.title_parts.append(data)
        elif self._pre_depth:
            self.parts.append(data)
            self._line_start = data.endswith("\n")
        else:
            self._emit(re.sub(r"\s+", " ", data))

    def _emit(self, text: str) -> None:
        if self._line_start:
            text = text.lstrip(" ")
        if text:
            self.parts.append(text)
            self._line_start = False

    def _break(self, newlines: int) -> None:
        self._line_start = True
        if not self.parts:
            return
        last = self.parts[-1]
        if last.strip("\n") == "":
            # Breaks in a row (</li><li>, </p><p>) merge into the larger one.
            self.parts[-1] = "\n" * max(len(last), newlines)
            return
        if not self._pre_depth:
            self.parts[-1] = last.rstrip(" ")
        self.parts.append("\n" * newlines)
