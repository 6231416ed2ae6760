"""Scale: poolworker alone against the fake Prefect API, beside this machine's physical limit.

What it measures, all in one run on one machine:
  * poolworker's rate: N runs (default 2,000) of a process pool, due now, with the trivial
    command `true` and the pool's default job template (stream_output on, a temporary working
    directory per run), no --limit. The fake Prefect API (build/bin/fake_prefect, a C++ server,
    so that the server is not the bottleneck) records when each request arrived. A run is
    started when its process exists; the worker PATCHes the run's infrastructure_pid right
    after the command was executed (the run shim reports the exec to it first). Rate = N /
    (last `PATCH /flow_runs/{id}` - first `POST /flow_runs/{id}/set_state`), i.e. from the first
    claim to the last run started. Several rounds, each with a fresh fake and worker; median.
  * the worker's cost per run, over the same rounds: CPU seconds of the worker process itself
    (utime+stime of /proc/PID/stat, fields 14-15: its threads, not its reaped children) from
    just before the runs were created until every run's process had ended and been reaped,
    divided by N; HTTP requests per run by route (the fake's counts during that window / N,
    polls included); the worker's peak resident memory (VmHWM).
  * system calls per run, in a separate round of fewer runs under `strace -f -ff` attached to
    the worker once it has polled: each traced thread or process writes its own file; files of
    processes that executed a program (the run shim, the command) are the runs' own, the others
    are the worker's threads. The same trace of the tight spawn loop below gives the reference:
    the loop's own system calls per spawn, and those of `true` itself.
  * the physical limit, measured in the same run by bench/physical_limit (C++, plain system
    calls): posix_spawn + waitpid of `true` in a tight loop -> t_spawn; keep-alive loopback HTTP
    round trips to a minimal server -> t_rtt (and, for reference, to the fake's cheapest
    endpoint, GET /api/health). The limit for a run is 1 / (t_spawn + R_min * t_rtt), with
    R_min = 2 requests that a run cannot do without: the claim (set_state PENDING) and the
    report of its process (PATCH infrastructure_pid). The figure of merit is the limit divided
    by poolworker's rate (issue 8's target: within 3x).

  build/bin/fake_prefect, build/bin/physical_limit and build/bin/poolworker come from
  `.ci/build release`; strace must be installed for the system-call round.

  python3 bench/scale.py [--runs 2000] [--rounds 3] [--strace-runs 200] [--out bench/results]
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
POOL = "bench"
CLAIM_ROUTE = "POST /flow_runs/{id}/set_state"
PID_ROUTE = "PATCH /flow_runs/{id}"
POLL_ROUTE = f"POST /work_pools/{POOL}/get_scheduled_flow_runs"
R_MIN = 2


def relative_args(argv: list[str]) -> list[str]:
    """The command line as written in the results: paths inside the repository relative to it,
    so that no path of the machine that ran it ends up in the tables."""
    out = []
    for arg in argv:
        try:
            out.append(str(Path(arg).resolve().relative_to(REPO)) if os.sep in arg else arg)
        except ValueError:
            out.append(arg)
    return out


def fail(message: str) -> None:
    print(f"scale.py: {message}", file=sys.stderr)
    sys.exit(1)


# ---- the fake Prefect API ------------------------------------------------------------------

class Fake:
    """build/bin/fake_prefect, driven through its stdin commands."""

    def __init__(self, binary: str, work: Path):
        self.proc = subprocess.Popen(
            [binary, "--pool", POOL, "--type", "process",
             "--template", str(REPO / "templates" / "process.json")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(work / "fake.log", "wb"),
            text=True, start_new_session=True)
        line = self.proc.stdout.readline().split()
        if len(line) != 2 or line[0] != "ready":
            fail(f"fake_prefect did not start (see {work / 'fake.log'})")
        self.port = int(line[1])

    def command(self, line: str) -> dict:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline())
        if "error" in answer:
            fail(f"fake_prefect: {line.split()[0]}: {answer['error']}")
        return answer

    def stats(self) -> dict:
        return self.command("stats")

    def close(self) -> None:
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=10)
        except (BrokenPipeError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


# ---- the worker ----------------------------------------------------------------------------

def start_worker(poolworker: str, port: int, work: Path, state: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
               PREFECT_HOME=str(work / "home"), PREFECT_WORKER_QUERY_SECONDS="1")
    return subprocess.Popen(
        [poolworker, "start", "--pool", POOL, "--type", "process", "--prefetch-seconds", "0",
         "--state-dir", str(state)],
        env=env, stdout=open(work / "worker.log", "ab"), stderr=subprocess.STDOUT,
        start_new_session=True)


def stop_worker(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # Fields 14 and 15 of stat(5) (utime, stime), counted after the ")" that ends field 2.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    fail(f"no {field} in /proc/{pid}/status")
    return 0


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(c) for c in f.read().split()]
        except FileNotFoundError:
            pass
    return out


def wait_for(predicate, timeout: float, what: str, worker: subprocess.Popen, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            fail(f"the worker exited ({worker.returncode}) while waiting for {what}")
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    fail(f"timed out after {timeout:.0f} s waiting for {what}")


def worker_round(args, work: Path, runs: int, trace_dir: Path | None = None) -> dict:
    """One round: a fresh fake and worker, `runs` runs of `true`; returns the raw figures."""
    work.mkdir(parents=True)
    fake = Fake(args.fake, work)
    state = Path(args.state_parent or work) / f"poolworker-scale-state-{os.getpid()}-{work.name}"
    worker = None
    tracer = None
    try:
        worker = start_worker(args.poolworker, fake.port, work, state)
        wait_for(lambda: fake.stats()["routes"].get(POLL_ROUTE, 0) >= 1, 60,
                 "the worker's first poll", worker, 0.1)
        if trace_dir is not None:
            trace_dir.mkdir()
            tracer = subprocess.Popen(
                ["strace", "-f", "-ff", "-qq", "-o", str(trace_dir / "t"), "-p", str(worker.pid)],
                stderr=open(work / "strace.log", "wb"))
            # strace has attached once the worker's threads show a tracer.
            wait_for(lambda: all(
                traced_by(worker.pid, t) for t in os.listdir(f"/proc/{worker.pid}/task")),
                30, "strace to attach", worker)
        before = fake.stats()
        cpu_before = cpu_seconds(worker.pid)
        fake_cpu_before = cpu_seconds(fake.proc.pid)
        created = fake.command(f"runs {runs} " + json.dumps({"command": "true"}))
        if created.get("created") != runs:
            fail(f"fake_prefect created {created} runs, not {runs}")
        timeout = args.timeout * (20 if tracer else 1)
        wait_for(lambda: fake.stats()["with_pid"] >= runs, timeout,
                 f"{runs} runs to be started", worker, 0.25)
        # Every run's process has ended and been reaped by the worker: the run's whole life in
        # the worker is inside the window.
        wait_for(lambda: not children(worker.pid), 120, "the runs' processes to end", worker)
        time.sleep(0.5)
        cpu_after = cpu_seconds(worker.pid)
        fake_cpu_after = cpu_seconds(fake.proc.pid)
        after = fake.stats()
        peak_kib = status_kib(worker.pid, "VmHWM")
        rss_kib = status_kib(worker.pid, "VmRSS")
        if tracer is not None:
            tracer.send_signal(signal.SIGINT)
            tracer.wait(timeout=60)
            tracer = None
    finally:
        if tracer is not None:
            tracer.kill()
            tracer.wait()
        if worker is not None:
            stop_worker(worker)
        fake.close()
        shutil.rmtree(state, ignore_errors=True)

    if after["with_pid"] != runs or after["runs"] != runs:
        fail(f"{after['with_pid']} of {after['runs']} runs were started, not {runs}")
    times = after["route_times"]
    if CLAIM_ROUTE not in times or PID_ROUTE not in times:
        fail(f"no claim or no infrastructure_pid request in the fake's record: {sorted(times)}")
    first_claim = times[CLAIM_ROUTE][0]
    last_started = times[PID_ROUTE][1]
    routes = {route: count - before["routes"].get(route, 0)
              for route, count in after["routes"].items()
              if count - before["routes"].get(route, 0) > 0}
    return {
        "runs": runs,
        "seconds_first_claim_to_last_started": last_started - first_claim,
        "runs_per_second": runs / (last_started - first_claim),
        "worker_cpu_seconds": cpu_after - cpu_before,
        "worker_cpu_ms_per_run": 1000 * (cpu_after - cpu_before) / runs,
        # The fake's own CPU over the window, to tell whether the server was the bottleneck.
        "fake_cpu_ms_per_run": 1000 * (fake_cpu_after - fake_cpu_before) / runs,
        "requests": sum(routes.values()),
        "requests_per_run": sum(routes.values()) / runs,
        "requests_by_route": routes,
        "worker_peak_rss_kib": peak_kib,
        "worker_rss_kib_after": rss_kib,
        "states": after["states"],
    }


def traced_by(pid: int, tid: str) -> bool:
    try:
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            for line in f:
                if line.startswith("TracerPid:"):
                    return int(line.split()[1]) != 0
    except FileNotFoundError:
        return True
    return False


# ---- system calls --------------------------------------------------------------------------

SYSCALL = re.compile(r"^(\w+)\(")
EXECVE = re.compile(r'^execve\("([^"]*)"')


def count_trace(trace_dir: Path, root_program: str | None) -> dict:
    """Counts the system calls of `strace -ff` files: processes that executed a program other
    than `root_program` are children; everything else is the traced program's own threads."""
    own: collections.Counter = collections.Counter()
    kids: collections.Counter = collections.Counter()
    child_processes = 0
    for path in trace_dir.iterdir():
        calls: collections.Counter = collections.Counter()
        child = False
        with open(path, errors="replace") as f:
            for line in f:
                match = SYSCALL.match(line)
                if not match:
                    continue
                calls[match.group(1)] += 1
                exe = EXECVE.match(line)
                if exe and exe.group(1) != root_program:
                    child = True
        if child:
            kids.update(calls)
            child_processes += 1
        else:
            own.update(calls)
    return {"own": dict(own), "children": dict(kids), "child_processes": child_processes}


