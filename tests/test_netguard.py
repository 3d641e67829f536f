"""fetch_url's SSRF guard: internal addresses stay out of reach in every spelling, at every hop.

Hermetic: pages are served by a local HTTP server on 127.0.0.1, which fetch_url reaches only
because each test names that one (address, port) in `allow_endpoints`; names resolve through
an injected resolver. Nothing here needs the internet.
"""

from __future__ import annotations

import datetime as dt
import http.server
import ipaddress
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from agents.netguard import (
    BlockedAddress,
    FetchError,
    check_ip,
    fetch_url,
    html_to_text,
    parse_host_ip,
)

PAGE = b"""<!doctype html>
<html><head><title>Glassbox  docs</title><style>body { color: red }</style></head>
<body>
<nav><a href="/">Home</a> | <a href="/about">About</a></nav>
<h1>Getting started</h1>
<p>Install it,   then <b>run</b> it &amp; enjoy.</p>
<script>document.write("tracking")</script>
<ul><li>fast</li><li>small</li></ul>
</body></html>
"""


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _TestServer

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        self.server.requests.append((url.path, self.headers.get("Host", "")))
        query = parse_qs(url.query)
        if url.path == "/page":
            self._send(200, "text/html; charset=utf-8", PAGE)
        elif url.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", query["to"][0])
            self.end_headers()
        elif url.path == "/loop":
            self.send_response(301)
            self.send_header("Location", "/loop")
            self.end_headers()
        elif url.path == "/big":
            self._send_big()
        elif url.path == "/json":
            self._send(200, "application/json", b'{"answer": 42}')
        elif url.path == "/latin1":
            self._send(200, "text/plain; charset=iso-8859-1", "café".encode("latin-1"))
        elif url.path == "/image":
            self._send(200, "image/png", b"\x89PNG\r\n\x1a\n" + bytes(100))
        elif url.path == "/stall":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"partial")
            self.wfile.flush()
            self.server.release.wait(10)
        else:
            self._send(404, "text/plain", b"not found")

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_big(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        for _ in range(80):  # 5 MB, stopped by the client long before the end.
            self.wfile.write(b"y" * 65536)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # Keep test output clean.


class _TestServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[tuple[str, str]] = []
        self.release = threading.Event()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that stop reading (the size limit) or hang up are expected here.
        if not isinstance(sys.exc_info()[1], ConnectionError | ssl.SSLError):
            super().handle_error(request, client_address)


@pytest.fixture
def server() -> Iterator[_TestServer]:
    httpd = _TestServer()
    # A short poll interval: shutdown() waits for the serving loop to notice.
    thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield httpd
    httpd.release.set()
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def _fetch_local(server: _TestServer, path: str, **kwargs: Any) -> Any:
    """fetch_url against the test server, which is the one internal endpoint it may reach."""
    return fetch_url(
        f"http://127.0.0.1:{server.port}{path}",
        allow_endpoints={("127.0.0.1", server.port)},
        **kwargs,
    )


def _resolver(*answers: list[str]) -> tuple[Callable[[str, int], list[str]], list[str]]:
    """A resolver giving `answers` in turn (the last one repeats), and the names it was asked."""
    asked: list[str] = []

    def resolve(host: str, port: int) -> list[str]:
        asked.append(host)
        return answers[min(len(asked), len(answers)) - 1]

    return resolve, asked


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.255.0.9",
        "::1",
        "0.0.0.0",
        "::",
        "10.0.0.1",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "169.254.1.1",
        "fe80::1",
        "100.64.0.1",
        "100.100.100.200",
        "168.63.129.16",
        "fd00:ec2::254",
        "fd12:3456::1",
        "fec0::1",
        "224.0.0.1",
        "ff02::1",
        "240.0.0.1",
        "255.255.255.255",
        "192.0.2.1",
        "::ffff:127.0.0.1",
        "::ffff:10.1.2.3",
        "::127.0.0.1",
        "64:ff9b::a00:1",
        "64:ff9b:1::a00:1",
        "2002:7f00:1::",
        "2002:a9fe:a9fe::1",
        "2001::1",
    ],
)
def test_internal_and_special_addresses_are_blocked(address: str) -> None:
    with pytest.raises(BlockedAddress):
        check_ip(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address",
    [
        "93.184.216.34",
        "1.1.1.1",
        "2606:4700:4700::1111",
        "::ffff:93.184.216.34",
        "64:ff9b::5db8:d822",
        "2002:5db8:d822::1",
    ],
)
def test_public_addresses_are_allowed(address: str) -> None:
    check_ip(ipaddress.ip_address(address))


