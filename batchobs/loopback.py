"""Prometheus and a Pushgateway on loopback, for the main job, the tests and the benchmarks.

Debian's ``prometheus`` and ``prometheus-pushgateway`` binaries, each on a free
127.0.0.1 port with its state in a directory of its own (never the package's
machine-wide default), Prometheus loading the project's ``prometheus.yml`` and rules;
and two addresses that fail in known ways (refusing, never answering), for the
listener's degraded paths.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .bundled import bundled_dir

__all__ = ["PROMETHEUS_DIR", "Process", "binary", "black_hole", "free_port", "prometheus_config", "refusing_url",
           "start_prometheus", "start_pushgateway", "wait_http"]

# prometheus.yml and the rules (prometheus/rules/*.yml) a loopback Prometheus loads
PROMETHEUS_DIR = bundled_dir("prometheus")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):  # noqa: S310 - our own loopback server
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout_s}s")


@dataclass
class Process:
    url: str
    proc: subprocess.Popen[bytes]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def binary(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/bin:/usr/sbin")
    if path is None:
        raise RuntimeError(f"{name} is not installed: run `make test` (it installs Debian's {name})")
    return path


def start_pushgateway(workdir: Path) -> Process:
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(  # noqa: S603 - a Debian binary, fixed arguments
        [binary("prometheus-pushgateway"), f"--web.listen-address=127.0.0.1:{port}",
         f"--persistence.file={workdir / 'pushgateway.dat'}"],
        stdout=subprocess.DEVNULL, stderr=open(workdir / "pushgateway.log", "wb"),  # noqa: SIM115 - lives with the process
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/-/ready")
    return Process(url, proc)


def start_prometheus(workdir: Path, gateway_url: str = "", ingester: str = "", statsd_exporter: str = "") -> Process:
    """Prometheus with the project's scrape config and rules; ``ingester`` and ``statsd_exporter`` are
    host:port of a /metrics; the jobs of targets not given are left out."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    config = prometheus_config(gateway_url.split("//", 1)[-1], ingester, statsd_exporter)
    (workdir / "prometheus.yml").write_text(config)
    proc = subprocess.Popen(  # noqa: S603 - a Debian binary, fixed arguments
        [binary("prometheus"), f"--config.file={workdir / 'prometheus.yml'}",
         f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=open(workdir / "prometheus.log", "wb"),  # noqa: SIM115 - lives with the process
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/-/ready", timeout_s=30)
    return Process(url, proc)


def prometheus_config(gateway: str, ingester: str = "", statsd_exporter: str = "") -> str:
    """``prometheus/prometheus.yml`` for loopback: the Pushgateway at ``host:port`` (and the
    ingester's /metrics and statsd-exporter at theirs, if given) scraped every second, the rules
    loaded from ``prometheus/rules`` by absolute path; a job with no address given is left out."""
    import yaml  # type: ignore[import-untyped]  # dbt-core brings PyYAML; its stubs are not a dependency

    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(PROMETHEUS_DIR / pattern) for pattern in config["rule_files"]]
    targets = {"pushgateway": gateway, "batchobs-ingester": ingester, "statsd-exporter": statsd_exporter}
    config["scrape_configs"] = [
        dict(job, static_configs=[{"targets": [targets[job["job_name"]]]}])
        for job in config["scrape_configs"] if targets.get(job["job_name"])
    ]
    return str(yaml.safe_dump(config, sort_keys=False))


@contextmanager
def black_hole() -> Iterator[str]:
    """A loopback server that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                held.append(conn)
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        server.close()


def refusing_url() -> str:
    """A loopback URL nothing listens on: connections are refused at once."""
    return f"http://127.0.0.1:{free_port()}"


