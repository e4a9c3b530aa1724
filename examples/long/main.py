"""Loops for ``seconds``, checking ``sdk.should_stop()`` every step: a soft stop ends it cleanly."""

import time

from rpa_robot import sdk

args = sdk.input_args()
deadline = time.monotonic() + float(args.get("seconds", 600))
step = 0
sdk.log("started")
while time.monotonic() < deadline:
    if sdk.should_stop():
        sdk.log("stop requested: finishing cleanly", step=step)
        sdk.set_output(stopped_at_step=step)
        break
    step += 1
    time.sleep(0.1)
else:
    sdk.set_output(steps=step)
