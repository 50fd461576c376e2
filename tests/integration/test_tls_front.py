"""The TLS front with a real gRPC server behind it: a client certificate is requested, not
required, and reaches handlers verified; a PROXY v2 header counts only from a trusted proxy."""

from __future__ import annotations

import asyncio
import datetime
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.mux import connector, tls_context
from controlplane.auth.sources import SourceInterceptor, current_source
from controlplane.tls import proxy
from controlplane.tls.ca import CertificateAuthority
from controlplane.tls.front import TlsFront
from controlplane.tls.peers import peer_certificate
from controlplane.tls.server import ALPN_GRPC, ServerTls
from wire.frames import ALPN as LEG_ALPN
from wire.frames import FrameReader, encode


@dataclass
class Served:
    front: TlsFront
    ca: CertificateAuthority
    address: str


async def _who(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    cert = peer_certificate(context)
    name = "-"
    if cert is not None:
        name = str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
    return f"{current_source()} {name}".encode()


async def _leg(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, address: str, der: bytes | None
) -> None:
    """A session leg's handler: answers its first frame with who sent it."""
    name = "-"
    if der is not None:
        cert = x509.load_der_x509_certificate(der)
        name = str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
    frame = await FrameReader(reader).next()
    writer.write(encode(f"{address} {name} {frame!r}".encode()))
    await writer.drain()


@pytest.fixture
async def served(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Served]:
    trusted = getattr(request, "param", "")
    ca = CertificateAuthority.load_or_create(tmp_path / "d")
    tls = ServerTls.configure(tmp_path / "d", None, None, ["127.0.0.1"])
    run_dir = Path(tempfile.mkdtemp(prefix="gh-test-"))
    server = grpc.aio.server(interceptors=[SourceInterceptor()])
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "t.T", {"Who": grpc.unary_unary_rpc_method_handler(_who)}
            )
        ]
    )
    server.add_insecure_port(f"unix:{run_dir}/grpc.sock")
    await server.start()
    front = TlsFront(
        "gRPC",
        tls,
        ALPN_GRPC,
        run_dir / "grpc.sock",
        run_dir,
        trusted_proxies=proxy.parse_networks(trusted),
        handshake_timeout=2,
        leg=(LEG_ALPN, _leg),
    )
    front.listen("127.0.0.1", 0)
    front.start()
    yield Served(front, ca, f"127.0.0.1:{front.port}")
    await front.close()
    await server.stop(0)


def _client_cert(ca: CertificateAuthority, name: str) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ignored")]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    cert = ca.sign_csr(csr, name, datetime.timedelta(minutes=5))
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert, pem


async def _who_am_i(address: str, credentials: grpc.ChannelCredentials) -> str:
    async with grpc.aio.secure_channel(address, credentials) as channel:
        answer = await channel.unary_unary("/t.T/Who", None, None)(b"", timeout=10)
    assert isinstance(answer, bytes)
    return answer.decode()


async def test_a_client_certificate_is_optional_and_verified(
    served: Served, tmp_path: Path
) -> None:
    root = served.ca.cert_pem
    assert await _who_am_i(served.address, grpc.ssl_channel_credentials(root)) == "127.0.0.1 -"
    cert, key = _client_cert(served.ca, "agent:vpc-1")
    creds = grpc.ssl_channel_credentials(root, key, cert)
    assert await _who_am_i(served.address, creds) == "127.0.0.1 agent:vpc-1"
    # A certificate from another CA is not accepted as an identity: the handshake fails.
    stranger = CertificateAuthority.load_or_create(tmp_path / "stranger")
    cert, key = _client_cert(stranger, "agent:vpc-1")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _who_am_i(served.address, grpc.ssl_channel_credentials(root, key, cert))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_session_leg_is_served_in_process_on_the_grpc_port_with_its_certificate(
    served: Served,
) -> None:
    """The agent's leg (ALPN gatehouse-leg/1) stays in the front, its client certificate
    verified; gRPC on the same port is unaffected."""
    cert, key = _client_cert(served.ca, "agent:vpc-1")
    tls = tls_context(served.ca.cert_pem.decode(), key.decode(), cert.decode())
    reader, writer = await connector(served.address, tls)()
    writer.write(encode(b"hello"))
    answer = await asyncio.wait_for(FrameReader(reader).next(), 5)
    assert answer == b"127.0.0.1 agent:vpc-1 b'hello'"
    writer.close()
    root = served.ca.cert_pem
    assert await _who_am_i(served.address, grpc.ssl_channel_credentials(root)) == "127.0.0.1 -"


