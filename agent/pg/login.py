"""Open a PostgreSQL target and log in with the agent's own credential.

The client never authenticates to the target: the agent runs the startup itself (TLS as the
connection's `sslmode` says, then SCRAM-SHA-256, md5 or cleartext as the server asks), so the
password stays in this process. Login failures become `TargetError`s whose message the user
sees as a PostgreSQL error; they never contain the password.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from dataclasses import dataclass

import scramp

from agent.targettls import target_tls
from wire.pg import codes, framing
from wire.pg import messages as pgm

CONNECT_TIMEOUT = 10.0
LOGIN_TIMEOUT = 30.0
READ_SIZE = 256 * 1024
# Parameters the agent decides; the client's values for them are ignored.
AGENT_OWNED = {"user", "database", "replication"}


class TargetError(Exception):
    """The target could not be opened; carries what to tell the client."""

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message


@dataclass(frozen=True, slots=True)
class PgTarget:
    host: str
    port: int
    database: str
    user: str
    sslmode: str = "prefer"
    sslrootcert: str | None = None

    @classmethod
    def from_spec(cls, target: Mapping[str, object]) -> PgTarget:
        return cls(
            host=str(target["host"]),
            port=int(str(target.get("port", 5432)).split(".")[0]),
            database=str(target["database"]),
            user=str(target["user"]),
            sslmode=str(target.get("sslmode") or "prefer"),
            sslrootcert=str(target["sslrootcert"]) if target.get("sslrootcert") else None,
        )


@dataclass(slots=True)
class Login:
    """An open, authenticated target connection and what the client must see next."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    framer: framing.MessageFramer
    rest: bytes  # the target's bytes after AuthenticationOk in the last read
    rest_messages: list[framing.Message]  # those bytes, framed (`end` relative to the read)
    rest_offset: int  # where `rest` started in that read


async def open_target(
    target: PgTarget, password: str | None, client_params: Mapping[str, str]
) -> Login:
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(target.host, target.port), CONNECT_TIMEOUT
        )
    except (OSError, TimeoutError) as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        raise TargetError(
            codes.CLIENT_UNABLE_TO_CONNECT,
            f"gatehouse agent could not connect to {target.host}:{target.port}: {reason}",
        ) from None
    try:
        await asyncio.wait_for(_negotiate_tls(reader, writer, target), LOGIN_TIMEOUT)
        params = {k: v for k, v in client_params.items() if k not in AGENT_OWNED}
        params.update(user=target.user, database=target.database, client_encoding="UTF8")
        writer.write(pgm.startup_message(params))
        return await asyncio.wait_for(
            _authenticate(reader, writer, target, password), LOGIN_TIMEOUT
        )
    except BaseException as exc:
        writer.close()
        if isinstance(exc, TimeoutError):
            raise TargetError(
                codes.CONNECTION_FAILURE, "the target did not complete the login in time"
            ) from None
        if isinstance(exc, OSError | ssl.SSLError):
            raise TargetError(
                codes.CONNECTION_FAILURE, f"login to the target failed: {exc}"
            ) from None
        raise


async def _negotiate_tls(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: PgTarget
) -> None:
    """Ask for TLS as libpq's sslmode would, and refuse where the mode requires it."""
    if target.sslmode == "disable":
        return
    writer.write(pgm.ssl_request())
    await writer.drain()
    answer = await reader.readexactly(1)
    if answer != codes.SSL_ACCEPTED:
        if target.sslmode in ("require", "verify-ca", "verify-full"):
            raise TargetError(
                codes.CLIENT_UNABLE_TO_CONNECT,
                f"the target does not offer TLS, but sslmode is {target.sslmode}",
            )
        return
    context, hostname = target_tls(target.sslmode, target.sslrootcert, target.host)
    await writer.start_tls(context, server_hostname=hostname)


async def _authenticate(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    target: PgTarget,
    password: str | None,
) -> Login:
    framer = framing.MessageFramer()
    scram: scramp.ScramClient | None = None
    while True:
        data = await reader.read(READ_SIZE)
        if not data:
            raise TargetError(
                codes.CONNECTION_FAILURE, "the target closed the connection during login"
            )
        messages = framer.feed(data)
        for index, message in enumerate(messages):
            if message.tag == codes.ERROR_RESPONSE:
                fields = pgm.parse_error_fields(message.body)
                raise TargetError(
                    fields.sqlstate or codes.INVALID_AUTHORIZATION,
                    f"the target refused the agent's login: {fields.message}",
                )
            if message.tag == codes.NOTICE_RESPONSE:
                continue
            if message.tag != codes.AUTHENTICATION:
                raise TargetError(
                    codes.PROTOCOL_VIOLATION, "the target sent an unexpected message during login"
                )
            auth = pgm.parse_authentication(message.body)
            if auth.code == pgm.AUTH_OK:
                return Login(
                    reader, writer, framer, data[message.end :], messages[index + 1 :], message.end
                )
            scram = _answer(auth, writer, target, password, scram)
        await writer.drain()


def _answer(
    auth: pgm.AuthRequest,
    writer: asyncio.StreamWriter,
    target: PgTarget,
    password: str | None,
    scram: scramp.ScramClient | None,
) -> scramp.ScramClient | None:
    """Write the answer to one authentication request; returns the SCRAM state."""
    needs_password = (pgm.AUTH_CLEARTEXT_PASSWORD, pgm.AUTH_MD5_PASSWORD, pgm.AUTH_SASL)
    if auth.code in needs_password and password is None:
        raise TargetError(
            codes.INVALID_AUTHORIZATION,
            "the target asks for a password, but the connection has no secret.password",
        )
    if auth.code == pgm.AUTH_CLEARTEXT_PASSWORD:
        writer.write(pgm.password_message(password.encode("utf-8") if password else b""))
    elif auth.code == pgm.AUTH_MD5_PASSWORD:
        writer.write(pgm.password_message(pgm.md5_password(target.user, password or "", auth.data)))
    elif auth.code == pgm.AUTH_SASL:
        mechanisms = pgm.sasl_mechanisms(auth.data)
        if "SCRAM-SHA-256" not in mechanisms:
            raise TargetError(
                codes.INVALID_AUTHORIZATION,
                f"the target offers only unsupported SASL mechanisms: {mechanisms}",
            )
        scram = scramp.ScramClient(["SCRAM-SHA-256"], target.user, password or "")
        first = scram.get_client_first().encode("utf-8")
        writer.write(pgm.sasl_initial_response("SCRAM-SHA-256", first))
    elif auth.code == pgm.AUTH_SASL_CONTINUE and scram is not None:
        scram.set_server_first(auth.data.decode("utf-8"))
        writer.write(pgm.sasl_response(scram.get_client_final().encode("utf-8")))
    elif auth.code == pgm.AUTH_SASL_FINAL and scram is not None:
        try:
            scram.set_server_final(auth.data.decode("utf-8"))
        except scramp.ScramException:
            raise TargetError(
                codes.INVALID_AUTHORIZATION,
                "the target's SCRAM signature did not verify: it may be an impostor",
            ) from None
    else:
        raise TargetError(
            codes.INVALID_AUTHORIZATION,
            f"unsupported authentication request {auth.code} from target",
        )
    return scram
