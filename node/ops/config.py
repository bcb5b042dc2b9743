"""Every setting of the `qudag-node run` daemon, where it comes from, and how it is checked.

Why one table of settings drives everything here: the same name has to work as a dataclass
field, a TOML key, an environment variable (`QUDAG_<NAME>`) and a command-line flag, with the
same parsing and the same checks in all four. Declaring each setting once (`_SPECS`) keeps those
from drifting apart.

Precedence, highest first (as the node issue specifies):

1. command-line flags of `qudag-node run`;
2. the TOML file named by `--config FILE` (or, without that flag, by `$QUDAG_CONFIG`);
3. environment variables `QUDAG_<NAME>` (list settings comma-separated; a variable set to the
   empty string counts as unset, so `QUDAG_SEED=` does not mean "seed zero");
4. the defaults below.

A list given at a higher level replaces the lower one (lists are not merged): `--bootstrap A`
ignores the TOML file's `bootstrap`. Relative paths in the TOML file are relative to the file's
own directory (so a file can be used from any working directory); on the command line and in the
environment they are relative to the working directory, as a user expects.

Strictness: an unknown TOML key, a value of the wrong type, a negative count, a malformed
`host:port` or multiaddr is a `ConfigError` naming where the bad value came from (`FILE:key`,
`env QUDAG_X` or `--flag`), because a daemon that silently runs with a typo'd setting costs more
than one that refuses to start. Unknown `QUDAG_*` environment variables are *not* errors: a user
may name their own variables that way (e.g. the one `passphrase_env` points at).

Defaults, and why:

- `listen = /ip4/127.0.0.1/tcp/0`: loopback and an OS-chosen port. A node is reachable from
  other hosts only when the user says so; and a fixed port buys little, because a libp2p
  bootstrap address needs the node's peer id (`/p2p/...`) too, which the daemon prints at start
  and reports in `/status`.
- `http = 127.0.0.1:8700`: loopback, and a fixed port so that `qudag-node status` works with no
  arguments against a single local node. Port 0 is allowed (tests, testnets).
- `reeval_budget_ms = 200`: re-evaluating other peers' claims may use 200 ms of CPU per second
  of wall time (a fifth of a core), so checking others never starves our own evolution.
"""

from __future__ import annotations

import argparse
import difflib
import ipaddress
import math
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import multiaddr

from qudag.node.errors import UserError

ENV_PREFIX = "QUDAG_"
CONFIG_ENV = "QUDAG_CONFIG"
DEFAULT_HTTP_PORT = 8700
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
KEY_FILE_NAME = "node.key"


class ConfigError(UserError):
    """A setting is unknown, of the wrong type or out of range; the message names its source."""


