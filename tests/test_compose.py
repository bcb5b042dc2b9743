"""docker-compose.yml, Dockerfile and deploy/ agree with the CLI (no Docker engine needed).

No engine runs on our machines, so this is what keeps the compose testnet from rotting: every
command line in the compose file and the Dockerfile is parsed by the real `qudag-node` parser,
every node's settings are loaded by the real config loader (flags > mounted TOML > env), every
QUDAG_* variable must be a real setting and must not be shadowed by the mounted TOML, ports and
volumes must line up with those settings, the namespace testnet must use the same command lines,
and Prometheus must scrape every node.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from qudag.node.cli import build_parser
from qudag.node.commands.join import _split, bootstrap_addr
from qudag.node.errors import UserError
from qudag.node.ops.config import CONFIG_ENV, NodeConfig, load_config, settings_help
from qudag.node.ops.netns import DEFAULT_CONFIG, HTTP_PORT, P2P_PORT, compose_command, node_ip

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read docker-compose.yml")

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
NODES = {name: s for name, s in SERVICES.items() if name == "bootstrap" or name.startswith("peer")}
SETTING_ENVS = {env for _key, env, _flag, _help in settings_help()}
TOML_KEYS = {key for key, _env, _flag, _help in settings_help()}


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the final stage, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text()
    text = re.sub(r"\\\n\s*", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        out.append((instruction.upper(), rest.strip()))
    last_from = max(i for i, (ins, _) in enumerate(out) if ins == "FROM")
    return out[last_from:]


FINAL_STAGE = _dockerfile()


def _json_list(args: str) -> list[str]:
    assert args.startswith("["), f"use the exec (JSON) form: {args}"
    import json

    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def _image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for ins, rest in FINAL_STAGE:
        if ins == "ENV":
            for token in shlex.split(rest):
                key, _, value = token.partition("=")
                env[key] = value
    return env


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> source (named volume or ./host/path)."""
    out = {}
    for spec in service.get("volumes", []):
        parts = spec.split(":")
        out[parts[1]] = parts[0]
    return out


def _container_to_repo(service: dict[str, Any], path: str) -> Path:
    """Resolve a container path through the service's bind mounts to a file of this repo."""
    for target, source in _mounts(service).items():
        if source.startswith("./") and path == target:
            return ROOT / source[2:]
    raise AssertionError(f"{path} is not bind-mounted from the repository")


def _run_args(service: dict[str, Any]) -> tuple[list[str], argparse.Namespace]:
    """The `run` arguments of a node service (through `join` when used), parsed by the CLI."""
    entrypoint = _json_list(dict(FINAL_STAGE)["ENTRYPOINT"])
    assert entrypoint == ["qudag-node"]
    parser = build_parser()
    command = service["command"]
    args = parser.parse_args(command)
    if args.command == "join":
        wait, run = _split(args)
        assert wait > 0
        args = parser.parse_args(run)
    assert args.command == "run"
    return command, args


def _config(service: dict[str, Any]) -> NodeConfig:
    """Load the node's settings exactly as the container would (TOML read from the repo)."""
    env = {**_image_env(), **service["environment"]}
    env[CONFIG_ENV] = str(_container_to_repo(service, env[CONFIG_ENV]))
    _command, args = _run_args(service)
    return load_config(args, env)


def test_the_compose_file_has_a_bootstrap_node_peers_and_an_optional_prometheus() -> None:
    assert "bootstrap" in NODES and len(NODES) >= 3
    assert SERVICES["prometheus"]["profiles"] == ["metrics"]
    for name, service in NODES.items():
        assert service["restart"] in ("unless-stopped", "always", "on-failure"), name
        assert "profiles" not in service, f"{name} must start by default"


@pytest.mark.parametrize("name", sorted(NODES))
def test_every_command_flag_and_setting_exists_in_the_cli(name: str) -> None:
    service = NODES[name]
    config = _config(service)  # raises ConfigError/SystemExit on any unknown flag or value
    for key in service["environment"]:
        assert key == CONFIG_ENV or key in SETTING_ENVS, f"{name}: {key} is not a setting"
    toml_file = _container_to_repo(service, service["environment"][CONFIG_ENV])
    import tomllib

    toml_keys = set(tomllib.loads(toml_file.read_text()))
    assert toml_keys <= TOML_KEYS
    for key in service["environment"]:
        setting = key.removeprefix("QUDAG_").lower()
        assert setting not in toml_keys, f"{name}: {key} is shadowed by {toml_file.name}"
    assert config.data_dir == Path("/var/lib/qudag")


@pytest.mark.parametrize("name", sorted(NODES))
def test_ports_addresses_and_volumes_line_up(name: str) -> None:
    service = NODES[name]
    config = _config(service)
    address = service["networks"]["qudag"]["ipv4_address"]
    subnet = ipaddress.ip_network(COMPOSE["networks"]["qudag"]["ipam"]["config"][0]["subnet"])
    assert ipaddress.ip_address(address) in subnet
    assert config.listen == f"/ip4/{address}/tcp/{P2P_PORT}"
    assert config.http_port == HTTP_PORT and config.http_host == "0.0.0.0"
    published = [p.rsplit(":", 1) for p in service["ports"]]
    assert [int(container) for _host, container in published] == [config.http_port]
    mounts = _mounts(service)
    data_volume = mounts[str(config.data_dir)]
    assert data_volume in COMPOSE["volumes"], f"{name}: data volume must be a named volume"
    assert config.key_path.parent == config.data_dir, "the key lives on the node's volume"
    for _target, source in mounts.items():
        if source.startswith("./"):
            assert (ROOT / source[2:]).is_file(), f"{name}: {source} does not exist"


