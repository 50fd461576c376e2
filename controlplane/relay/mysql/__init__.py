"""MySQL inspection on the client's side of a session (``inspector``)."""
