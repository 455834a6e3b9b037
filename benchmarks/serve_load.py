"""`resnets serve` under load, from another process: requests/s, images/s, latency percentiles
with and without server-side batching, and what a 4x overload does.

Starts `resnets serve RUN` on loopback as a subprocess for each setting, sends it requests
from this process's threads (each phase bounded in count and in time), and prints a Markdown
table. The phases:

    no batching     --max-batch 1, CONCURRENCY clients in a closed loop (each sends its next
                    request when the last is answered), REQUESTS requests
    batching        --max-batch 32, the same load
    overload        --max-batch 32 --queue-limit QUEUE: requests sent at 4x the rate the
                    batching phase answered, whether or not earlier ones were answered
                    (open loop); counts 200s, 503s and failures, times /health meanwhile,
                    and samples the server's resident memory
    slow clients    --max-batch 32 --read-timeout SLOW_TIMEOUT: SLOW connections (loopback)
                    that promise a 10,000-byte body and stall after 3 bytes, or drip it a
                    byte a second, while CONCURRENCY good clients run the closed loop; counts
                    how the slow ones were answered (408 at the read timeout)

    python benchmarks/serve_load.py RUN                 # a run folder, checkpoint or safetensors
    python benchmarks/serve_load.py RUN --requests 1000 --concurrency 16 --seconds 10
    python benchmarks/serve_load.py RUN --slow 256 --slow-timeout 5

Client and server share the machine's cores, as they would on one host: on a small machine
the figures are of both together.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import os
import platform
import re
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from resnets.training.memory import proc_bytes

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
if str(HERE) not in sys.path:  # imported by path: compare.py sits beside it
    sys.path.insert(0, str(HERE))
from compare import cpu_name  # noqa: E402

TIMEOUT = 30.0  # seconds one request may take before it counts as failed


@dataclass
class Phase:
    """What one phase measured."""

    name: str
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)  # of answered (200) requests
    statuses: Counter[str] = field(default_factory=Counter)
    health_ms: list[float] = field(default_factory=list)
    rss_mib: list[float] = field(default_factory=list)
    offered_per_s: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, status: str, took: float) -> None:
        """One request's outcome, from any of the sending threads."""
        with self.lock:
            self.statuses[status] += 1
            if status == "200":
                self.latencies.append(took)

    @property
    def answered(self) -> int:
        return self.statuses["200"]

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1000 if self.latencies else float("nan")


@contextmanager
def server(run: str, *flags: str) -> Iterator[tuple[int, int]]:
    """`resnets serve RUN --port 0 FLAGS` in a subprocess: yields (port, pid); stops it after."""
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    command = [sys.executable, "-m", "resnets", "serve", run, "--port", "0", "--device", "cpu",
               *flags]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        if not found:
            sys.exit(f"the server did not start: {line.strip()}")
        yield int(found.group(1)), process.pid
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()


def png(seed: int) -> bytes:
    """A 28x28 grey PNG (a Fashion-MNIST-sized image); the content does not change the cost."""
    pixels = np.random.default_rng(seed).integers(0, 256, (28, 28), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "L").save(buffer, "PNG")
    return buffer.getvalue()


class Client:
    """One keep-alive connection per thread; a failed one is replaced on the next request."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.local = threading.local()

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[str, float]:  # fmt: skip
        """(status, or the error's name; seconds) of one request."""
        started = time.perf_counter()
        connection = getattr(self.local, "connection", None)
        if connection is None:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)
            self.local.connection = connection
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            response.read()
            if response.getheader("connection", "").lower() == "close":
                connection.close()
                self.local.connection = None
            return str(response.status), time.perf_counter() - started
        except (OSError, http.client.HTTPException) as error:
            connection.close()
            self.local.connection = None
            return type(error).__name__, time.perf_counter() - started

    def predict(self, image: bytes) -> tuple[str, float]:
        return self.request("POST", "/predict", image, {"Content-Type": "image/png"})


def rss_mib(pid: int) -> float:
    """The process's resident memory now, from /proc (Linux); nan elsewhere."""
    found = proc_bytes(f"/proc/{pid}/status", "VmRSS")
    return found / 2**20 if found is not None else float("nan")


