"""MySQL client/server protocol constants, defined once: capability and status flags, command
bytes, column types, the packet headers that tell responses apart, and the error codes the
gateway answers with itself. Names follow MySQL's own headers (``mysql_com.h``)."""

from __future__ import annotations

from enum import IntEnum, IntFlag

__all__ = [
    "Capability",
    "Command",
    "FieldType",
    "Status",
]

MAX_PAYLOAD = 0xFFFFFF
"""Largest payload of one physical packet (16 MiB - 1); a longer one continues in the next."""
SCRAMBLE_LENGTH = 20
"""Bytes of the server's nonce (auth-plugin-data) the password plugins use."""
DEFAULT_CHARSET = 45  # utf8mb4_general_ci: the gateway reads statement text as UTF-8
BINARY_CHARSET = 63

OK_HEADER = 0x00
EOF_HEADER = 0xFE
ERR_HEADER = 0xFF
LOCAL_INFILE_HEADER = 0xFB
AUTH_MORE_DATA = 0x01  # caching_sha2_password's in-between answers, an RSA key
AUTH_SWITCH = 0xFE

# caching_sha2_password's AuthMoreData bodies.
SHA2_REQUEST_PUBLIC_KEY = 0x02
SHA2_FAST_AUTH_OK = 0x03
SHA2_FULL_AUTH = 0x04

NATIVE_PASSWORD = "mysql_native_password"
CACHING_SHA2_PASSWORD = "caching_sha2_password"
SHA256_PASSWORD = "sha256_password"
ED25519 = "client_ed25519"
CLEAR_PASSWORD = "mysql_clear_password"

# Errors the gateway sends itself, with the SQLSTATE a server pairs them with.
ER_TABLEACCESS_DENIED = 1142  # "command denied to user": a guardrail's refusal
ER_SPECIFIC_ACCESS_DENIED = 1227
ER_ACCESS_DENIED = 1045
ER_UNKNOWN_COM = 1047
ER_NOT_SUPPORTED = 1235
ER_UNKNOWN_STMT_HANDLER = 1243
ER_PARSE_ERROR = 1064
ER_HANDSHAKE = 1043
ER_NET_READ_ERROR = 1158
ER_UNKNOWN_ERROR = 1105
ER_QUERY_INTERRUPTED = 1317
ER_SERVER_SHUTDOWN = 1053
ER_CONNECTION_LOST = 2013  # a client-side code: "Lost connection to server during query"


class Capability(IntFlag):
    LONG_PASSWORD = 1
    FOUND_ROWS = 1 << 1
    LONG_FLAG = 1 << 2
    CONNECT_WITH_DB = 1 << 3
    NO_SCHEMA = 1 << 4
    COMPRESS = 1 << 5
    ODBC = 1 << 6
    LOCAL_FILES = 1 << 7
    IGNORE_SPACE = 1 << 8
    PROTOCOL_41 = 1 << 9
    INTERACTIVE = 1 << 10
    SSL = 1 << 11
    IGNORE_SIGPIPE = 1 << 12
    TRANSACTIONS = 1 << 13
    RESERVED = 1 << 14
    SECURE_CONNECTION = 1 << 15
    MULTI_STATEMENTS = 1 << 16
    MULTI_RESULTS = 1 << 17
    PS_MULTI_RESULTS = 1 << 18
    PLUGIN_AUTH = 1 << 19
    CONNECT_ATTRS = 1 << 20
    PLUGIN_AUTH_LENENC_DATA = 1 << 21
    CAN_HANDLE_EXPIRED_PASSWORDS = 1 << 22
    SESSION_TRACK = 1 << 23
    DEPRECATE_EOF = 1 << 24
    OPTIONAL_RESULTSET_METADATA = 1 << 25
    ZSTD_COMPRESSION = 1 << 26
    QUERY_ATTRIBUTES = 1 << 27
    MULTI_FACTOR_AUTHENTICATION = 1 << 28
    CAPABILITY_EXTENSION = 1 << 29
    SSL_VERIFY_SERVER_CERT = 1 << 30
    REMEMBER_OPTIONS = 1 << 31


# MariaDB's extended capabilities (the high 32 bits, sent in the filler of the handshake) are
# never offered: the gateway speaks the protocol both servers share.

