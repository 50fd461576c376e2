"""Gatehouse gRPC contract (generated code lives in gatehouse.v1)."""
