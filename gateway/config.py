"""The node's configuration file (YAML or JSON): every key checked, every error naming the file and the key.

A PACS administrator edits this file by hand, so a typo must stop the node at start-up with a message saying what
is wrong, not surface as a refused association hours later.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

RUNNER_KINDS = ("subprocess", "warm", "map")
DESTINATION_KINDS = ("dimse", "stow")
REPOSITORY = Path(__file__).resolve().parent.parent  # app.py and models/ live here in a clone


class ConfigError(ValueError):
    """The configuration file cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class Peer:
    """A sender allowed to associate: its AE title, optionally the host it must come from, where its SEGs go."""

    ae_title: str
    host: str | None
    send_to: tuple[str, ...]


@dataclass(frozen=True)
class Destination:
    """Where a result is sent: a DICOM node (C-STORE) or a DICOMweb server (STOW-RS)."""

    name: str
    kind: str
    ae_title: str = ""
    host: str = ""
    port: int = 0
    url: str = ""
    timeout_seconds: float = 30.0


@dataclass(frozen=True)
class RunnerConfig:
    """How the application is run on a study's folder."""

    kind: str = "warm"
    models: Path = REPOSITORY / "models"
    app: Path = REPOSITORY / "app.py"
    python: str = sys.executable
    image: str = ""  # the MAP's container image, for kind "map"
    timeout_seconds: float = 900.0
    recycle_after: int = 50  # warm worker restarted after this many studies
    max_attempts: int = 3  # runs of one study before it is failed (an input refusal is never retried)


@dataclass(frozen=True)
class Limits:
    """Beyond these the node answers C-STORE with 0xA700 (out of resources) and keeps serving."""

    max_instances_per_study: int = 3000
    max_bytes_per_study: int = 4 * 1024**3
    min_free_disk_bytes: int = 2 * 1024**3


@dataclass(frozen=True)
class GatewayConfig:
    """Everything the node needs; see README "Connect to your PACS" for each key."""

    spool: Path
    ae_title: str = "ICHSEG"
    bind_address: str = "127.0.0.1"
    port: int = 11112
    require_called_aet: bool = True
    quiet_seconds: float = 30.0
    peers: tuple[Peer, ...] = ()
    destinations: dict[str, Destination] = field(default_factory=dict)
    runner: RunnerConfig = RunnerConfig()
    limits: Limits = Limits()
    send_retry_seconds: tuple[float, ...] = (2.0, 5.0, 15.0, 60.0, 300.0)
    max_send_attempts: int = 50
    send_preview: bool = False
    keep_failed: bool = True  # keep a failed study's files in the spool for inspection
    log_level: str = "INFO"

    @property
    def database(self) -> Path:
        return self.spool / "gateway.sqlite"

    def peer(self, ae_title: str, host: str) -> Peer | None:
        """The allow-list entry matching a calling AE title from a host, if any."""
        for peer in self.peers:
            if peer.ae_title == ae_title and (peer.host is None or peer.host == host):
                return peer
        return None


TOP_KEYS = {"ae_title", "bind_address", "port", "require_called_aet", "quiet_seconds", "spool", "peers",
            "destinations", "runner", "limits", "send_retry_seconds", "max_send_attempts", "send_preview",
            "keep_failed", "log_level"}
PEER_KEYS = {"ae_title", "host", "send_to"}
DESTINATION_KEYS = {"kind", "ae_title", "host", "port", "url", "timeout_seconds"}
RUNNER_KEYS = {"kind", "models", "app", "python", "image", "timeout_seconds", "recycle_after", "max_attempts"}
LIMIT_KEYS = {"max_instances_per_study", "max_bytes_per_study", "min_free_disk_bytes"}