@dataclass(frozen=True)
class NodeConfig:
    """The daemon's settings after merging flags, TOML, environment and defaults.

    Constructing one directly (simulations, tests) runs the same checks as loading one.
    Lists are tuples so that the object is truly immutable.
    """

    data_dir: Path = Path("qudag-data")
    """Ledger (SQLite), population checkpoints and, by default, the node key live here."""
    key: Path | None = None
    """ML-DSA identity file; None means `data_dir/node.key`. Created on first run if absent."""
    passphrase_env: str | None = None
    """Name of an environment variable holding the key's passphrase (None: key not encrypted)."""
    listen: str = "/ip4/127.0.0.1/tcp/0"
    """libp2p listen multiaddr (ip4/ip6 + tcp, no /p2p/)."""
    bootstrap: tuple[str, ...] = ()
    """Multiaddrs of peers to join through; each must end in /p2p/<peer id>."""
    tasks: tuple[str, ...] = ("xor",)
    """Task specs to evolve (e.g. 'xor', 'digits', 'csv:PATH'); resolved by the daemon."""
    http: str = f"127.0.0.1:{DEFAULT_HTTP_PORT}"
    """host:port of the status/metrics HTTP server ([v6addr]:port for IPv6)."""
    publish_every: int = 5
    """Publish the best new template every K generations."""
    population: int = 64
    """Individuals per task population."""
    seed: int | None = None
    """Seed of the evolution RNG; None draws a random one (logged at start)."""
    migrants: int = 4
    """Templates sampled from the ledger into each generation (at most `population`)."""
    wait_peers: int = 0
    """Start evolving once this many peers are connected (at most `WAIT_PEERS_MAX_S`
    seconds): nodes that start one after another then evolve in step, instead of the first
    running hundreds of generations alone (docs/studies.md, study 6, "Real daemons")."""
    es_batch_ms: int = 0
    """es search: our result sets wait up to this long to go out together in one gossip
    message (0: each at once). Every message costs each daemon CPU; waiting costs staleness
    (docs/studies.md, study 6, "Real daemons")."""
    search: str = "islands"
    """The search each task runs: `islands` (NSGA-II, fed verified templates as migrants) or
    `es` (the shared evolution strategy, fed other peers' result sets; evolution/es.py)."""
    reeval_budget_ms: int = 200
    """CPU milliseconds per wall-clock second spent re-evaluating other peers' claims (0-1000)."""
    ban_below: float = -4.0
    """Reputation score under which an author is banned (not relayed, not sampled, dropped)."""
    trust_attestations: int = 2
    """Positive attestations that make a claim count as verified without our own
    re-evaluation; only attesters with a proven record count (one of their "valid"
    attestations checked against our own measurement and found right)."""
    max_orphans: int = 10_000
    """Vertices held while their parents are fetched; beyond this the oldest are dropped."""
    clock_skew_ms: int = 30_000
    """Vertices timestamped further than this in the future are rejected."""
    heads_interval_s: float = 5.0
    """Seconds between heads announcements (how a peer that missed gossip notices)."""
    log_level: str = "INFO"
    """One of DEBUG, INFO, WARNING, ERROR, CRITICAL."""
    generations: int | None = None
    """Stop after this many generations; None runs until SIGINT/SIGTERM."""
    until_fitness: float | None = None
    """A task is done once its best fitness reaches this (neat-python's fitness_threshold)."""
    max_seconds: float | None = None
    """Every task is done after this much wall time (an AutoML-style budget)."""
    when_done: str = "exit"
    """Once every task is done: `exit` (after a final sync round; evolution state is
    checkpointed after every generation) or `serve` (keep serving the ledger until a signal,
    as testnets need to compare the nodes' ledgers)."""

    def __post_init__(self) -> None:
        for spec in _SPECS:
            value = getattr(self, spec.name)
            if spec.name == "key" and value is None:
                continue
            if spec.kind == "path" and isinstance(value, str):
                object.__setattr__(self, spec.name, Path(value))
            elif spec.kind == "list" and isinstance(value, list):
                object.__setattr__(self, spec.name, tuple(value))
            # Built in code, a node may have no task of its own: the phase of `run --task ID`
            # that syncs, serves and fetches a published task's data (node/ops/task_join.py).
            # What a user writes (flags, TOML, env) must still name one (`_from_text`).
            _check(spec, getattr(self, spec.name), f"NodeConfig.{spec.name}", in_code=True)
        if self.key is None:
            object.__setattr__(self, "key", self.data_dir / KEY_FILE_NAME)
        if self.migrants > self.population:
            raise ConfigError(
                f"NodeConfig.migrants: {self.migrants} is more than population {self.population}"
            )

    @property
    def key_path(self) -> Path:
        """The key file (never None after construction; typed for callers' convenience)."""
        assert self.key is not None
        return self.key

    @property
    def http_host(self) -> str:
        return parse_host_port(self.http)[0]

    @property
    def http_port(self) -> int:
        return parse_host_port(self.http)[1]

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly view (paths as strings, tuples as lists), e.g. for logs or /status."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out


# ---------------------------------------------------------------------------------------------
# Value checks shared by every source. Each raises ValueError with a message *without* source;
# the caller prefixes where the value came from.


