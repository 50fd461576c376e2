"""The agent's side of `http` connections: requests sent on with the credential injected."""
