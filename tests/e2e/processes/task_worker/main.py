"""Take the tasks of ``queue`` one at a time and finish each Successful, until none is waiting.

Input: ``queue``; ``log_every`` (optional: a log line every that many tasks). Output: ``done``, the
number of tasks this job finished. Each task's output names the job that did it (``job``) and
echoes its parameter ``n``.
"""

from rpa_robot import sdk

args = sdk.input_args()
queue = args["queue"]
log_every = int(args.get("log_every", 0))
job = sdk.job_id()
done = 0
while not sdk.should_stop():
    task = sdk.take_task(queue)
    if task is None:
        break
    sdk.finish_task(task, "successful", output={"job": job, "n": task.parameters.get("n")})
    done += 1
    if log_every and done % log_every == 0:
        sdk.log(f"{done} tasks done", done=done)
sdk.set_output(done=done)