def parse_host_port(text: str) -> tuple[str, int]:
    """Split `host:port` / `[v6]:port` and check both parts; raises ValueError if malformed.

    The host must be an IP address or a DNS name (letters, digits, '-', '.'); the port 0-65535.
    """
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\[\]\s]+):(\d{1,5})", text)
    if match is None:
        raise ValueError(f"expected host:port (or [ipv6]:port), got {text!r}")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if match.group(1) is not None:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} in {text!r} is not an IPv6 address") from None
    elif not _is_ipv4_or_name(host):
        raise ValueError(f"{host!r} in {text!r} is not an IPv4 address or host name")
    if port > 65535:
        raise ValueError(f"port {port} in {text!r} is out of range 0-65535")
    return host, port


def _is_ipv4_or_name(host: str) -> bool:
    if re.fullmatch(r"[\d.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return False
        return True
    label = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
    return len(host) <= 253 and re.fullmatch(rf"{label}(\.{label})*\.?", host) is not None


def _parse_multiaddr(text: str) -> list[str]:
    try:
        addr = multiaddr.Multiaddr(text)
    except Exception as exc:  # the library raises several unrelated types for bad input
        raise ValueError(f"malformed multiaddr {text!r}: {exc}") from None
    return [p.name for p in addr.protocols()]


def _check_listen(text: str) -> None:
    names = _parse_multiaddr(text)
    if names[:1] not in (["ip4"], ["ip6"]) or names[1:] != ["tcp"]:
        raise ValueError(f"listen address must be /ip4|ip6/<addr>/tcp/<port>, got {text!r}")


def _check_bootstrap(text: str) -> None:
    names = _parse_multiaddr(text)
    hosts = (["ip4"], ["ip6"], ["dns"], ["dns4"], ["dns6"])
    if names[:1] not in hosts or names[1:] != ["tcp", "p2p"]:
        raise ValueError(
            f"bootstrap address must be /ip4|ip6|dns/<host>/tcp/<port>/p2p/<peer id>, got {text!r}"
        )


def _check_task(text: str) -> None:
    if not text or text != text.strip() or "," in text:
        raise ValueError(f"task spec must be non-empty, without commas or edge spaces: {text!r}")


def _check_env_name(text: str) -> None:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", text):
        raise ValueError(f"{text!r} is not a valid environment variable name")


def _check_http(text: str) -> None:
    parse_host_port(text)


def _check_log_level(text: str) -> None:
    if text not in LOG_LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}, got {text!r}")


def _check_search(text: str) -> None:
    if text not in ("islands", "es"):
        raise ValueError(f"must be islands or es, got {text!r}")


def _check_when_done(text: str) -> None:
    if text not in ("exit", "serve"):
        raise ValueError(f"must be exit or serve, got {text!r}")


def _at_least(low: float) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        if value < low:
            raise ValueError(f"must be >= {low:g}, got {value!r}")

    return check


def _between(low: float, high: float) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        if not low <= value <= high:
            raise ValueError(f"must be between {low:g} and {high:g}, got {value!r}")

    return check


def _positive(value: Any) -> None:
    if not value > 0:
        raise ValueError(f"must be > 0, got {value!r}")


def _not_empty_path(value: Any) -> None:
    if str(value) in ("", "."):
        raise ValueError("must be a non-empty path")


# ---------------------------------------------------------------------------------------------
# The table of settings.


@dataclass(frozen=True)
class _Spec:
    name: str
    kind: str  # "int" | "float" | "str" | "path" | "list"
    help: str
    metavar: str
    flag: str
    check: Callable[[Any], None] | None = None
    optional_word: str | None = None  # string meaning None (e.g. "forever"), for flags/env
    upper: bool = False  # normalise strings to upper case (log level)
    item_check: Callable[[str], None] | None = None
    min_items: int = 0
    unique: bool = False

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