def load_config(path: Path) -> GatewayConfig:
    """Read and check ``path``; relative paths in it are taken from the file's folder."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_bytes())  # bytes: PyYAML decodes, a bad encoding is a YAMLError
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the configuration ({error.strerror})") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML/JSON ({error})") from error
    return parse_config(raw, path)


def parse_config(raw: Any, path: Path) -> GatewayConfig:
    """A ``GatewayConfig`` from the file's parsed content (``path`` names it in errors and anchors relative paths)."""
    check = _Checker(path)
    section = check.mapping(raw, "the file", TOP_KEYS)
    base = path.parent.absolute()
    destinations = {name: _destination(check, name, value)
                    for name, value in check.mapping(section.get("destinations", {}), "destinations").items()}
    peers = tuple(_peer(check, index, value, destinations)
                  for index, value in enumerate(check.sequence(section.get("peers", []), "peers")))
    if not peers:
        raise ConfigError(f"{path}: 'peers' is empty: no sender would be allowed to connect")
    retry = tuple(check.number(value, f"send_retry_seconds[{index}]", minimum=0)
                  for index, value in enumerate(check.sequence(section.get("send_retry_seconds", [2, 5, 15, 60, 300]),
                                                               "send_retry_seconds")))
    if not retry:
        raise ConfigError(f"{path}: 'send_retry_seconds' needs at least one delay")
    return GatewayConfig(
        spool=_path(base, check.text(section.get("spool", "spool"), "spool")),
        ae_title=check.ae_title(section.get("ae_title", "ICHSEG"), "ae_title"),
        bind_address=check.text(section.get("bind_address", "127.0.0.1"), "bind_address"),
        port=int(check.number(section.get("port", 11112), "port", minimum=1, maximum=65535, integer=True)),
        require_called_aet=check.boolean(section.get("require_called_aet", True), "require_called_aet"),
        quiet_seconds=check.number(section.get("quiet_seconds", 30), "quiet_seconds", minimum=0),
        peers=peers,
        destinations=destinations,
        runner=_runner(check, section.get("runner", {}), base),
        limits=_limits(check, section.get("limits", {})),
        send_retry_seconds=retry,
        max_send_attempts=int(check.number(section.get("max_send_attempts", 50), "max_send_attempts", minimum=1,
                                           integer=True)),
        send_preview=check.boolean(section.get("send_preview", False), "send_preview"),
        keep_failed=check.boolean(section.get("keep_failed", True), "keep_failed"),
        log_level=check.choice(str(section.get("log_level", "INFO")).upper(), "log_level",
                               ("DEBUG", "INFO", "WARNING", "ERROR")),
    )


def _path(base: Path, value: str) -> Path:
    candidate = Path(value).expanduser()
    return (candidate if candidate.is_absolute() else base / candidate).resolve()


def _peer(check: _Checker, index: int, raw: Any, destinations: dict[str, Destination]) -> Peer:
    where = f"peers[{index}]"
    section = check.mapping(raw, where, PEER_KEYS)
    if "ae_title" not in section:
        raise ConfigError(f"{check.path}: {where} needs 'ae_title'")
    send_to = tuple(check.text(name, f"{where}.send_to") for name in check.sequence(section.get("send_to", []),
                                                                                     f"{where}.send_to"))
    if not send_to:
        raise ConfigError(f"{check.path}: {where}.send_to is empty: the results of {section['ae_title']!r} would go "
                          "nowhere")
    for name in send_to:
        if name not in destinations:
            raise ConfigError(f"{check.path}: {where}.send_to names '{name}', which is not under 'destinations'")
    host = section.get("host")
    return Peer(ae_title=check.ae_title(section["ae_title"], f"{where}.ae_title"),
                host=None if host in (None, "*") else check.text(host, f"{where}.host"), send_to=send_to)


def _destination(check: _Checker, name: str, raw: Any) -> Destination:
    where = f"destinations.{name}"
    section = check.mapping(raw, where, DESTINATION_KEYS)
    kind = check.choice(section.get("kind", "dimse"), f"{where}.kind", DESTINATION_KINDS)
    timeout = check.number(section.get("timeout_seconds", 30), f"{where}.timeout_seconds", minimum=1)
    if kind == "stow":
        url = check.text(section.get("url", ""), f"{where}.url")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"{check.path}: {where}.url must be the DICOMweb root, http(s)://…")
        return Destination(name=name, kind=kind, url=url.rstrip("/"), timeout_seconds=timeout)
    for key in ("ae_title", "host", "port"):
        if key not in section:
            raise ConfigError(f"{check.path}: {where} (kind dimse) needs '{key}'")
    return Destination(name=name, kind=kind, ae_title=check.ae_title(section["ae_title"], f"{where}.ae_title"),
                       host=check.text(section["host"], f"{where}.host"),
                       port=int(check.number(section["port"], f"{where}.port", minimum=1, maximum=65535,
                                             integer=True)), timeout_seconds=timeout)


