"""Fusion Ledger: auditable LLM fusion on an immutable Postgres event log."""

__version__ = "0.1.0"
