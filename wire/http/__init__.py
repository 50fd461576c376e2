"""The HTTP/1.1 codec for `http` connections (on h11): whole requests, the server side's answers."""