def _runner(check: _Checker, raw: Any, base: Path) -> RunnerConfig:
    section = check.mapping(raw, "runner", RUNNER_KEYS)
    default = RunnerConfig()
    kind = check.choice(section.get("kind", default.kind), "runner.kind", RUNNER_KINDS)
    image = check.text(section.get("image", ""), "runner.image") if "image" in section else ""
    if kind == "map" and not image:
        raise ConfigError(f"{check.path}: runner.kind 'map' needs runner.image (the MAP's container image)")
    runner = RunnerConfig(
        kind=kind,
        models=_path(base, check.text(section["models"], "runner.models")) if "models" in section else default.models,
        app=_path(base, check.text(section["app"], "runner.app")) if "app" in section else default.app,
        python=check.text(section.get("python", default.python), "runner.python"),
        image=image,
        timeout_seconds=check.number(section.get("timeout_seconds", default.timeout_seconds),
                                     "runner.timeout_seconds", minimum=1),
        recycle_after=int(check.number(section.get("recycle_after", default.recycle_after), "runner.recycle_after",
                                       minimum=1, integer=True)),
        max_attempts=int(check.number(section.get("max_attempts", default.max_attempts), "runner.max_attempts",
                                      minimum=1, integer=True)),
    )
    if kind != "map":
        for key, folder in (("models", runner.models / "detector"), ("app", runner.app)):
            if not folder.exists():
                raise ConfigError(f"{check.path}: runner.{key}: {folder} does not exist")
    return runner


def _limits(check: _Checker, raw: Any) -> Limits:
    section = check.mapping(raw, "limits", LIMIT_KEYS)
    default = Limits()
    return Limits(**{key: int(check.number(section.get(key, getattr(default, key)), f"limits.{key}", minimum=0,
                                           integer=True)) for key in LIMIT_KEYS})


@dataclass(frozen=True)
class _Checker:
    """Type checks that name the file and the key."""

    path: Path

    def fail(self, key: str, expected: str, value: Any) -> ConfigError:
        return ConfigError(f"{self.path}: '{key}' must be {expected}, not {value!r}")

    def mapping(self, value: Any, key: str, allowed: set[str] | None = None) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(key, "a mapping of keys to values", value)
        if allowed is not None:
            unknown = sorted(set(value) - allowed)
            if unknown:
                raise ConfigError(f"{self.path}: unknown key(s) {', '.join(map(repr, unknown))} in {key}; "
                                  f"known: {', '.join(sorted(allowed))}")
        return value

    def sequence(self, value: Any, key: str) -> list[Any]:
        if not isinstance(value, list):
            raise self.fail(key, "a list", value)
        return value

    def text(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, "a non-empty string", value)
        return value.strip()

    def ae_title(self, value: Any, key: str) -> str:
        title = self.text(value, key)
        if len(title) > 16 or "\\" in title or not title.isprintable():
            raise self.fail(key, "an AE title (1–16 printable characters, no backslash)", value)
        return title

    def boolean(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, "true or false", value)
        return value

    def number(self, value: Any, key: str, minimum: float | None = None, maximum: float | None = None,
               integer: bool = False) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
                or (integer and value != int(value)):
            raise self.fail(key, "an integer" if integer else "a number", value)
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            bounds = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
            raise self.fail(key, f"a number {bounds}", value)
        return float(value)

    def choice(self, value: Any, key: str, choices: tuple[str, ...]) -> str:
        if value not in choices:
            raise self.fail(key, f"one of {', '.join(choices)}", value)
        return str(value)
