"""The control plane's side of `http` connections: each request decided and recorded first."""
