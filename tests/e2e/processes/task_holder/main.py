"""Take one task of ``queue`` with a lock of ``lock_s`` seconds and hold it for ``hold_s`` seconds
(the robot renews the lock meanwhile); the task's id goes to the file ``marker`` once taken.
"""

import time

from rpa_robot import sdk

args = sdk.input_args()
task = sdk.take_task(args["queue"], lock_s=int(args["lock_s"]))
if task is None:
    raise SystemExit("no task to hold")
with open(args["marker"], "w", encoding="utf-8") as f:
    f.write(task.id)
deadline = time.monotonic() + float(args.get("hold_s", 600))
while time.monotonic() < deadline and not sdk.should_stop():
    time.sleep(0.2)
sdk.finish_task(task, "successful", output={"held": True})
