"""Queues and their tasks: queue settings, adding tasks (one, many, a CSV file), listing and editing
them as people do, their history, and per-queue statistics. Robots take and finish tasks through the
gateway (``rpa_common.taskflow``)."""
