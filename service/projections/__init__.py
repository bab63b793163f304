"""Projections: read models kept from the log (runner.py), their SQL (definitions.py)
and the statistics asked of them (queries.py)."""