_SPECS: tuple[_Spec, ...] = (
    _Spec("data_dir", "path", "ledger, checkpoints and default key live here", "DIR",
          "--data-dir", _not_empty_path),
    _Spec("key", "path", "ML-DSA identity file (default DATA_DIR/node.key, created if absent)",
          "FILE", "--key", _not_empty_path),
    _Spec("passphrase_env", "str", "name of an env var holding the key passphrase", "VAR",
          "--passphrase-env", _check_env_name, optional_word="none"),
    _Spec("listen", "str", "libp2p listen multiaddr (default /ip4/127.0.0.1/tcp/0)",
          "MULTIADDR", "--listen", _check_listen),
    _Spec("bootstrap", "list", "peer to join through, /.../tcp/PORT/p2p/PEER_ID (repeatable)",
          "MULTIADDR", "--bootstrap", item_check=_check_bootstrap, unique=True),
    _Spec("tasks", "list", "task to evolve, e.g. xor, digits, csv:PATH (repeatable; "
          "default xor)", "TASK", "--task", item_check=_check_task, min_items=1, unique=True),
    _Spec("http", "str", f"status/metrics HTTP address (default 127.0.0.1:{DEFAULT_HTTP_PORT})",
          "HOST:PORT", "--http", _check_http),
    _Spec("publish_every", "int", "publish the best new template every K generations "
          "(default 5)", "K", "--publish-every", _at_least(1)),
    _Spec("population", "int", "individuals per task (default 64)", "N", "--population",
          _at_least(2)),
    _Spec("seed", "int", "evolution RNG seed (default: random, logged)", "INT", "--seed",
          _between(0, 2**64 - 1), optional_word="random"),
    _Spec("migrants", "int", "ledger templates sampled into each generation (default 4)", "N",
          "--migrants", _at_least(0)),
    _Spec("wait_peers", "int", "start evolving once N peers are connected (at most 60 s; "
          "default 0: at once)", "N", "--wait-peers", _at_least(0)),
    _Spec("es_batch_ms", "int", "es: send our result sets together, at most one message per "
          "MS (0-10000, default 0: each at once)", "MS", "--es-batch-ms", _between(0, 10_000)),
    _Spec("search", "str", "islands (NSGA-II + migrants) or es (shared evolution strategy; "
          "default islands)", "islands|es", "--search", _check_search),
    _Spec("reeval_budget_ms", "int", "CPU ms per second spent re-evaluating others' claims "
          "(0-1000, default 200)", "MS", "--reeval-budget-ms", _between(0, 1000)),
    _Spec("ban_below", "float", "reputation under which an author is banned (<= 0, "
          "default -4)", "SCORE", "--ban-below", _between(-1e9, 0)),
    _Spec("trust_attestations", "int", "attestations of attesters with a proven record "
          "that verify a claim (default 2)", "N", "--trust-attestations", _at_least(1)),
    _Spec("max_orphans", "int", "vertices buffered while parents are fetched (default 10000)",
          "N", "--max-orphans", _at_least(1)),
    _Spec("clock_skew_ms", "int", "reject vertices this far in the future (default 30000)",
          "MS", "--clock-skew-ms", _at_least(0)),
    _Spec("heads_interval_s", "float", "seconds between heads announcements (default 5)",
          "SECONDS", "--heads-interval", _positive),
    _Spec("log_level", "str", "DEBUG, INFO, WARNING, ERROR or CRITICAL (default INFO)",
          "LEVEL", "--log-level", _check_log_level, upper=True),
    _Spec("generations", "int", "stop after G generations (default: run until stopped)", "G",
          "--generations", _at_least(1), optional_word="forever"),
    _Spec("until_fitness", "float", "a task is done once its best fitness reaches F "
          "(default: none)", "F", "--until-fitness", _between(-1e12, 1e12), optional_word="none"),
    _Spec("max_seconds", "float", "stop evolving after S seconds of wall time (default: none)",
          "S", "--max-seconds", _positive, optional_word="forever"),
    _Spec("when_done", "str", "once every task is done (--generations, --until-fitness, "
          "--max-seconds): exit after a final sync round, or serve until a signal "
          "(default exit)", "exit|serve", "--when-done", _check_when_done),
)  # fmt: skip
_BY_NAME = {spec.name: spec for spec in _SPECS}