def test_a_blocked_address_says_which_address_and_why() -> None:
    with pytest.raises(BlockedAddress) as caught:
        check_ip(ipaddress.ip_address("::ffff:169.254.169.254"))

    assert str(caught.value) == (
        "refusing to connect to ::ffff:a9fe:a9fe: IPv4-mapped address of 169.254.169.254 "
        "(cloud metadata endpoint)"
    )


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.0.1.", "127.0.0.1"),
        ("0", "0.0.0.0"),
        ("[::1]", "::1"),
        ("::ffff:127.0.0.1", "::ffff:127.0.0.1"),
        ("example.com", None),
        ("256.1.1.1", None),
        ("1.2.3.4.5", None),
        ("4294967296", None),
        ("0x7g.1", None),
        ("[not-an-address]", None),
    ],
)
def test_parse_host_ip_reads_every_spelling_of_an_address(host: str, expected: str | None) -> None:
    parsed = parse_host_ip(host)

    assert parsed == (ipaddress.ip_address(expected) if expected else None)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://[::1]/",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
        "http://192.168.1.1/",
        "http://172.16.0.1/",
        "http://2130706433/",
        "http://0177.0.0.1/",
        "http://0x7f000001/",
        "http://127.1/",
        "http://[::ffff:127.0.0.1]/",
        "http://0.0.0.0/",
        "http://localhost/",
        "https://LOCALHOST:8443/admin",
        "http://１２７.０.０.１/",  # Fullwidth digits: IDNA folds them to 127.0.0.1.
    ],
)
def test_urls_that_lead_inside_are_refused(url: str) -> None:
    with pytest.raises(BlockedAddress):
        fetch_url(url, timeout=2)


def test_a_name_with_any_internal_address_among_its_answers_is_refused() -> None:
    resolve, _ = _resolver(["93.184.216.34", "10.0.0.5"])

    with pytest.raises(BlockedAddress, match="10.0.0.5: private address"):
        fetch_url("http://mixed.example.test/", resolver=resolve)


def test_an_html_page_comes_back_as_readable_text(server: _TestServer) -> None:
    resolve, asked = _resolver(["127.0.0.1"])

    result = fetch_url(
        f"http://docs.example.test:{server.port}/page",
        resolver=resolve,
        allow_endpoints={("127.0.0.1", server.port)},
    )

    assert result.text == (
        "Glassbox docs\n\n# Getting started\n\nInstall it, then run it & enjoy.\n\n- fast\n- small"
    )
    assert result.status == 200
    assert result.content_type == "text/html"
    assert not result.truncated
    # Connected to the checked address, but asked for the page by its name.
    assert asked == ["docs.example.test"]
    assert server.requests == [("/page", f"docs.example.test:{server.port}")]


def test_the_connection_goes_to_the_address_that_was_checked(server: _TestServer) -> None:
    # DNS rebinding: a second lookup would now point at the metadata service.
    resolve, asked = _resolver(["127.0.0.1"], ["169.254.169.254"])

    result = fetch_url(
        f"http://rebind.example.test:{server.port}/page",
        resolver=resolve,
        allow_endpoints={("127.0.0.1", server.port)},
    )

    assert result.status == 200
    assert asked == ["rebind.example.test"]  # Looked up once; that answer was used.


def test_a_name_that_rebinds_to_an_internal_address_on_redirect_is_refused(
    server: _TestServer,
) -> None:
    resolve, asked = _resolver(["127.0.0.1"], ["169.254.169.254"])
    url = f"http://rebind.example.test:{server.port}"

    with pytest.raises(BlockedAddress, match="cloud metadata"):
        fetch_url(
            f"{url}/redirect?to={url}/page",
            resolver=resolve,
            allow_endpoints={("127.0.0.1", server.port)},
        )

    assert asked == ["rebind.example.test", "rebind.example.test"]  # Every hop re-checked.
    assert [path for path, _ in server.requests] == ["/redirect"]