def test_host_ports_addresses_and_data_volumes_are_unique() -> None:
    host_ports = [p.rsplit(":", 1)[0] for s in SERVICES.values() for p in s.get("ports", [])]
    assert len(host_ports) == len(set(host_ports))
    addresses = [s["networks"]["qudag"]["ipv4_address"] for s in SERVICES.values()]
    assert len(addresses) == len(set(addresses))
    volumes = [_mounts(s)["/var/lib/qudag"] for s in NODES.values()]
    assert len(volumes) == len(set(volumes)) == len(COMPOSE["volumes"])


def test_peers_join_the_bootstrap_node_at_its_address_and_status_port() -> None:
    bootstrap_ip = NODES["bootstrap"]["networks"]["qudag"]["ipv4_address"]
    for name, service in NODES.items():
        command = service["command"]
        if name == "bootstrap":
            assert command[0] == "run"
            continue
        assert command[:2] == ["join", f"{bootstrap_ip}:{HTTP_PORT}"]
        assert service["depends_on"] == ["bootstrap"]


def test_the_namespace_testnet_finds_the_settings_file_its_nodes_get() -> None:
    """Every netns node runs with QUDAG_CONFIG=DEFAULT_CONFIG: a wrong path fails only the
    network-namespace tests (the slow tier), so it is checked here too."""
    assert DEFAULT_CONFIG.is_file(), DEFAULT_CONFIG
    assert DEFAULT_CONFIG.read_text() == (ROOT / "deploy" / "node.toml").read_text()


def test_the_namespace_testnet_runs_the_same_command_lines() -> None:
    for name, service in NODES.items():
        i = 0 if name == "bootstrap" else int(name.removeprefix("peer"))
        assert service["command"] == compose_command(i), name
        assert service["networks"]["qudag"]["ipv4_address"] == node_ip(i)


def test_the_dockerfile_runs_a_non_root_healthchecked_node() -> None:
    instructions = dict(FINAL_STAGE)
    user = instructions["USER"]
    assert user not in ("root", "0")
    parser = build_parser()
    health = instructions["HEALTHCHECK"]
    cmd = _json_list(health.split("CMD", 1)[1].strip())
    assert cmd[0] == "qudag-node"
    args = parser.parse_args(cmd[1:])
    assert args.command == "status" and args.http == f"127.0.0.1:{HTTP_PORT}"
    assert parser.parse_args(_json_list(instructions["CMD"])).command == "run"
    exposed = {int(p) for p in instructions["EXPOSE"].split()}
    assert exposed == {P2P_PORT, HTTP_PORT}
    env = _image_env()
    for key in env:
        if key.startswith("QUDAG_"):
            assert key in SETTING_ENVS, f"Dockerfile ENV {key} is not a setting"
    assert env["QUDAG_DATA_DIR"] == "/var/lib/qudag"
    assert "/var/lib/qudag" in instructions["VOLUME"]
    for ins, rest in _dockerfile_all():
        if ins == "COPY" and "--from" not in rest:
            for source in shlex.split(rest)[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"


def _dockerfile_all() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            ins, _, rest = line.partition(" ")
            out.append((ins.upper(), rest.strip()))
    return out


def test_prometheus_scrapes_every_node_status_port() -> None:
    service = SERVICES["prometheus"]
    source = _mounts(service)["/etc/prometheus/prometheus.yml"]
    config = yaml.safe_load((ROOT / source[2:]).read_text())
    targets = {t for job in config["scrape_configs"] for sc in job["static_configs"]
               for t in sc["targets"]}  # fmt: skip
    assert targets == {f"{name}:{HTTP_PORT}" for name in NODES}
    assert all(
        job.get("metrics_path", "/metrics") == "/metrics" for job in config["scrape_configs"]
    )


def test_join_builds_the_bootstrap_address_from_the_host_it_reached() -> None:
    status = {
        "peer_id": "12D3KooWDcrqhFzvnGyNRj4LNFxbB1vpc4qqSTcxdSBS7UskUJcD",
        "addrs": ["/ip4/0.0.0.0/tcp/4001/p2p/12D3KooWDcrqhFzvnGyNRj4LNFxbB1vpc4qqSTcxdSBS7UskUJcD"],
    }
    peer = status["peer_id"]
    assert bootstrap_addr("10.77.0.10", status) == f"/ip4/10.77.0.10/tcp/4001/p2p/{peer}"
    assert bootstrap_addr("bootstrap", status) == f"/dns4/bootstrap/tcp/4001/p2p/{peer}"
    with pytest.raises(UserError):
        bootstrap_addr("10.77.0.10", {"peer_id": None, "addrs": []})
    config = load_config(
        build_parser().parse_args(
            ["run", "--bootstrap", bootstrap_addr("bootstrap", status), "--data-dir", "x"]
        ),
        {},
    )
    assert config.bootstrap == (f"/dns4/bootstrap/tcp/4001/p2p/{peer}",)


def test_join_refuses_a_command_that_is_not_run() -> None:
    from qudag.node.cli import main

    assert main(["join", "127.0.0.1:1", "--wait", "0", "--", "status"]) == 2
