#!/usr/bin/env python3
"""A stand-in for `python -m prefect.engine` in poolworker's tests.

Uses only the standard library. It does what the real engine does to a flow run's state,
without loading any flow:

1. reads the run id from PREFECT__FLOW_RUN_ID (or argv[1]) and the API from PREFECT_API_URL,
   with PREFECT_API_AUTH_STRING (basic auth) or PREFECT_API_KEY (bearer) as credentials;
2. reads the run, then proposes RUNNING, sleeping through WAIT answers; on ABORT, or a
   REJECT into another state, it exits 0 as the engine does;
3. acts on FAKE_ENGINE_MODE:
   complete          propose COMPLETED, exit 0 (the default)
   fail              propose FAILED, exit 1
   exit:<code>       exit with <code> and no final state
   sleep:<seconds>   sleep, then complete; SIGTERM kills it like Python's default (-15)
   sleep-exit:<seconds>:<code>   sleep, then exit with <code> and no final state
   env-dump:<path>   write the environment as a JSON object to <path>, then complete
   wait-file:<path>  wait until <path> exists (polling it, without calling the API), then
                     complete; after FAKE_ENGINE_WAIT_TIMEOUT seconds (default 900) without
                     it, exit 3 with no final state

With FAKE_ENGINE_PID_FILE set, it first writes its process id to that file.
With FAKE_ENGINE_MARK_DIR set, it appends one line per event to <dir>/<flow run id>:
"launched <pid>" when it starts, "running <pid>" once RUNNING was accepted (the flow body
executes), "final <pid> <STATE> <status>" after it proposed the final state. Each line is one
O_APPEND write, so concurrent engines of one run never interleave lines.
"""

import base64
import datetime
import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid

USER_AGENT = "prefect/3.8.8 (API 0.8.4)"
RETRY_CODES = (408, 429, 502, 503)


class Api:
    def __init__(self):
        self.url = os.environ["PREFECT_API_URL"].rstrip("/")
        self.headers = {
            "Content-Type": "application/json",
            "X-PREFECT-API-VERSION": "0.8.4",
            "User-Agent": USER_AGENT,
        }
        auth = os.environ.get("PREFECT_API_AUTH_STRING")
        key = os.environ.get("PREFECT_API_KEY")
        if auth:
            token = base64.b64encode(auth.encode()).decode()
            self.headers["Authorization"] = "Basic " + token
        elif key:
            self.headers["Authorization"] = "Bearer " + key
        self.csrf = None  # (client, token), or False once the server said CSRF is off

    def call(self, method, path, body=None):
        # Like Prefect's client: retry 408/429/502/503 and lost connections, 5 times at most,
        # waiting Retry-After when given (shortened backoff otherwise, for tests).
        for attempt in range(6):
            try:
                return self._send(method, path, body)
            except urllib.error.HTTPError as error:
                text = error.read().decode()
                if error.code not in RETRY_CODES or attempt == 5:
                    return error.code, text
                delay = float(error.headers.get("Retry-After") or 0.1 * 2 ** attempt)
            except (urllib.error.URLError, ConnectionError):
                if attempt == 5:
                    raise
                delay = 0.1 * 2 ** attempt
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _send(self, method, path, body):
        headers = dict(self.headers)
        if method != "GET":
            headers.update(self._csrf_headers())
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers=headers)
        with urllib.request.urlopen(request, timeout=60) as response:
            text = response.read().decode()
            return response.status, json.loads(text) if text else None

    def _csrf_headers(self):
        if self.csrf is None:
            client = str(uuid.uuid4())
            status, body = self.call("GET", "/csrf-token?client=" + client)
            self.csrf = (client, body["token"]) if status == 200 else False
        if not self.csrf:
            return {}
        return {"Prefect-Csrf-Client": self.csrf[0], "Prefect-Csrf-Token": self.csrf[1]}

    def propose(self, run_id, state_type, message=None):
        while True:
            # One transition id per proposal: HTTP retries of it are then idempotent.
            state = {
                "type": state_type,
                "message": message,
                "state_details": {"flow_run_id": run_id, "transition_id": str(uuid.uuid4())},
            }
            status, result = self.call("POST", f"/flow_runs/{run_id}/set_state",
                                       {"state": state, "force": False})
            if status not in (200, 201):
                raise RuntimeError(f"set_state {state_type} answered {status}: {result}")
            if result["status"] != "WAIT":
                return result
            time.sleep(result["details"]["delay_seconds"])

    def log(self, run_id, message):
        now = datetime.datetime.now(datetime.timezone.utc).isoformat()
        entry = {"name": "prefect.flow_runs", "level": 20, "message": message,
                 "timestamp": now, "flow_run_id": run_id, "task_run_id": None}
        self.call("POST", "/logs/", [entry])


