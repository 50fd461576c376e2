"""The audit trail: event shape, the hash chain, and the one writer that commits events."""
