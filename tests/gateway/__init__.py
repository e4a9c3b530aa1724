"""Robot gateway and reference robot, end to end with real processes."""