def strace_round(args, work: Path) -> dict:
    runs = args.strace_runs
    trace_dir = work / "trace"
    figures = worker_round(args, work, runs, trace_dir)
    counted = count_trace(trace_dir, None)
    shutil.rmtree(trace_dir)
    # The same count for the tight spawn loop: its own threads, and `true` itself.
    loop_dir = work / "trace-loop"
    loop_dir.mkdir()
    spawns = args.strace_runs
    subprocess.run(["strace", "-f", "-ff", "-qq", "-o", str(loop_dir / "t"), args.physical,
                    "spawn", "--count", str(spawns), "--", args.true],
                   check=True, stdout=subprocess.DEVNULL)
    loop = count_trace(loop_dir, args.physical)
    shutil.rmtree(loop_dir)
    spawned = spawns + 1  # the loop spawns once before its clock starts
    own_total = sum(counted["own"].values())
    kids_total = sum(counted["children"].values())
    return {
        "runs": runs,
        "rate_under_strace": figures["runs_per_second"],
        "worker_syscalls_per_run": own_total / runs,
        "worker_top_syscalls_per_run": {
            name: round(n / runs, 2)
            for name, n in sorted(counted["own"].items(), key=lambda kv: -kv[1])[:12]},
        "run_processes_per_run": counted["child_processes"] / runs,
        "run_processes_syscalls_per_run": kids_total / runs,
        "loop_spawns": spawned,
        "loop_syscalls_per_spawn": sum(loop["own"].values()) / spawned,
        "loop_top_syscalls_per_spawn": {
            name: round(n / spawned, 2)
            for name, n in sorted(loop["own"].items(), key=lambda kv: -kv[1])[:6]},
        "true_syscalls_per_spawn": sum(loop["children"].values()) / spawned,
    }