def mark(run_id, event, detail=""):
    """Appends "<event> <pid> <detail>" to this run's marker file (FAKE_ENGINE_MARK_DIR)."""
    directory = os.environ.get("FAKE_ENGINE_MARK_DIR")
    if not directory or not run_id:
        return
    line = f"{event} {os.getpid()} {detail}".rstrip()
    fd = os.open(os.path.join(directory, run_id), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def wait_for_file(path):
    deadline = time.monotonic() + float(os.environ.get("FAKE_ENGINE_WAIT_TIMEOUT", "900"))
    while not os.path.exists(path):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)
    return True


def main():
    run_id = os.environ.get("PREFECT__FLOW_RUN_ID") or (sys.argv[1] if len(sys.argv) > 1 else "")
    if not run_id:
        print("fake_engine: no flow run id", file=sys.stderr)
        return 1
    mark(run_id, "launched")
    mode = os.environ.get("FAKE_ENGINE_MODE", "complete")
    pid_file = os.environ.get("FAKE_ENGINE_PID_FILE")
    if pid_file:
        with open(pid_file + ".tmp", "w", encoding="utf-8") as out:
            out.write(str(os.getpid()))
        os.replace(pid_file + ".tmp", pid_file)
    api = Api()
    status, run = api.call("GET", f"/flow_runs/{run_id}")
    if status != 200:
        print(f"fake_engine: cannot read flow run {run_id}: {status} {run}", file=sys.stderr)
        return 1

    result = api.propose(run_id, "RUNNING")
    if result["status"] == "ABORT" or (result["status"] == "REJECT" and
                                       (result["state"] or {}).get("type") != "RUNNING"):
        print(f"fake_engine: not running: {result['details']}", file=sys.stderr)
        return 0
    mark(run_id, "running")
    api.log(run_id, f"fake engine running in mode {mode}")

    if mode == "fail":
        api.propose(run_id, "FAILED", "Flow run encountered an exception: fake failure")
        return 1
    if mode.startswith("exit:"):
        return int(mode.split(":", 1)[1])
    if mode.startswith("sleep-exit:"):
        _, seconds, code = mode.split(":")
        time.sleep(float(seconds))
        return int(code)
    if mode.startswith("sleep:"):
        time.sleep(float(mode.split(":", 1)[1]))
    elif mode.startswith("env-dump:"):
        with open(mode.split(":", 1)[1], "w", encoding="utf-8") as out:
            json.dump(dict(os.environ), out)
    elif mode.startswith("wait-file:"):
        if not wait_for_file(mode.split(":", 1)[1]):
            print(f"fake_engine: {mode.split(':', 1)[1]} did not appear", file=sys.stderr)
            return 3
    elif mode != "complete":
        print(f"fake_engine: unknown FAKE_ENGINE_MODE {mode!r}", file=sys.stderr)
        return 2
    result = api.propose(run_id, "COMPLETED", "Finished in state Completed()")
    mark(run_id, "final", f"COMPLETED {result['status']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
