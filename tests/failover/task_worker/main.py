"""The failover test's queue worker: takes tasks of ``queue`` until none is waiting (at most
``max_tasks``) and finishes each Successful, writing what it did to ``records`` (one line per event:
``start <time>``, ``take|done|journaled|refused-<code> <task id> <lock token> <time>``, ``log <log
line id> <time>``), so the test
can tell whether two robots ever held one task at once and whether any task was finished twice.

A robot that is reconnecting (its gateway replica died) answers ``Offline``: a take is tried again;
a finish is journaled by the robot and delivered when it is back.
"""

import time

from rpa_robot import sdk

args = sdk.input_args()
queue = args["queue"]
records = args["records"]
max_tasks = int(args.get("max_tasks", 3))
work_s = float(args.get("work_s", 0.1))


def note(kind: str, task: sdk.Task | None = None) -> None:
    with open(records, "a", encoding="utf-8") as f:
        where = f"{task.id} {task.lock_token} " if task is not None else ""
        f.write(f"{kind} {where}{time.time():.3f}\n")


note("start")
done = 0
deadline = time.monotonic() + 120
while done < max_tasks and time.monotonic() < deadline:
    try:
        task = sdk.take_task(queue)
    except sdk.Offline:
        time.sleep(0.5)
        continue
    if task is None:
        break
    note("take", task)
    with open(records, "a", encoding="utf-8") as f:
        f.write(f"log {sdk.log('working on a task', task_id=task.id)} {time.time():.3f}\n")
    time.sleep(work_s)
    try:
        sdk.finish_task(task, "successful", output={"job": sdk.job_id()})
    except sdk.Offline:
        note("journaled", task)
    except sdk.TaskError as exc:
        note(f"refused-{exc.code}", task)
        continue
    else:
        note("done", task)
    done += 1
sdk.set_output(done=done)
