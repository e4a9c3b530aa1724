"""Logs ``count`` lines and sets the output ``greeting``.

Input: ``name`` (who to greet), ``count`` (lines to log), ``delay_s`` (pause between lines),
``ids_file`` (optional: write the id of every logged line there, one per line).
"""

import time

from rpa_robot import sdk

args = sdk.input_args()
name = args.get("name", "world")
count = int(args.get("count", 3))
delay = float(args.get("delay_s", 0))
ids = []
for n in range(count):
    ids.append(sdk.log(f"hello {name} #{n}", n=n))
    if ids_file := args.get("ids_file"):
        with open(ids_file, "a", encoding="utf-8") as f:
            f.write(ids[-1] + "\n")
    if delay:
        time.sleep(delay)
sdk.set_output(greeting=f"Hello, {name}!", lines=count)
