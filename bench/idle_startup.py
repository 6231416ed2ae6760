"""Idle cost and start-up time: poolworker beside `prefect worker start`, on one Prefect server.

For each worker, alternating, `--rounds` times:
  * exec to first poll: from just before exec to the moment the server receives the worker's
    first `POST /work_pools/{pool}/get_scheduled_flow_runs`. A small reverse proxy between the
    worker and the server timestamps that request, so both workers are measured the same way.
  * RSS after start-up: resident memory of the worker's whole process tree at its first poll.
  * one hour of idle polling, simulated: an hour of the default settings is 360 polls (every
    10 s) and 120 heartbeats (every 30 s). Both workers run with those intervals divided by
    `--speedup` (30: a poll every 0.33 s, a heartbeat every 1 s; Prefect's worker stops at once
    with a heartbeat interval under 1 s) until the proxy has seen 360 polls; then their RSS is
    read, and the CPU (user + system) they used for those polls is scaled to exactly 360 polls:
    CPU seconds per hour of idling.
  * where the resident memory is: per mapping of the worker's main process (/proc/PID/smaps),
    the Rss of each shared library and of the program, the heap, other anonymous memory and
    stacks, and the number of threads; in the JSON only.

Writes a Markdown table and the raw figures (JSON). Run it through bench/run.sh.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Prefect's own worker runs from a virtualenv with Prefect alone (bench/setup_prefect_worker.sh),
# as a user of a process pool has it; the e2e virtualenv (server, clients) also holds the Docker
# and Kubernetes collections, which `prefect worker start` would import.
PREFECT_WORKER_VENV = Path(os.environ.get("POOLWORKER_PREFECT_WORKER_VENV",
                                          str(REPO / ".cache" / "venv-prefect-worker")))


def prefect_worker_command() -> list[str]:
    """argv of `prefect worker start` from the Prefect-only virtualenv."""
    exe = PREFECT_WORKER_VENV / "bin" / "prefect"
    if not exe.exists():
        raise SystemExit(f"{exe} is missing: run bench/setup_prefect_worker.sh (bench/run.sh does)")
    return [str(exe), "worker", "start"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- a timestamping reverse proxy -----------------------------------------------------------


class Proxy:
    """A TCP forwarder to the server that notes when the first poll request goes through.

    It works below HTTP, so keep-alive, streaming and the websocket that Prefect's worker opens
    for events pass untouched; it only scans what the worker sends for the poll's request line.
    """

    MARK = b"/get_scheduled_flow_runs HTTP/1.1"

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.first: float | None = None
        self.polls = 0
        self.lock = threading.Lock()
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, scan: bool) -> None:
        tail = b""
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if scan:
                    # Requests are small and the window keeps the end of the previous read, so
                    # a request line split across reads is still seen, and seen once.
                    window = tail + data
                    seen = window.count(self.MARK) - tail.count(self.MARK)
                    if seen > 0:
                        now = time.monotonic()
                        with self.lock:
                            self.polls += seen
                            if self.first is None:
                                self.first = now
                    tail = window[-len(self.MARK) + 1:]
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def reset(self) -> None:
        with self.lock:
            self.first = None
            self.polls = 0

    def poll_count(self) -> int:
        with self.lock:
            return self.polls

    def poll_time(self) -> float | None:
        with self.lock:
            return self.first

    def close(self) -> None:
        self.listener.close()


# ---- processes ------------------------------------------------------------------------------


def tree(pid: int) -> list[int]:
    """pid and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def rss_kib(pids: list[int]) -> int:
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, ValueError, IndexError):
            pass
    return total / CLOCK_TICKS


