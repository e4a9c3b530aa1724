"""Calendars: working and non-working days in a time zone; Calendar resources and schedules use them."""
