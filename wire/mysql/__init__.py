"""The MySQL/MariaDB client/server protocol: a sans-IO packet framer (``packets``), payload
builders and parsers (``messages``), the password plugins' algorithms (``auth``) and the
protocol's constants (``constants``). Nothing here knows about sessions, policy or sockets."""
