"""Statistics for dashboards: jobs by state, success rate and durations per process or robot, robot
utilisation, queue throughput and backlog, over a time range in hourly or daily buckets. Every figure
is computed by the database, from indexes made for it (migration 0009)."""
