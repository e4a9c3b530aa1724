"""Logs a line, then raises: the job ends Failed with the exception as its error."""

from rpa_robot import sdk

sdk.log("about to fail", level="Warning")
raise RuntimeError("something went wrong on purpose")
