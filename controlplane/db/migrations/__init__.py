"""Alembic migration environment."""
