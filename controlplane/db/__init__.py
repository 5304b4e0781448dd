"""Database: SQLModel tables, engine set-up (SQLite WAL, PostgreSQL), Alembic migrations."""
