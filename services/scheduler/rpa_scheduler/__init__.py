"""Scheduler: dispatch, sweeps, schedule triggers."""
