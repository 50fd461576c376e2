"""PostgreSQL's numbers, named once: message tags, type oids and SQLSTATEs.

Every side (the agent's engine and masker, the control plane's inspector and pg-listen, the
CLI's `exec` and local listener) reads them from here, so that a code means one thing
everywhere. The names follow PostgreSQL's own (protocol-message-formats, pg_type.dat,
errcodes.txt).
"""

from __future__ import annotations

from typing import Final

# ---- backend message tags (server → client) ------------------------------------------------
(
    DATA_ROW,
    ROW_DESCRIPTION,
    COMMAND_COMPLETE,
    EMPTY_QUERY,
    PORTAL_SUSPENDED,
    ERROR_RESPONSE,
    NOTICE_RESPONSE,
    READY_FOR_QUERY,
    PARSE_COMPLETE,
    BIND_COMPLETE,
    CLOSE_COMPLETE,
    NO_DATA,
    COPY_OUT_RESPONSE,
    COPY_IN_RESPONSE,
    NOTIFICATION_RESPONSE,
    FUNCTION_CALL_RESPONSE,
    PARAMETER_STATUS,
    BACKEND_KEY_DATA,
    AUTHENTICATION,
) = (ord(c) for c in "DTCIsENZ123nHGAVSKR")

# ---- frontend message tags (client → server) -----------------------------------------------
QUERY, PARSE, BIND, DESCRIBE, EXECUTE, CLOSE, SYNC, FLUSH, TERMINATE, FUNCTION_CALL = (
    ord(c) for c in "QPBDECSHXF"
)
COPY_DATA, COPY_DONE, COPY_FAIL, PASSWORD_MESSAGE = (ord(c) for c in "dcfp")
"""CopyData and CopyDone go both ways; CopyFail and the password message come from clients."""

# ---- SSL/GSS negotiation answers --------------------------------------------------------------
SSL_ACCEPTED: Final = b"S"
SSL_REFUSED: Final = b"N"

# ---- type oids (pg_type.dat) ------------------------------------------------------------------
BOOL, BYTEA, CHAR, NAME, INT8, INT2, INT4, TEXT, OID = 16, 17, 18, 19, 20, 21, 23, 25, 26
JSON, JSONB, UNKNOWN, BPCHAR, VARCHAR, NUMERIC = 114, 3802, 705, 1042, 1043, 1700
FLOAT4, FLOAT8, UUID = 700, 701, 2950
INT_TYPES: Final = frozenset({INT8, INT2, INT4, OID})
FLOAT_TYPES: Final = frozenset({FLOAT4, FLOAT8})
JSON_TYPES: Final = frozenset({JSON, JSONB})

# ---- SQLSTATEs (errcodes.txt) -----------------------------------------------------------------
CLIENT_UNABLE_TO_CONNECT: Final = "08001"  # sqlclient_unable_to_establish_sqlconnection
CONNECTION_REJECTED: Final = "08004"  # sqlserver_rejected_establishment_of_sqlconnection
CONNECTION_FAILURE: Final = "08006"
PROTOCOL_VIOLATION: Final = "08P01"
FEATURE_NOT_SUPPORTED: Final = "0A000"
CHARACTER_NOT_IN_REPERTOIRE: Final = "22021"
INVALID_SQL_STATEMENT_NAME: Final = "26000"
INVALID_AUTHORIZATION: Final = "28000"  # invalid_authorization_specification
INVALID_PASSWORD: Final = "28P01"
INVALID_CURSOR_NAME: Final = "34000"
INVALID_CATALOG_NAME: Final = "3D000"  # no such database: for pg-listen, no such connection
INSUFFICIENT_PRIVILEGE: Final = "42501"  # what a server says when it refuses
NAME_TOO_LONG: Final = "42622"
TOO_MANY_CONNECTIONS: Final = "53300"
PROGRAM_LIMIT_EXCEEDED: Final = "54000"
STATEMENT_TOO_COMPLEX: Final = "54001"
ADMIN_SHUTDOWN: Final = "57P01"  # what a server says when it ends a session
SYSTEM_ERROR: Final = "58000"
