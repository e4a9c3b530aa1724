"""Runs the SDK calls listed in ``steps`` and appends what each gave to ``results`` (JSON lines).

A step is ``{"op": ..., ...}``: ``take`` (queue, lock_s, timeout), ``finish`` (outcome, timeout; the
task of the last take), ``progress`` (note), ``add`` (queue, names), ``credential`` (name; only a
digest of the password is written), ``get`` (name, watch), ``set`` (name, value), ``wait_file``
(path: until it exists), ``wait_change`` (name, text: until the watched value is ``text``),
``threads`` (name, count: ``get_resource`` from that many threads at once).
"""

import hashlib
import json
import os
import threading
import time

from rpa_robot import sdk

args = sdk.input_args()
task = None


def record(doc):
    with open(args["results"], "a", encoding="utf-8") as f:
        f.write(json.dumps(doc) + "\n")


for step in args["steps"]:
    op = step["op"]
    try:
        if op == "take":
            task = sdk.take_task(step["queue"], lock_s=step.get("lock_s"), timeout=step.get("timeout", 30))
            record({"op": op, "task": task.id if task else None, "token": task.lock_token if task else None})
        elif op == "finish":
            retry = sdk.finish_task(
                task, step.get("outcome", "successful"), output={"ok": 1}, timeout=step.get("timeout", 60)
            )
            record({"op": op, "retry": retry})
        elif op == "progress":
            sdk.task_progress(task, step["note"])
            record({"op": op})
        elif op == "add":
            ids = sdk.add_tasks(step["queue"], [{"name": n} for n in step["names"]])
            record({"op": op, "ids": ids})
        elif op == "credential":
            cred = sdk.get_credential(step["name"])
            digest = hashlib.sha256((cred.password or "").encode()).hexdigest()
            sdk.log(f"credential read: {cred!r}")  # the repr must not show the password
            record({"op": op, "login": cred.login, "sha256": digest})
        elif op == "get":
            res = sdk.get_resource(step["name"], watch=step.get("watch", False))
            record({"op": op, "text": res.text, "kind": res.kind})
        elif op == "set":
            res = sdk.set_resource(step["name"], step["value"])
            record({"op": op, "text": res.text})
        elif op == "threads":
            # The same request from many threads at once: each gets its own answer.
            texts = [None] * step["count"]

            def read(n, name=step["name"], into=texts):
                into[n] = sdk.get_resource(name).text

            workers = [threading.Thread(target=read, args=(n,)) for n in range(step["count"])]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            record({"op": op, "texts": texts})
        elif op == "wait_file":
            while not os.path.exists(step["path"]):
                time.sleep(0.05)
        elif op == "wait_change":
            while (sdk.watched(step["name"]) or sdk.Resource("", "")).text != step["text"]:
                time.sleep(0.05)
            record({"op": op, "text": step["text"]})
    except sdk.SdkError as exc:
        record({"op": op, "error": exc.code, "field": exc.field, "class": type(exc).__name__})
