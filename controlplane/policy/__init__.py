"""Declarative policy: the admin-applied file of connections, guardrails, masking and access."""