@contextmanager
def watching(phase: Phase, client: Client, pid: int, every: float = 0.1) -> Iterator[None]:
    """Time GET /health and sample the server's RSS every `every` s while the block runs."""
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(every):
            status, seconds = client.request("GET", "/health")
            phase.health_ms.append(seconds * 1000 if status == "200" else float("inf"))
            phase.rss_mib.append(rss_mib(pid))

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(TIMEOUT)


def closed_loop(name: str, port: int, pid: int, images: list[bytes], requests: int,
                concurrency: int, seconds: float) -> Phase:  # fmt: skip
    """`concurrency` clients, each sending its next request when the last is answered, until
    `requests` were sent or `seconds` passed."""
    phase = Phase(name)
    client = Client(port)  # one connection per thread, the watcher's too
    for image in images[:concurrency]:  # warm-up: connections, first batches
        client.predict(image)
    sent = iter(range(requests))
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def loop() -> None:
        while time.perf_counter() < deadline:
            with lock:
                number = next(sent, None)
            if number is None:
                return
            phase.record(*client.predict(images[number % len(images)]))

    started = time.perf_counter()
    with watching(phase, client, pid), ThreadPoolExecutor(concurrency) as pool:
        for _ in range(concurrency):
            pool.submit(loop)
    phase.seconds = time.perf_counter() - started
    return phase


def open_loop(name: str, port: int, pid: int, images: list[bytes], rate: float, seconds: float,
              workers: int) -> Phase:  # fmt: skip
    """Requests sent at `rate` per second for `seconds`, each by the next free one of `workers`
    threads, whether or not earlier ones were answered."""
    phase = Phase(name)
    client = Client(port)  # one connection per thread, the watcher's too
    total = int(rate * seconds)

    def one(number: int) -> None:
        phase.record(*client.predict(images[number % len(images)]))

    started = time.perf_counter()
    with watching(phase, client, pid), ThreadPoolExecutor(workers) as pool:
        for number in range(total):
            delay = started + number / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(one, number)
        sending = time.perf_counter() - started
    phase.seconds = time.perf_counter() - started
    phase.offered_per_s = total / sending
    return phase


@contextmanager
def slow_clients(port: int, count: int, seconds: float) -> Iterator[Counter[str]]:
    """`count` connections that promise a 10,000-byte body: half stall after 3 bytes, half
    drip one byte a second (for at most `seconds`). Yields a Counter that, once the block
    ends, holds how each was answered (the status line's code, or the error's name)."""
    head = (b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
            b"Content-Length: 10000\r\n\r\n")  # fmt: skip
    socks = []
    for number in range(count):
        sock = socket.create_connection(("127.0.0.1", port), TIMEOUT)
        sock.sendall(head + (b"abc" if number % 2 else b"a"))
        socks.append(sock)
    stop = threading.Event()

    def drip() -> None:
        deadline = time.perf_counter() + seconds
        while not stop.wait(1.0) and time.perf_counter() < deadline:
            for sock in socks[0::2]:
                with contextlib.suppress(OSError):  # answered and closed already
                    sock.send(b"x")

    answers: Counter[str] = Counter()
    thread = threading.Thread(target=drip, daemon=True)
    thread.start()
    try:
        yield answers
    finally:
        stop.set()
        thread.join(TIMEOUT)
        for sock in socks:
            try:
                sock.settimeout(TIMEOUT)
                first = sock.recv(64)
                answers[first.split(b" ")[1].decode() if first else "closed"] += 1
            except (OSError, IndexError) as error:
                answers[type(error).__name__] += 1
            finally:
                sock.close()