#: What the gateway can relay: everything a client may ask for except what changes the framing
#: or the meaning of packets in ways the inspector does not follow (compression, optional
#: metadata, query attributes, multi-factor auth) or how the server reads names (NO_SCHEMA).
#: LOCAL_FILES is added per connection.
RELAYED = (
    Capability.LONG_PASSWORD
    | Capability.FOUND_ROWS
    | Capability.LONG_FLAG
    | Capability.CONNECT_WITH_DB
    | Capability.ODBC
    | Capability.IGNORE_SPACE
    | Capability.PROTOCOL_41
    | Capability.INTERACTIVE
    | Capability.IGNORE_SIGPIPE
    | Capability.TRANSACTIONS
    | Capability.RESERVED
    | Capability.SECURE_CONNECTION
    | Capability.MULTI_STATEMENTS
    | Capability.MULTI_RESULTS
    | Capability.PS_MULTI_RESULTS
    | Capability.PLUGIN_AUTH
    | Capability.CONNECT_ATTRS
    | Capability.PLUGIN_AUTH_LENENC_DATA
    | Capability.CAN_HANDLE_EXPIRED_PASSWORDS
    | Capability.SESSION_TRACK
    | Capability.DEPRECATE_EOF
)


class Status(IntFlag):
    IN_TRANS = 1
    AUTOCOMMIT = 2
    MORE_RESULTS_EXISTS = 8
    NO_GOOD_INDEX_USED = 16
    NO_INDEX_USED = 32
    CURSOR_EXISTS = 64
    LAST_ROW_SENT = 128
    DB_DROPPED = 256
    NO_BACKSLASH_ESCAPES = 512
    METADATA_CHANGED = 1024
    QUERY_WAS_SLOW = 2048
    PS_OUT_PARAMS = 4096
    IN_TRANS_READONLY = 8192
    SESSION_STATE_CHANGED = 16384


class Command(IntEnum):
    SLEEP = 0x00
    QUIT = 0x01
    INIT_DB = 0x02
    QUERY = 0x03
    FIELD_LIST = 0x04
    CREATE_DB = 0x05
    DROP_DB = 0x06
    REFRESH = 0x07
    SHUTDOWN = 0x08
    STATISTICS = 0x09
    PROCESS_INFO = 0x0A
    CONNECT = 0x0B
    PROCESS_KILL = 0x0C
    DEBUG = 0x0D
    PING = 0x0E
    TIME = 0x0F
    DELAYED_INSERT = 0x10
    CHANGE_USER = 0x11
    BINLOG_DUMP = 0x12
    TABLE_DUMP = 0x13
    CONNECT_OUT = 0x14
    REGISTER_SLAVE = 0x15
    STMT_PREPARE = 0x16
    STMT_EXECUTE = 0x17
    STMT_SEND_LONG_DATA = 0x18
    STMT_CLOSE = 0x19
    STMT_RESET = 0x1A
    SET_OPTION = 0x1B
    STMT_FETCH = 0x1C
    DAEMON = 0x1D
    BINLOG_DUMP_GTID = 0x1E
    RESET_CONNECTION = 0x1F


class FieldType(IntEnum):
    DECIMAL = 0x00
    TINY = 0x01
    SHORT = 0x02
    LONG = 0x03
    FLOAT = 0x04
    DOUBLE = 0x05
    NULL = 0x06
    TIMESTAMP = 0x07
    LONGLONG = 0x08
    INT24 = 0x09
    DATE = 0x0A
    TIME = 0x0B
    DATETIME = 0x0C
    YEAR = 0x0D
    NEWDATE = 0x0E
    VARCHAR = 0x0F
    BIT = 0x10
    TIMESTAMP2 = 0x11
    DATETIME2 = 0x12
    TIME2 = 0x13
    JSON = 0xF5
    NEWDECIMAL = 0xF6
    ENUM = 0xF7
    SET = 0xF8
    TINY_BLOB = 0xF9
    MEDIUM_BLOB = 0xFA
    LONG_BLOB = 0xFB
    BLOB = 0xFC
    VAR_STRING = 0xFD
    STRING = 0xFE
    GEOMETRY = 0xFF


#: Commands the server answers with nothing at all.
UNANSWERED = frozenset({Command.QUIT, Command.STMT_CLOSE, Command.STMT_SEND_LONG_DATA})
