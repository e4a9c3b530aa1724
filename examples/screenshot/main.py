"""Takes a screenshot of the robot's desktop, attached to a log line, and outputs its id."""

from rpa_robot import sdk

line = sdk.log("the desktop before we start", level="Info")
shot = sdk.screenshot(message_id=line)
sdk.set_output(screenshot_id=shot, message_id=line)