@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.1/",
        "http://127.0.0.1:1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/",
        "http://10.0.0.1/",
        "http://0x7f.1/",
    ],
)
def test_a_redirect_to_an_internal_address_is_refused(server: _TestServer, target: str) -> None:
    with pytest.raises(BlockedAddress):
        _fetch_local(server, f"/redirect?to={target}")

    assert [path for path, _ in server.requests] == ["/redirect"]


def test_a_redirect_is_followed_and_reported(server: _TestServer) -> None:
    result = _fetch_local(server, "/redirect?to=/page")

    assert result.final_url == f"http://127.0.0.1:{server.port}/page"
    assert result.url == f"http://127.0.0.1:{server.port}/redirect?to=/page"
    assert result.text.startswith("Glassbox docs")


def test_a_redirect_to_another_scheme_is_refused(server: _TestServer) -> None:
    with pytest.raises(FetchError, match="only http and https"):
        _fetch_local(server, "/redirect?to=file:///etc/passwd")


def test_redirect_loops_stop_at_the_limit(server: _TestServer) -> None:
    with pytest.raises(FetchError, match="more than 3 redirects"):
        _fetch_local(server, "/loop", max_redirects=3)

    assert len(server.requests) == 4


def test_a_large_body_is_cut_at_max_bytes(server: _TestServer) -> None:
    result = _fetch_local(server, "/big", max_bytes=100_000)

    assert result.truncated
    assert result.text == "y" * 100_000


def test_json_and_declared_charsets_pass_through(server: _TestServer) -> None:
    assert _fetch_local(server, "/json").text == '{"answer": 42}'
    assert _fetch_local(server, "/latin1").text == "café"


def test_binary_content_is_refused_with_its_type(server: _TestServer) -> None:
    with pytest.raises(FetchError, match="is image/png: only HTML, plain text and JSON"):
        _fetch_local(server, "/image")


def test_a_stalled_server_hits_the_time_limit(server: _TestServer) -> None:
    started = time.monotonic()

    with pytest.raises(FetchError, match="timed out"):
        _fetch_local(server, "/stall", timeout=0.5)

    assert time.monotonic() - started < 3


@pytest.mark.parametrize(
    "url",
    [
        "http://user:pass@example.com/",
        "http://example.com@127.0.0.1/",
        "http://evil.example\\@127.0.0.1/",
        "ftp://example.com/",
        "file:///etc/passwd",
        "gopher://127.0.0.1:6379/_INFO",
        "javascript:alert(1)",
        "http:///nohost",
        "http://[::1/",
        "http://example.com:99999/",
    ],
)
def test_urls_with_credentials_or_other_schemes_are_refused(url: str) -> None:
    with pytest.raises(FetchError):
        fetch_url(url, resolver=lambda host, port: pytest.fail("must not resolve"))


def test_html_to_text_keeps_structure_and_drops_clutter() -> None:
    html = (
        "<title>T</title><nav>menu</nav><h2>Part</h2><p>one<br>two</p>"
        "<pre>  code\n    indented</pre><noscript>enable js</noscript><p>end</p>"
    )

    assert html_to_text(html) == "T\n\n## Part\n\none\ntwo\n\n  code\n    indented\n\nend"


def _tls_files(tmp_path: Path, hostname: str) -> tuple[Path, Path]:
    """A self-signed certificate for `hostname` and its key, as PEM files."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.mark.parametrize(
    ("cert_name", "succeeds"), [("docs.example.test", True), ("other.example.test", False)]
)
def test_https_checks_the_certificate_against_the_hostname_not_the_pinned_address(
    server: _TestServer, tmp_path: Path, cert_name: str, succeeds: bool
) -> None:
    cert_path, key_path = _tls_files(tmp_path, cert_name)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert_path, key_path)
    sni: list[str | None] = []
    server_context.sni_callback = lambda sock, name, context: sni.append(name)
    server.socket = server_context.wrap_socket(server.socket, server_side=True)
    client_context = ssl.create_default_context(cafile=str(cert_path))
    resolve, _ = _resolver(["127.0.0.1"])

    def fetch() -> Any:
        return fetch_url(
            f"https://docs.example.test:{server.port}/page",
            resolver=resolve,
            allow_endpoints={("127.0.0.1", server.port)},
            ssl_context=client_context,
            timeout=5,
        )

    if succeeds:
        assert fetch().text.startswith("Glassbox docs")
    else:
        with pytest.raises(FetchError, match="TLS with docs.example.test failed"):
            fetch()
    assert sni == ["docs.example.test"]
