"""Growth: how poolworker's memory, descriptors, CPU and poll latency grow with runs in flight.

For each backend series and each count N (`--counts`, default 10, 100, 1000, 10000), a fresh
set of processes is started:
  * `fake_prefect` (tests/fakes/standalone): the Prefect API as a fast C++ fake, holding one
    pool whose base job template is the backend's default template with two defaults changed:
    the runs never end by themselves, and `stream_output` is on or off as the series says;
  * the backend's fake: `fake_kube` (tests/fakes, a Kubernetes API server whose kubelet keeps a
    Job annotated `fake-kube/script: hold` Running with no process behind it), or
    `fake_docker.py` (tests/fakes, a Docker engine on a unix socket whose containers run
    without any process until they are stopped);
  * `poolworker start --pool P --type T --with-healthcheck` (no --limit), polling every second.

The worker's idle figures are read once its first polls are done; then N runs due now are
seeded, and once every run has its infrastructure (fake_prefect counts N runs with an
`infrastructure_pid`, all left PENDING by the worker, since nothing runs the flows) and the
worker's descriptor count has stopped moving for a few seconds, it is measured over a window:
  * RSS: VmRSS of the worker's process alone, at the end of the window;
  * fds: its open file descriptors;
  * CPU: its user+system seconds over the window, as a percentage of one core;
  * poll latency: the mean duration of `POST /work_pools/{pool}/get_scheduled_flow_runs` over
    the window, from the worker's own histogram on /metrics (delta of _sum over delta of
    _count), i.e. the time from sending the poll to having its answer parsed;
  * per-run memory: (RSS(N) - RSS(idle)) / N for each point, and the least-squares slope of RSS
    against N over the series.

  POOLWORKER_BIN=build/bin/poolworker python3 bench/growth.py [--counts 10,100,1000,10000]
      [--series kubernetes-stream,kubernetes-nostream,docker-stream,docker-nostream] [--out DIR]

At 10,000 Kubernetes runs the thread-per-connection fake_kube does not yet take the burst of
10,000 concurrent Job creations (some answer after the worker's 30 s deadline, those runs
crash, and the bench stops saying so); use --counts 10,100,1000 until it does.

The fakes and the worker get RLIMIT_NOFILE raised (the worker needs one descriptor per followed
stream) and the thread-per-connection fake_kube a small thread stack.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dispatch  # noqa: E402
from scale import relative_args  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
POLL_ENDPOINT = "/work_pools/{name}/get_scheduled_flow_runs"
FD_LIMIT = 65536

SERIES = {
    "kubernetes-stream": ("kubernetes", True),
    "kubernetes-nostream": ("kubernetes", False),
    "docker-stream": ("docker", True),
    "docker-nostream": ("docker", False),
}


def fail(message: str) -> None:
    raise SystemExit(f"growth: {message}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raise_limits(stack_kib: int | None = None):
    def apply() -> None:
        os.setsid()
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))
        except (ValueError, OSError):
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        if stack_kib is not None:
            resource.setrlimit(resource.RLIMIT_STACK,
                               (stack_kib * 1024, resource.getrlimit(resource.RLIMIT_STACK)[1]))
    return apply


def proc_status(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    fail(f"no {field} for process {pid}")
    return 0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def poll_histogram(port: int, required: bool = True) -> tuple[float, float]:
    """(sum of seconds, count) of the worker's poll requests so far. Before the first poll has
    ended the histogram has no series yet: (0, 0) unless `required`."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
        text = answer.read().decode()
    total = count = None
    label = f'endpoint="{POLL_ENDPOINT}"'
    for line in text.splitlines():
        if label not in line:
            continue
        name, value = line.rsplit(" ", 1)
        if name.startswith("poolworker_api_request_duration_seconds_sum"):
            total = float(value)
        elif name.startswith("poolworker_api_request_duration_seconds_count"):
            count = float(value)
    if total is None or count is None:
        if not required:
            return 0.0, 0.0
        fail("the worker's /metrics has no poll duration histogram")
    return total, count


class Line:
    """A child process spoken to one line at a time (fake_prefect's stdin commands)."""

    def __init__(self, argv: list[str], log: Path, **kwargs) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=open(log, "wb"), text=True, **kwargs)
        first = self.proc.stdout.readline().split()
        if len(first) != 2 or first[0] != "ready":
            fail(f"{argv[0]} did not start (see {log})")
        self.port = int(first[1])

    def ask(self, command: str) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline())
        if "error" in answer:
            fail(f"fake_prefect: {answer['error']}")
        return answer


def stop(proc: subprocess.Popen | None) -> None:
    dispatch.stop(proc, timeout=60)