def smaps_breakdown(pid: int) -> dict[str, int]:
    """Rss in KiB of one process, per mapped file (by base name) or kind of anonymous memory."""
    out: dict[str, int] = {}
    name = "?"
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            fields = line.split()
            if not fields:
                continue
            if "-" in fields[0] and not fields[0].endswith(":"):
                path = fields[5] if len(fields) > 5 else ""
                if path.startswith("/"):
                    name = os.path.basename(path)
                elif path.startswith("[stack"):
                    name = "[stack]"
                elif path:
                    name = path
                else:
                    name = "[anon]"
            elif fields[0] == "Rss:":
                out[name] = out.get(name, 0) + int(fields[1])
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def start_server(work: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(work / "server-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_UI_ENABLED="false")
    proc = subprocess.Popen(
        [str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, cwd=work, stdout=open(work / "server.log", "wb"), stderr=subprocess.STDOUT,
        start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2):
                return proc, port
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.5)
    raise SystemExit("the Prefect server did not start; see " + str(work / "server.log"))


POLLS_PER_HOUR = 360  # PREFECT_WORKER_QUERY_SECONDS=10


def measure(kind: str, argv: list[str], env: dict[str, str], proxy: Proxy, log: Path) -> dict:
    proxy.reset()
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = t0 + 120
        while proxy.poll_time() is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{kind} did not poll; see {log}")
            time.sleep(0.002)
        first_poll = proxy.poll_time() - t0
        rss_startup = rss_kib(tree(proc.pid))
        cpu_before = cpu_seconds(tree(proc.pid))
        polls_before = proxy.poll_count()
        idle_start = time.monotonic()
        while proxy.poll_count() - polls_before < POLLS_PER_HOUR:
            if proc.poll() is not None or time.monotonic() > deadline + 600:
                raise SystemExit(f"{kind} stopped polling; see {log}")
            time.sleep(0.05)
        pids = tree(proc.pid)
        rss_idle = rss_kib(pids)
        polls = proxy.poll_count() - polls_before
        cpu_hour = (cpu_seconds(pids) - cpu_before) * POLLS_PER_HOUR / polls
        breakdown = smaps_breakdown(proc.pid)
        threads = thread_count(proc.pid)
        elapsed = time.monotonic() - idle_start
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return {"exec_to_first_poll_s": first_poll, "rss_after_startup_kib": rss_startup,
            "rss_idle_kib": rss_idle, "cpu_s_per_hour_idle": cpu_hour,
            "simulated_hour_seconds": elapsed, "polls": polls,
            "processes": len(pids), "threads": threads, "smaps_rss_kib": breakdown}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--speedup", type=float, default=30,
                        help="poll and heartbeat this many times faster than the defaults")
    parser.add_argument("--poolworker", default=str(REPO / "build" / "bin" / "poolworker"))
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="poolworker-bench-"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    server, port = start_server(work)
    proxy = Proxy(port)
    try:
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        base_env.update(
            PREFECT_API_URL=f"http://127.0.0.1:{proxy.port}/api",
            PREFECT_HOME=str(work / "worker-home"),
            PREFECT_WORKER_QUERY_SECONDS=str(10 / args.speedup),
            PREFECT_WORKER_HEARTBEAT_SECONDS=str(30 / args.speedup),
            PATH=f"{VENV_BIN}:{base_env.get('PATH', '')}",
        )
        subprocess.run([str(VENV_BIN / "prefect"), "work-pool", "create", "bench", "--type",
                        "process"], env=base_env, check=True, stdout=subprocess.DEVNULL)
        workers = {
            "poolworker": [args.poolworker, "start", "--pool", "bench",
                           "--state-dir", str(work / "state")],
            "prefect": [*prefect_worker_command(), "--pool", "bench"],
        }
        raw: dict[str, list[dict]] = {k: [] for k in workers}
        for r in range(args.rounds):
            for kind, argv in workers.items():
                figures = measure(kind, argv, base_env, proxy, work / f"{kind}.log")
                raw[kind].append(figures)
                shown = {k: v for k, v in figures.items() if k != "smaps_rss_kib"}
                top = list(figures["smaps_rss_kib"].items())[:8]
                print(f"round {r + 1} {kind}: {shown}\n  smaps Rss (KiB): {top}", flush=True)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        proxy.close()

    def med(kind: str, key: str) -> float:
        return statistics.median(x[key] for x in raw[kind])

    prefect_version = subprocess.run([str(PREFECT_WORKER_VENV / "bin" / "python"), "-c",
                                      "import prefect; print(prefect.__version__)"],
                                     capture_output=True, text=True).stdout.strip()
    poolworker_version = subprocess.run([args.poolworker, "--version"], capture_output=True,
                                        text=True).stdout.strip()
    rows = [
        ("Resident memory after start-up", "rss_after_startup_kib", lambda v: f"{v / 1024:.1f} MiB"),
        ("Resident memory after one hour of idle polling (simulated)", "rss_idle_kib",
         lambda v: f"{v / 1024:.1f} MiB"),
        ("CPU per hour of idle polling (360 polls, 120 heartbeats)", "cpu_s_per_hour_idle",
         lambda v: f"{v:.2f} s/hour"),
        ("Exec to first poll", "exec_to_first_poll_s", lambda v: f"{v * 1000:.0f} ms"),
    ]
    lines = [
        "Idle resident memory, idle CPU and exec to first poll of `poolworker start` beside "
        "`prefect worker start`, one Prefect server, alternating. "
        f"Measured {dt.date.today().isoformat()} on {platform.node() or 'this machine'}: "
        f"{os.cpu_count()} cores, {platform.system()} {platform.release()}; "
        f"{poolworker_version}; prefect {prefect_version}; medians of {args.rounds} alternating "
        f"rounds. One hour of idle polling at the default intervals (10 s poll, 30 s heartbeat) "
        f"is driven {args.speedup:.0f}x fast. Prefect's worker runs from a virtualenv with Prefect "
        f"alone (with prefect-docker and prefect-kubernetes installed it imports both at start "
        f"and uses ~55 MiB more). Command: `.cache/venv/bin/python "
        f"bench/idle_startup.py --rounds {args.rounds}` (part of `bench/run.sh`).",
        "",
        "| Figure | poolworker | prefect worker start | Ratio |",
        "|---|---|---|---|",
    ]
    summary = {}
    for label, key, fmt in rows:
        ours, theirs = med("poolworker", key), med("prefect", key)
        ratio = theirs / ours if ours > 0 else float("inf")
        summary[key] = {"poolworker": ours, "prefect": theirs, "ratio": ratio}
        lines.append(f"| {label} | {fmt(ours)} | {fmt(theirs)} | {ratio:.0f}x less |"
                     if key != "exec_to_first_poll_s" else
                     f"| {label} | {fmt(ours)} | {fmt(theirs)} | {ratio:.0f}x faster |")
    table = "\n".join(lines) + "\n"
    (out / "idle_startup.md").write_text(table)
    (out / "idle_startup.json").write_text(json.dumps(
        {"date": dt.datetime.now(dt.timezone.utc).isoformat(), "cores": os.cpu_count(),
         "kernel": platform.release(), "poolworker": poolworker_version,
         "prefect": prefect_version, "rounds": args.rounds, "speedup": args.speedup,
         "summary": summary, "raw": raw}, indent=2) + "\n")
    print()
    print(table)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
