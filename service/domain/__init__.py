"""Pure domain: event catalog, run state, judging, routing and scoring maths (no I/O)."""
