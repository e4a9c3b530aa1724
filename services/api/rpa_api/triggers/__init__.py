"""Triggers: schedules, queue, webhook, robot command and job completion triggers, as people manage them."""
