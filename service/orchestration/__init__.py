"""Orchestration: plan a run, fan out, judge, finalize; sweep abandoned runs."""
