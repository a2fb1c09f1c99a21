"""docker-compose.yml as data, for the tests: services, mounts, environment, ports."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
# ${VAR}, ${VAR:-default}, ${VAR:?error}; $$ is a literal dollar
INTERPOLATION = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def load() -> dict[str, Any]:
    """The compose file with YAML anchors and merge keys resolved (as Compose does)."""
    return dict(yaml.safe_load(COMPOSE_FILE.read_text()))


def services(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(doc["services"])


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def interpolate(value: str, env: dict[str, str]) -> str:
    """``${VAR...}`` replaced from ``env`` (defaults applied), as Compose does from .env."""
    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if name in env and (env[name] or op != ":-"):
            return env[name]
        return arg if op in (":-", "-") else ""

    return INTERPOLATION.sub(one, value).replace("$$", "$")


def mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of each volume entry in short syntax."""
    pairs = []
    for entry in service.get("volumes") or []:
        source, target = str(entry).split(":")[:2]
        pairs.append((source, target))
    return pairs


def is_airflow(service: dict[str, Any]) -> bool:
    return (service.get("build") or {}).get("target") == "airflow"


def dockerfile_images() -> list[str]:
    """Base images of the Dockerfile's stages (FROM lines that name an image, not a stage)."""
    stages: set[str] = set()
    images = []
    for line in DOCKERFILE.read_text().splitlines():
        words = line.split()
        if words[:1] == ["FROM"]:
            if words[1] not in stages:
                images.append(words[1])
            if len(words) >= 4 and words[2].upper() == "AS":
                stages.add(words[3])
    return images
