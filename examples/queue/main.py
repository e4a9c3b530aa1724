"""Works the tasks of a queue until none is left, with a credential, end to end.

Input: ``queue`` (the queue to work), ``credential`` (a Credentials resource: the "application"
login), ``work_s`` (optional: seconds each task takes, as real work would), ``max_tasks``
(optional: stop after that many).

For each task it takes (the robot renews the task's lock while it works), it "logs in" with the
credential, computes an output from the task's parameters, and finishes the task: Successful, or
Failed (Business) when the task's parameters say the work cannot be done (``amount`` below 0), so a
person sees why. The password is used and never logged, never put in an output. A finish the
orchestrator cannot take now (``sdk.Offline``) is journaled by the robot and delivered later; a
finish refused because the lock was lost (``stale_token``: the task went to another robot) is
counted as ``lost``. Output: ``done``, ``failed``, ``lost``, ``queue``.
"""

import contextlib
import time

from rpa_robot import sdk

args = sdk.input_args()
queue = args.get("queue", "invoices")
work_s = float(args.get("work_s", 0) or 0)
max_tasks = int(args.get("max_tasks", 0) or 0)

login = sdk.get_credential(args.get("credential", "erp-login"))
if login.expired:
    sdk.log("the credential has expired; asking a person to renew it", level="Warning", name=login.name)
if not login.password:
    raise RuntimeError(f"credential {login.name!r} has no password")
# Here a real process would type login.password into the application's login screen.
sdk.log("logged in", user=login.login)


def finish(task, outcome, **details):
    """Finish a task; True when the orchestrator took it (or will: the robot journaled it)."""
    try:
        sdk.finish_task(task, outcome, **details)
    except sdk.Offline:
        # The robot journaled the finish and delivers it when it is back; nothing to redo here.
        sdk.log(f"{task.name}: finish delivered later (orchestrator unreachable)", level="Warning")
    except sdk.TaskError as exc:
        # stale_token: the lock expired and another robot has the task now; its result counts.
        sdk.log(f"{task.name}: not finished here ({exc.code})", level="Warning", task_id=task.id)
        return False
    return True


done = failed = lost = 0
while not sdk.should_stop() and (not max_tasks or done + failed + lost < max_tasks):
    task = sdk.take_task(queue)
    if task is None:
        break
    sdk.log(f"working on {task.name}", task_id=task.id, retry=task.retry_number)
    if work_s:
        with contextlib.suppress(sdk.Offline):  # a note is journaled by the robot all the same
            sdk.task_progress(task, "started")
        time.sleep(work_s)
    amount = task.parameters.get("amount", 0)
    try:
        amount = float(amount)
    except (TypeError, ValueError):
        amount = -1.0
    if amount < 0:
        reason = f"amount {task.parameters.get('amount')!r} is not payable"
        if finish(task, "failed_business", reason=reason):
            failed += 1
        else:
            lost += 1
        continue
    if finish(task, "successful", output={"paid": round(amount, 2), "by": login.login}):
        done += 1
    else:
        lost += 1

sdk.log(f"queue {queue}: {done} done, {failed} failed, {lost} lost", done=done, failed=failed, lost=lost)
sdk.set_output(done=done, failed=failed, lost=lost, queue=queue)