# ---- the physical limit --------------------------------------------------------------------

def physical(args, *command: str) -> dict:
    out = subprocess.run([args.physical, *command], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def physical_rounds(args, fake_port: int, work: Path) -> dict:
    spawn, shim, rtt, rtt_fake = [], [], [], []
    status = work / "shim-status"
    for _ in range(args.rounds):
        spawn.append(physical(args, "spawn", "--count", str(args.spawns), "--", args.true))
        shim.append(physical(args, "spawn", "--count", str(args.spawns // 4), "--",
                             args.shim, "--status-file", str(status), "--inherit-output",
                             "--", args.true))
        rtt.append(physical(args, "http", "--count", str(args.round_trips)))
        rtt_fake.append(physical(args, "http", "--count", str(args.round_trips // 4),
                                 "--port", str(fake_port), "--path", "/api/health"))
    median = lambda rows: statistics.median(r["micros_each"] for r in rows)  # noqa: E731
    t_spawn = median(spawn)
    t_rtt = median(rtt)
    return {
        "spawn_true": spawn, "spawn_shim_true": shim, "http_minimal": rtt, "http_fake": rtt_fake,
        "t_spawn_us": t_spawn, "t_spawn_shim_us": median(shim), "t_rtt_us": t_rtt,
        "t_rtt_fake_us": median(rtt_fake), "r_min": R_MIN,
        "limit_runs_per_second": 1e6 / (t_spawn + R_MIN * t_rtt),
    }


# ---- report --------------------------------------------------------------------------------

def table(raw: dict, command: str) -> str:
    p = raw["physical"]
    rounds = raw["rounds"]
    rate = raw["median_runs_per_second"]
    limit = p["limit_runs_per_second"]
    per_round = ", ".join(f"{r['runs_per_second']:.0f}" for r in rounds)
    med = lambda key: statistics.median(r[key] for r in rounds)  # noqa: E731
    lines = [
        f"Scale against the fake Prefect API, measured {raw['date']} on {raw['machine']} "
        f"(load average {raw['load_average_at_start']:.1f} at the start): "
        f"{raw['runs']} runs of `true` due at once on a process pool (default template), no "
        f"--limit, polling every 1 s, median of {len(rounds)} rounds; a run counts as started "
        "when the worker reports its process (PATCH infrastructure_pid). Physical limit = "
        f"1 / (t_spawn + {R_MIN} x t_rtt): posix_spawn+wait of `true` in a tight C++ loop, and "
        "a keep-alive loopback HTTP round trip to a minimal server, for the claim and the pid "
        f"report a run cannot do without. Command: `{command}`.",
        "",
        "| Figure | Value |",
        "|---|---|",
        f"| poolworker: runs claimed and started per second (first claim to last started) | "
        f"{rate:.0f} /s (rounds: {per_round}) |",
        f"| Physical limit of this machine for one run | {limit:.0f} /s |",
        f"| Physical limit / poolworker (target: at most 3x) | {limit / rate:.2f}x |",
        f"| t_spawn: posix_spawn+wait of `true`, tight loop | {p['t_spawn_us']:.0f} µs "
        f"({1e6 / p['t_spawn_us']:.0f} /s) |",
        f"| t_rtt: loopback HTTP round trip, minimal server | {p['t_rtt_us']:.1f} µs "
        f"({1e6 / p['t_rtt_us']:.0f} /s) |",
        f"| For reference: round trip to the fake's GET /api/health | {p['t_rtt_fake_us']:.1f} µs |",
        f"| For reference: posix_spawn+wait of the run shim running `true` (2 processes) | "
        f"{p['t_spawn_shim_us']:.0f} µs ({1e6 / p['t_spawn_shim_us']:.0f} /s) |",
        f"| Worker CPU per run (its own utime+stime, claim to reaped) | "
        f"{med('worker_cpu_ms_per_run'):.2f} ms |",
        f"| HTTP requests per run (polls included) | {med('requests_per_run'):.2f} |",
    ]
    by_route = collections.defaultdict(list)
    for r in rounds:
        for route, n in r["requests_by_route"].items():
            by_route[route].append(n / r["runs"])
    for route, values in sorted(by_route.items(), key=lambda kv: -statistics.median(kv[1])):
        lines.append(f"| &nbsp;&nbsp;{route} | {statistics.median(values):.3f} |")
    lines.append(f"| For reference: the fake API's own CPU per run (same window) | "
                 f"{med('fake_cpu_ms_per_run'):.2f} ms |")
    lines.append(f"| Worker peak RSS (VmHWM) | {med('worker_peak_rss_kib') / 1024:.1f} MiB |")
    s = raw.get("syscalls")
    if s:
        top = ", ".join(f"{k} {v:g}" for k, v in s["worker_top_syscalls_per_run"].items())
        lines += [
            f"| System calls per run, worker's own threads (strace -ff, {s['runs']} runs) | "
            f"{s['worker_syscalls_per_run']:.1f} ({top}) |",
            f"| System calls per run, the run's processes (shim + `true`, "
            f"{s['run_processes_per_run']:.1f} processes) | "
            f"{s['run_processes_syscalls_per_run']:.1f} |",
            f"| For reference: tight loop's own system calls per spawn; `true`'s | "
            f"{s['loop_syscalls_per_spawn']:.1f}; {s['true_syscalls_per_spawn']:.1f} |",
        ]
    return "\n".join(lines) + "\n"


def machine() -> str:
    model = platform.machine()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} cores, Linux {platform.release()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--strace-runs", type=int, default=200,
                        help="runs of the system-call round (0: no such round)")
    parser.add_argument("--spawns", type=int, default=2000, help="spawns per physical round")
    parser.add_argument("--round-trips", type=int, default=20000,
                        help="HTTP round trips per physical round")
    parser.add_argument("--timeout", type=float, default=300,
                        help="seconds a round may take to start its runs")
    bin_dir = REPO / "build" / "bin"
    parser.add_argument("--poolworker", default=str(bin_dir / "poolworker"))
    parser.add_argument("--fake", default=str(bin_dir / "fake_prefect"))
    parser.add_argument("--physical", default=str(bin_dir / "physical_limit"))
    parser.add_argument("--shim", default=str(bin_dir / "poolworker-run"))
    parser.add_argument("--state-parent", default=None,
                        help="folder of the worker's --state-dir (default: the temporary work "
                             "folder, on the disk a user's would be on); a diagnostic only")
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = parser.parse_args()
    args.true = shutil.which("true")
    for path in (args.poolworker, args.fake, args.physical, args.shim, args.true):
        if not path or not os.access(path, os.X_OK):
            fail(f"not an executable: {path} (build with .ci/build release)")
    if args.strace_runs and not shutil.which("strace"):
        fail("strace is not installed (or pass --strace-runs 0)")

    work = Path(tempfile.mkdtemp(prefix="poolworker-scale-"))
    raw: dict = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "runs": args.runs, "rounds": [],
        # Other work on the machine slows every figure alike; the load says how busy it was.
        "load_average_at_start": os.getloadavg()[0],
    }
    # The physical limit is measured beside a fake server, as the worker's rounds are.
    fake = Fake(args.fake, work)
    try:
        raw["physical"] = physical_rounds(args, fake.port, work)
    finally:
        fake.close()
    print("physical", json.dumps({k: v for k, v in raw["physical"].items()
                                  if not isinstance(v, list)}), flush=True)
    for n in range(args.rounds):
        figures = worker_round(args, work / f"round-{n}", args.runs)
        raw["rounds"].append(figures)
        print(f"round {n}", json.dumps({k: v for k, v in figures.items()
                                        if k not in ("requests_by_route", "states")}), flush=True)
    raw["median_runs_per_second"] = statistics.median(r["runs_per_second"] for r in raw["rounds"])
    raw["limit_over_rate"] = raw["physical"]["limit_runs_per_second"] / raw["median_runs_per_second"]
    if args.strace_runs:
        raw["syscalls"] = strace_round(args, work / "strace")
        print("syscalls", json.dumps(raw["syscalls"]), flush=True)
    shutil.rmtree(work, ignore_errors=True)

    command = "python3 bench/scale.py " + " ".join(relative_args(sys.argv[1:]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    markdown = table(raw, command.strip())
    (out / "scale.json").write_text(json.dumps(raw, indent=2) + "\n")
    (out / "scale.md").write_text(markdown)
    print()
    print(markdown)


if __name__ == "__main__":
    main()
