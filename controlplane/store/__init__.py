"""Persistence: SQLModel tables, the engine, and Alembic migrations applied at start."""
