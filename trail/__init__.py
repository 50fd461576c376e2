"""The verifiable audit trail, neutral ground between who writes it and who checks it.

The control plane writes events with it (canonical JSON, chain hash, the notes its key signs);
`gatehouse audit verify` checks them with it, without trusting the server and without importing
the control plane. One canonical form, one chain rule, one verifier (docs/decisions/0017).
Nothing here touches a store or the network; `cryptography` is imported only when a key is.
"""
