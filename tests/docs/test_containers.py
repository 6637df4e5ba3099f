"""Dockerfile, compose.yaml and prometheus.yml run the README's commands, on the configured port.

No Docker engine runs here: these check the files' structure and that they agree with the README
and the configs; hadolint and promtool also lint them when they are installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from market_data.config import load_config

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
LIVE = "python -m bytewax.run flows.main"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "compose.yaml").read_text())


def health_port(path: str) -> int:
    return load_config(REPO / path, {"HEALTH_HOST": "0.0.0.0"}).service.health.port


def test_compose_runs_the_readme_commands(compose):
    services = compose["services"]
    assert set(services) == {"redis", "market-data", "market-data-demo", "prometheus"}
    live, demo = services["market-data"], services["market-data-demo"]
    assert " ".join(live["command"]) == LIVE and LIVE in README
    assert " ".join(demo["command"]) == "make demo" and "make demo" in README
    assert (live["profiles"], demo["profiles"]) == (["live"], ["demo"])
    for service, config in ((live, "pipelines.yaml"), (demo, "pipelines.demo.yaml")):
        env = service["environment"]
        assert env["REDIS_URL"] == "redis://redis:6379"
        assert env["HEALTH_HOST"] == "0.0.0.0"  # reachable by Prometheus and the host
        port = health_port(config)
        assert service["ports"] == [f"127.0.0.1:{port}:{port}"]
        assert service["shm_size"]  # Docker's 64 MiB /dev/shm cannot hold a ring
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    assert live["environment"]["PIPELINES_FILE"] == "pipelines.yaml"
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in services["prometheus"]["volumes"]


def test_the_configs_listen_where_the_containers_publish():
    for config in ("pipelines.yaml", "pipelines.demo.yaml"):
        assert load_config(REPO / config, {}).service.health.host == "127.0.0.1"
        assert load_config(REPO / config, {"HEALTH_HOST": "0.0.0.0"}).service.health.host == (
            "0.0.0.0"
        )


def test_prometheus_scrapes_both_services(compose):
    prom = yaml.safe_load((REPO / "prometheus.yml").read_text())
    (job,) = prom["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    targets = set(job["static_configs"][0]["targets"])
    assert targets == {
        f"market-data:{health_port('pipelines.yaml')}",
        f"market-data-demo:{health_port('pipelines.demo.yaml')}",
    }


def test_dockerfile_installs_and_runs_like_the_readme():
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", text, re.M)
    assert re.search(r"^RUN make install$", text, re.M)
    assert re.search(r'^CMD \["make", "demo"\]$', text, re.M)
    assert re.search(rf"^EXPOSE {health_port('pipelines.demo.yaml')}$", text, re.M)
    assert re.search(r"^STOPSIGNAL SIGTERM$", text, re.M)
    assert re.search(r"^USER \d+$", text, re.M)  # not root
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv"} <= set(ignored)


def _tool(name: str) -> str | None:
    """``name`` on PATH, or next to this interpreter (a dev dependency in the venv)."""
    return shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))


@pytest.mark.skipif(_tool("hadolint") is None, reason="hadolint is not installed")
def test_hadolint_is_clean():
    hadolint = _tool("hadolint") or "hadolint"
    done = subprocess.run([hadolint, str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_prometheus_yml():
    done = subprocess.run(
        ["promtool", "check", "config", str(REPO / "prometheus.yml")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