def table(phases: list[Phase]) -> str:
    rows = [
        "| phase | requests | answered | 503 | failed | req/s | images/s | p50 ms | p95 ms "
        "| p99 ms | /health max ms | server RSS max MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in phases:
        sent = sum(p.statuses.values())
        failed = sent - p.answered - p.statuses["503"]
        rate = p.answered / p.seconds
        rows.append(
            f"| {p.name} | {sent} | {p.answered} | {p.statuses['503']} | {failed} | {rate:.0f} "
            f"| {rate:.0f} | {p.percentile(50):.1f} "
            f"| {p.percentile(95):.1f} | {p.percentile(99):.1f} "
            f"| {max(p.health_ms, default=float('nan')):.0f} "
            f"| {max(p.rss_mib, default=float('nan')):.0f} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="run folder, checkpoint or safetensors file to serve")
    parser.add_argument("--requests", type=int, default=3000, help="per closed phase (3000)")
    parser.add_argument("--concurrency", type=int, default=64, help="clients at once (64)")
    parser.add_argument("--seconds", type=float, default=20, help="most seconds a phase runs (20)")
    parser.add_argument("--overload-seconds", type=float, default=8, help="overload phase (8)")
    parser.add_argument("--queue-limit", type=int, default=64, help="in the overload phase (64)")
    parser.add_argument("--slow", type=int, default=256, help="slow clients (256; 0: no phase)")
    parser.add_argument("--slow-timeout", type=float, default=5.0,
                        help="--read-timeout of the slow-clients phase (5)")  # fmt: skip
    parser.add_argument("--json", metavar="FILE", help="also write the figures here")
    args = parser.parse_args()
    images = [png(seed) for seed in range(64)]

    phases = []
    for name, batch in (("no batching (max-batch 1)", "1"), ("batching (max-batch 32)", "32")):
        with server(args.run, "--max-batch", batch) as (port, pid):
            phase = closed_loop(name, port, pid, images, args.requests, args.concurrency,
                                args.seconds)  # fmt: skip
        phases.append(phase)
        print(f"{name}: {phase.answered / phase.seconds:.0f} requests/s", file=sys.stderr)
    capacity = max(p.answered / p.seconds for p in phases)
    flags = ("--max-batch", "32", "--queue-limit", str(args.queue_limit), "--max-images", "1")
    with server(args.run, *flags) as (port, pid):
        idle = rss_mib(pid)
        overload = open_loop(f"4x overload (queue limit {args.queue_limit})", port, pid, images,
                             4 * capacity, args.overload_seconds, workers=256)  # fmt: skip
        after = Client(port).request("GET", "/health")[0]
    phases.append(overload)
    health_ok = sum(ms != float("inf") for ms in overload.health_ms)
    slow_answers: Counter[str] = Counter()
    if args.slow:
        slow_flags = ("--max-batch", "32", "--read-timeout", str(args.slow_timeout))
        name = f"{args.slow} slow clients + {args.concurrency} good"
        with server(args.run, *slow_flags) as (port, pid), \
                slow_clients(port, args.slow, args.seconds) as slow_answers:  # fmt: skip
            slowed = closed_loop(name, port, pid, images, args.requests, args.concurrency,
                                 args.seconds)  # fmt: skip
        phases.append(slowed)

    print(f"\n{cpu_name()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, "
          f"Python {platform.python_version()}, {date.today()}")  # fmt: skip
    print(f"python {' '.join(sys.argv)}\n")
    print(table(phases))
    answered = overload.answered / overload.seconds
    print(f"\noverload: offered {overload.offered_per_s:.0f} requests/s (4x {capacity:.0f}, "
          f"{overload.offered_per_s / answered:.1f}x the {answered:.0f} it answered then); "
          f"statuses {dict(overload.statuses)}; /health answered {health_ok} of "
          f"{len(overload.health_ms)} probes, slowest {max(overload.health_ms):.0f} ms, "
          f"and {after} after; server RSS {idle:.0f} MiB before, "
          f"{max(overload.rss_mib):.0f} MiB at most")  # fmt: skip
    if args.slow:
        print(f"slow clients (--read-timeout {args.slow_timeout:g}): {args.slow} connections, "
              f"half stalled after 3 of 10,000 promised bytes, half dripping a byte a second; "
              f"answered {dict(slow_answers)}")  # fmt: skip
    if args.json:
        figures = [{"phase": p.name, "statuses": dict(p.statuses), "seconds": p.seconds,
                    "p50_ms": p.percentile(50), "p95_ms": p.percentile(95),
                    "p99_ms": p.percentile(99), "health_max_ms": max(p.health_ms, default=None),
                    "rss_max_mib": max(p.rss_mib, default=None)} for p in phases]  # fmt: skip
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
