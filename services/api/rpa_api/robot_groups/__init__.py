"""Robot groups: named sets of robots that a job can target (any free member takes it)."""