async def test_plaintext_grpc_is_refused(served: Served) -> None:
    async with grpc.aio.insecure_channel(served.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await channel.unary_unary("/t.T/Who", None, None)(b"", timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert served.front.refused_plaintext >= 1


async def _through_balancer(served: Served, header: bytes, timeout: float = 10) -> str:
    """A TCP load balancer in front: prepends `header`, then relays bytes both ways."""

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = served.address.split(":")
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        up_writer.write(header)

        async def copy(a: asyncio.StreamReader, b: asyncio.StreamWriter) -> None:
            while data := await a.read(65536):
                b.write(data)
                await b.drain()
            b.close()

        await asyncio.gather(
            copy(reader, up_writer), copy(up_reader, writer), return_exceptions=True
        )

    balancer = await asyncio.start_server(relay, "127.0.0.1", 0)
    port = balancer.sockets[0].getsockname()[1]
    try:
        creds = grpc.ssl_channel_credentials(served.ca.cert_pem)
        options = (("grpc.ssl_target_name_override", "127.0.0.1"),)
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds, options=options) as ch:
            answer = await ch.unary_unary("/t.T/Who", None, None)(b"", timeout=timeout)
        assert isinstance(answer, bytes)
        return answer.decode()
    finally:
        balancer.close()


@pytest.mark.parametrize("served", ["127.0.0.0/8"], indirect=True)
async def test_a_trusted_proxy_header_gives_the_client_address(served: Served) -> None:
    header = proxy.build("203.0.113.9", 40000, "10.0.0.1", 8443)
    assert await _through_balancer(served, header) == "203.0.113.9 -"
    header6 = proxy.build("2001:db8::7", 40000, "2001:db8::1", 8443)
    assert await _through_balancer(served, header6) == "2001:db8::7 -"
    # A LOCAL header (the balancer's own health check) keeps the socket's address.
    local = proxy.SIGNATURE + bytes([0x20, 0x00, 0x00, 0x00])
    assert await _through_balancer(served, local) == "127.0.0.1 -"
    # A trusted proxy may also connect without a header.
    assert await _through_balancer(served, b"") == "127.0.0.1 -"


@pytest.mark.parametrize("served", ["192.0.2.0/24"], indirect=True)
async def test_a_header_from_an_untrusted_peer_is_refused(served: Served) -> None:
    header = proxy.build("203.0.113.9", 40000, "10.0.0.1", 8443)
    with pytest.raises(grpc.aio.AioRpcError):
        await _through_balancer(served, header, timeout=2)
    assert served.front.refused_plaintext >= 1


def test_proxy_header_parsing() -> None:
    header = proxy.build("198.51.100.4", 1, "10.0.0.1", 2)
    assert proxy.parse(header) == proxy.ProxyHeader("198.51.100.4", len(header), 1)
    with pytest.raises(proxy.ProxyHeaderError, match="truncated"):
        proxy.parse(header[:-3])
    with pytest.raises(proxy.ProxyHeaderError, match="version"):
        proxy.parse(header[:12] + b"\x11" + header[13:])
    huge = proxy.SIGNATURE + b"\x21\x11\xff\xff"
    with pytest.raises(proxy.ProxyHeaderError, match="larger"):
        proxy.body_length(huge)
    assert proxy.normal_ip("::ffff:10.1.2.3") == "10.1.2.3"
    with pytest.raises(ValueError, match="not an IP"):
        proxy.parse_networks("10.0.0.0/8, nonsense")