_SCALAR_TYPES: dict[str, type | tuple[type, ...]] = {
    "int": int,
    "float": (int, float),
    "str": str,
    "path": Path,
}


def _check(spec: _Spec, value: Any, source: str, in_code: bool = False) -> None:
    """Check an already typed value; raise ConfigError naming `source`. `in_code`: a value
    set by a program, for which an empty `tasks` list is allowed."""
    try:
        if value is None:
            if spec.optional_word is None:
                raise ValueError("must not be None")
            return
        if spec.kind == "list":
            if not isinstance(value, tuple):
                raise ValueError(f"expected a list, got {type(value).__name__}")
            if len(value) < spec.min_items and not (in_code and spec.name == "tasks"):
                raise ValueError(f"needs at least {spec.min_items} item(s)")
            for item in value:
                if not isinstance(item, str):
                    raise ValueError(f"items must be strings, got {type(item).__name__}")
                if spec.item_check is not None:
                    spec.item_check(item)
            if spec.unique and len(set(value)) != len(value):
                raise ValueError(f"has duplicate items: {list(value)!r}")
            return
        if isinstance(value, bool) or not isinstance(value, _SCALAR_TYPES[spec.kind]):
            raise ValueError(f"expected {spec.kind}, got {type(value).__name__}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"must be a finite number, got {value!r}")
        if spec.check is not None:
            spec.check(value)
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _expand_user(raw: str) -> Path:
    """`Path(raw).expanduser()`, but an unknown `~user` is a ValueError (pathlib raises
    RuntimeError, which would escape as a traceback instead of a clear config error)."""
    try:
        return Path(raw).expanduser()
    except RuntimeError:
        raise ValueError(f"cannot expand {raw!r}: unknown user or no home directory") from None


def _from_text(spec: _Spec, text: str | Sequence[str], source: str) -> Any:
    """Parse a flag or env value (strings) into the setting's type, then check it."""
    try:
        value: Any
        if spec.kind == "list":
            if isinstance(text, str):  # environment: comma-separated, blanks ignored
                value = tuple(item.strip() for item in text.split(",") if item.strip())
            else:  # repeated flags: taken verbatim, so `--bootstrap ""` is an error
                value = tuple(text)
        else:
            assert isinstance(text, str)
            raw = text.strip()
            if spec.optional_word is not None and raw.lower() == spec.optional_word:
                value = None
            elif spec.kind == "int":
                if not re.fullmatch(r"[+-]?\d+", raw):
                    raise ValueError(f"expected an integer, got {text!r}")
                value = int(raw)
            elif spec.kind == "float":
                try:
                    value = float(raw)
                except ValueError:
                    raise ValueError(f"expected a number, got {text!r}") from None
            elif spec.kind == "path":
                value = _expand_user(raw)
            else:
                value = raw.upper() if spec.upper else raw
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    _check(spec, value, source)
    return value


def _from_toml(spec: _Spec, raw: Any, source: str, base: Path) -> Any:
    """Take a TOML value as is (no string-to-number coercion), then check it."""

    def wrong(expected: str) -> ConfigError:
        return ConfigError(f"{source}: expected {expected}, got {type(raw).__name__} {raw!r}")

    value: Any
    if spec.kind == "int":
        if not isinstance(raw, int) or isinstance(raw, bool):
            raise wrong("an integer")
        value = raw
    elif spec.kind == "float":
        if not isinstance(raw, int | float) or isinstance(raw, bool):
            raise wrong("a number")
        value = float(raw)
    elif spec.kind == "list":
        if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
            raise wrong("a list of strings")
        value = tuple(raw)
    else:
        if not isinstance(raw, str):
            raise wrong("a string")
        if spec.kind == "path":
            try:
                path = _expand_user(raw)
            except ValueError as exc:
                raise ConfigError(f"{source}: {exc}") from None
            value = path if path.is_absolute() else base / path
        else:
            value = raw.upper() if spec.upper else raw
    _check(spec, value, source)
    return value


def _read_toml(path: Path, source: str) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{source}: config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{source}: config file {path} is a directory") from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read config file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


# ---------------------------------------------------------------------------------------------
# Public entry points.


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `--config` and one flag per setting to the `run` subcommand's parser.

    Every flag defaults to None ("not given") so that `load_config` can tell a flag from a
    default; values stay strings here and are parsed by `load_config`, so that flags, TOML and
    environment share one parser and one style of error message.
    """
    parser.add_argument(
        "--config",
        metavar="FILE.toml",
        default=None,
        help=f"TOML file of settings (keys as below, with underscores); default ${CONFIG_ENV}. "
        f"Flags override the file, which overrides {ENV_PREFIX}* environment variables",
    )
    for spec in _SPECS:
        if spec.kind == "list":
            parser.add_argument(
                spec.flag,
                dest=spec.name,
                action="append",
                default=None,
                metavar=spec.metavar,
                help=f"{spec.help} [env {spec.env}, comma-separated]",
            )
        else:
            parser.add_argument(
                spec.flag,
                dest=spec.name,
                default=None,
                metavar=spec.metavar,
                help=f"{spec.help} [env {spec.env}]",
            )


def load_config(
    args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None
) -> NodeConfig:
    """Merge flags > TOML file > `QUDAG_*` environment > defaults into a checked NodeConfig.

    `args` is the namespace parsed by a parser that `add_run_arguments` filled (None: no flags);
    `environ` defaults to nothing (pass `os.environ` explicitly), so that tests and embedders
    never pick up the caller's environment by accident.
    """
    env = dict(environ or {})
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}

    for spec in _SPECS:
        text = env.get(spec.env)
        if text is not None and text.strip() != "":
            source = f"env {spec.env}"
            values[spec.name] = _from_text(spec, text, source)
            sources[spec.name] = source

    config_path: str | None = getattr(args, "config", None) if args is not None else None
    config_source = "--config"
    if config_path is None and env.get(CONFIG_ENV, "").strip():
        config_path = env[CONFIG_ENV].strip()
        config_source = f"env {CONFIG_ENV}"
    if config_path is not None:
        if not config_path:
            raise ConfigError(f"{config_source}: empty file name")
        path = Path(config_path).expanduser()
        document = _read_toml(path, config_source)
        for key, raw in document.items():
            spec_or_none = _BY_NAME.get(key)
            if spec_or_none is None:
                hint = difflib.get_close_matches(key.replace("-", "_"), _BY_NAME, n=1)
                suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
                raise ConfigError(f"{path}:{key}: unknown setting{suggestion}")
            source = f"{path}:{key}"
            values[key] = _from_toml(spec_or_none, raw, source, path.parent)
            sources[key] = source

    if args is not None:
        for spec in _SPECS:
            given = getattr(args, spec.name, None)
            if given is not None:
                values[spec.name] = _from_text(spec, given, spec.flag)
                sources[spec.name] = spec.flag

    population = values.get("population", NodeConfig.population)
    migrants = values.get("migrants", NodeConfig.migrants)
    if migrants > population:
        where = sources.get("migrants") or sources.get("population", "defaults")
        of_pop = sources.get("population", "default")
        raise ConfigError(
            f"{where}: migrants {migrants} is more than population {population} ({of_pop})"
        )
    return NodeConfig(**values)


def settings_help() -> list[tuple[str, str, str, str]]:
    """(toml key, env var, flag, help) for every setting: for docs and `--help` epilogs."""
    return [(spec.name, spec.env, spec.flag, spec.help) for spec in _SPECS]


__all__ = [
    "CONFIG_ENV",
    "ConfigError",
    "DEFAULT_HTTP_PORT",
    "NodeConfig",
    "add_run_arguments",
    "load_config",
    "parse_host_port",
    "settings_help",
]
