"""Starts a child process, logs both pids, then never stops by itself (it ignores soft stop)."""

import os
import subprocess
import sys
import time

from rpa_robot import sdk

child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
sdk.log("started", pid=os.getpid(), child_pid=child.pid)
while True:
    if sdk.should_stop():
        sdk.log("asked to stop; not stopping")
    time.sleep(0.2)