def pool_template(backend: str, stream_output: bool) -> dict:
    template = json.loads((REPO / "templates" / f"{backend}.json").read_text())
    props = template["variables"]["properties"]
    props["stream_output"]["default"] = stream_output
    if backend == "kubernetes":
        # The fake's kubelet keeps the pod Running without a process.
        props["annotations"]["default"] = {"fake-kube/script": "hold"}
    else:
        props["image"]["default"] = "growth/hold:latest"
        props["image_pull_policy"]["default"] = "Never"
    return template


def measure_point(backend: str, stream_output: bool, count: int, args, bins: dict) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"growth-{backend}-{count}-"))
    fake_prefect = backend_fake = worker = None
    try:
        template = work / "template.json"
        template.write_text(json.dumps(pool_template(backend, stream_output)))
        fake_prefect = Line([bins["fake_prefect"], "--pool", "growth", "--type", backend,
                             "--template", str(template)], work / "fake_prefect.log",
                            preexec_fn=raise_limits())
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PREFECT_", "DOCKER_", "KUBECONFIG"))}
        if backend == "kubernetes":
            kubeconfig = work / "kubeconfig"
            backend_fake = subprocess.Popen(
                [bins["fake_kube"], "--kubeconfig", str(kubeconfig)], stdout=subprocess.PIPE,
                stderr=open(work / "fake_kube.log", "wb"), preexec_fn=raise_limits(256))
            if backend_fake.stdout.readline().split()[:1] != [b"ready"]:
                fail("fake_kube did not start")
            env["KUBECONFIG"] = str(kubeconfig)
        else:
            sock = work / "docker.sock"
            backend_fake = subprocess.Popen(
                [sys.executable, str(REPO / "tests" / "fakes" / "fake_docker.py"), str(sock)],
                stdout=subprocess.PIPE, stderr=open(work / "fake_docker.log", "wb"),
                preexec_fn=raise_limits())
            if backend_fake.stdout.readline().split()[:1] != [b"ready"]:
                fail("fake_docker did not start")
            env["DOCKER_HOST"] = f"unix://{sock}"
        health = free_port()
        env.update(PREFECT_API_URL=f"http://127.0.0.1:{fake_prefect.port}/api",
                   PREFECT_HOME=str(work / "home"), PREFECT_WORKER_QUERY_SECONDS="1",
                   PREFECT_WORKER_WEBSERVER_HOST="127.0.0.1",
                   PREFECT_WORKER_WEBSERVER_PORT=str(health))
        worker = subprocess.Popen(
            [bins["poolworker"], "start", "--pool", "growth", "--type", backend,
             "--with-healthcheck", "--state-dir", str(work / "state")],
            env=env, stdout=open(work / "worker.log", "wb"), stderr=subprocess.STDOUT,
            preexec_fn=raise_limits())
        deadline = time.time() + 60
        while True:
            try:
                if poll_histogram(health, required=False)[1] >= 3:
                    break
            except OSError:
                pass
            if time.time() > deadline or worker.poll() is not None:
                fail(f"the worker did not poll (see {work / 'worker.log'})")
            time.sleep(0.5)
        idle_rss = proc_status(worker.pid, "VmRSS")
        idle_fds = open_fds(worker.pid)

        seeded = time.time()
        fake_prefect.ask(f"runs {count}")
        deadline = seeded + args.timeout
        while True:
            stats = fake_prefect.ask("stats")
            if stats["with_pid"] >= count:
                break
            crashed = stats["states"].get("CRASHED", 0)
            if crashed:
                fail(f"{backend} N={count}: {crashed} runs crashed before their infrastructure "
                     f"started (see {work / 'worker.log'})")
            if time.time() > deadline or worker.poll() is not None:
                fail(f"{backend} N={count}: only {stats['with_pid']} runs started "
                     f"(see {work / 'worker.log'})")
            time.sleep(1)
        all_started = time.time()
        # Settled: the descriptor count (one per followed stream) has stopped moving.
        previous, steady_since = -1, time.time()
        while time.time() - steady_since < args.settle_seconds:
            fds = open_fds(worker.pid)
            if fds != previous:
                previous, steady_since = fds, time.time()
            if time.time() > deadline:
                fail(f"{backend} N={count}: descriptors never settled")
            time.sleep(1)
        states = fake_prefect.ask("stats")["states"]
        sum_before, count_before = poll_histogram(health)
        cpu_before = cpu_seconds(worker.pid)
        time.sleep(args.measure_seconds)
        cpu_after = cpu_seconds(worker.pid)
        sum_after, count_after = poll_histogram(health)
        if count_after <= count_before:
            fail(f"{backend} N={count}: no poll during the measuring window")
        if worker.poll() is not None:
            fail(f"{backend} N={count}: the worker exited (see {work / 'worker.log'})")
        rss = proc_status(worker.pid, "VmRSS")
        point = {
            "backend": backend,
            "stream_output": stream_output,
            "runs": count,
            "idle_rss_kib": idle_rss,
            "idle_fds": idle_fds,
            "rss_kib": rss,
            "hwm_kib": proc_status(worker.pid, "VmHWM"),
            "fds": open_fds(worker.pid),
            "threads": proc_status(worker.pid, "Threads"),
            "cpu_percent": round(100 * (cpu_after - cpu_before) / args.measure_seconds, 2),
            "poll_latency_ms": round(1000 * (sum_after - sum_before)
                                     / (count_after - count_before), 2),
            "polls_in_window": int(count_after - count_before),
            "per_run_kib": round((rss - idle_rss) / count, 2),
            "seconds_seed_to_all_started": round(all_started - seeded, 1),
            "run_states": states,
        }
        print(json.dumps(point), flush=True)
        return point
    finally:
        stop(worker)
        stop(backend_fake)
        if fake_prefect is not None:
            stop(fake_prefect.proc)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def slope(points: list[dict]) -> float | None:
    if len(points) < 2:
        return None
    xs = [p["runs"] for p in points]
    ys = [p["rss_kib"] for p in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else None


def write_results(out: Path, results: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "growth.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        f"Growth of poolworker {results['poolworker_version']} with runs in flight "
        f"(`{results['command']}`, {results['date']}, {results['machine']}): worker RSS (VmRSS "
        "of its process alone) and descriptors once all N runs have their Job/container and the "
        "worker has settled; CPU over a "
        f"{results['measure_seconds']:g} s window; poll latency = mean duration of "
        "`POST /work_pools/{pool}/get_scheduled_flow_runs` over that window (worker's /metrics "
        "histogram, polling every 1 s). Prefect API: fake_prefect. Kubernetes: fake_kube, pods "
        "held Running without processes. Docker: fake_docker.py (a fake engine on a unix socket, "
        "containers running without processes), not the real engine. Per run = (RSS(N) - "
        "RSS(idle)) / N; slope = least-squares KiB per run over the series.",
        "",
        "| series | runs | idle RSS KiB | RSS KiB | per run KiB | slope KiB/run | fds | "
        "CPU % | poll latency ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, series in results["series"].items():
        for point in series["points"]:
            lines.append(
                f"| {name} | {point['runs']:,} | {point['idle_rss_kib']:,} | "
                f"{point['rss_kib']:,} | {point['per_run_kib']:.1f} | "
                f"{series['slope_kib_per_run'] if series['slope_kib_per_run'] is not None else '-'}"
                f" | {point['fds']:,} | {point['cpu_percent']} | {point['poll_latency_ms']} |")
    (out / "growth.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", default="10,100,1000,10000")
    parser.add_argument("--docker-counts", default=None,
                        help="counts of the Docker series (default: --counts)")
    parser.add_argument("--series", default=",".join(SERIES))
    parser.add_argument("--settle-seconds", type=float, default=5)
    parser.add_argument("--measure-seconds", type=float, default=15)
    parser.add_argument("--timeout", type=float, default=1800,
                        help="longest wait for one point's runs to start and settle")
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    parser.add_argument("--keep", action="store_true", help="keep each point's directory")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",") if c]
    poolworker = os.environ.get("POOLWORKER_BIN", str(REPO / "build" / "bin" / "poolworker"))
    bin_dir = Path(poolworker).parent
    bins = {"poolworker": poolworker, "fake_prefect": str(bin_dir / "fake_prefect"),
            "fake_kube": str(bin_dir / "fake_kube")}
    for name, path in bins.items():
        if not os.access(path, os.X_OK):
            fail(f"{name} not found at {path} (build first)")
    version = subprocess.run([poolworker, "--version"], capture_output=True, text=True).stdout
    results = {
        "command": "python3 bench/growth.py " + " ".join(relative_args(sys.argv[1:])),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.node()}, {os.cpu_count()} CPUs, {platform.machine()}, "
                   f"Linux {platform.release()}",
        "poolworker_version": version.split()[1] if len(version.split()) > 1 else "?",
        "measure_seconds": args.measure_seconds,
        "series": {},
    }
    for name in [s for s in args.series.split(",") if s]:
        if name not in SERIES:
            fail(f"unknown series {name} (known: {', '.join(SERIES)})")
        backend, stream_output = SERIES[name]
        series_counts = counts
        if backend == "docker" and args.docker_counts:
            series_counts = [int(c) for c in args.docker_counts.split(",") if c]
        points = [measure_point(backend, stream_output, n, args, bins) for n in series_counts]
        fitted = slope(points)
        results["series"][name] = {
            "backend": backend,
            "stream_output": stream_output,
            "points": points,
            "slope_kib_per_run": round(fitted, 2) if fitted is not None else None,
        }
        write_results(Path(args.out), results)
    write_results(Path(args.out), results)
    print((Path(args.out) / "growth.md").read_text())


if __name__ == "__main__":
    main()
