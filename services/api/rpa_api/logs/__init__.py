"""Robot messages (log lines): filtered listing with cursor pagination, and a job's live tail."""
