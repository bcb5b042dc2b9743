"""Daemon settings: precedence flag > TOML > env > default, and a clear error for each bad input."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from qudag.node.errors import UserError
from qudag.node.ops.config import (
    ConfigError,
    NodeConfig,
    add_run_arguments,
    load_config,
    parse_host_port,
    settings_help,
)

PEER = "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"
BOOT_A = f"/ip4/10.0.0.1/tcp/4001/p2p/{PEER}"
BOOT_B = f"/ip4/10.0.0.2/tcp/4001/p2p/{PEER}"
BOOT_C = f"/dns4/seed.example.org/tcp/4001/p2p/{PEER}"


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    return parser.parse_args(list(argv))


def write_toml(tmp_path: Path, text: str, name: str = "node.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_are_complete_and_key_lives_in_data_dir() -> None:
    config = load_config(parse(), {})
    assert config == NodeConfig()
    assert config.data_dir == Path("qudag-data")
    assert config.key == Path("qudag-data/node.key") == config.key_path
    assert config.listen == "/ip4/127.0.0.1/tcp/0"
    assert (config.http_host, config.http_port) == ("127.0.0.1", 8700)
    assert config.tasks == ("xor",) and config.bootstrap == ()
    assert (config.publish_every, config.population, config.migrants) == (5, 64, 4)
    assert config.seed is None and config.generations is None
    json.dumps(config.as_dict())  # JSON-friendly for logs and /status
    # Every setting is reachable from all three sources under predictable names.
    for key, env, flag, help_text in settings_help():
        assert env == "QUDAG_" + key.upper() and flag.startswith("--") and help_text


@pytest.mark.parametrize(
    ("field", "env_value", "toml_value", "flag", "flag_value", "expected"),
    [
        ("population", "10", "20", "--population", "30", (10, 20, 30, 64)),
        ("heads_interval_s", "1.5", "2.5", "--heads-interval", "3.5", (1.5, 2.5, 3.5, 5.0)),
        ("log_level", "debug", '"error"', "--log-level", "warning",
         ("DEBUG", "ERROR", "WARNING", "INFO")),
        ("tasks", "digits, iris", '["wine"]', "--task", "parity-4",
         (("digits", "iris"), ("wine",), ("parity-4",), ("xor",))),
        ("bootstrap", f"{BOOT_A},{BOOT_B}", f'["{BOOT_C}"]', "--bootstrap", BOOT_A,
         ((BOOT_A, BOOT_B), (BOOT_C,), (BOOT_A,), ())),
    ],
)  # fmt: skip
def test_precedence_flag_over_toml_over_env_over_default(
    tmp_path: Path,
    field: str,
    env_value: str,
    toml_value: str,
    flag: str,
    flag_value: str,
    expected: tuple[object, object, object, object],
) -> None:
    from_env, from_toml, from_flag, default = expected
    env = {"QUDAG_" + field.upper(): env_value}
    toml = write_toml(tmp_path, f"{field} = {toml_value}\n")
    assert getattr(load_config(parse(), {}), field) == default
    assert getattr(load_config(parse(), env), field) == from_env
    assert getattr(load_config(parse("--config", str(toml)), env), field) == from_toml
    both = parse("--config", str(toml), flag, flag_value)
    assert getattr(load_config(both, env), field) == from_flag


def test_config_file_from_env_and_flag_wins(tmp_path: Path) -> None:
    env_file = write_toml(tmp_path, "population = 11\n", "env.toml")
    flag_file = write_toml(tmp_path, "population = 22\n", "flag.toml")
    assert load_config(parse(), {"QUDAG_CONFIG": str(env_file)}).population == 11
    args = parse("--config", str(flag_file))
    assert load_config(args, {"QUDAG_CONFIG": str(env_file)}).population == 22


def test_paths_relative_to_toml_file_and_key_follows_data_dir(tmp_path: Path) -> None:
    toml = write_toml(tmp_path, 'data_dir = "state"\n')
    config = load_config(parse("--config", str(toml)), {})
    assert config.data_dir == tmp_path / "state"
    assert config.key == tmp_path / "state" / "node.key"
    # On the command line a relative path stays relative to the working directory.
    config = load_config(parse("--config", str(toml), "--data-dir", "here"), {})
    assert config.data_dir == Path("here") and config.key == Path("here/node.key")
    config = load_config(parse("--key", "/keys/me.key"), {"QUDAG_DATA_DIR": "d"})
    assert config.key == Path("/keys/me.key") and config.data_dir == Path("d")


def test_optional_settings_can_be_reset_from_a_higher_level(tmp_path: Path) -> None:
    toml = write_toml(tmp_path, "generations = 10\nseed = 7\n")
    config = load_config(parse("--config", str(toml)), {})
    assert (config.generations, config.seed) == (10, 7)
    args = parse("--config", str(toml), "--generations", "forever", "--seed", "random")
    config = load_config(args, {})
    assert (config.generations, config.seed) == (None, None)


def test_empty_env_var_counts_as_unset() -> None:
    config = load_config(parse(), {"QUDAG_SEED": "", "QUDAG_POPULATION": "  "})
    assert config.seed is None and config.population == 64


def test_unrelated_qudag_env_vars_are_ignored() -> None:
    assert load_config(parse(), {"QUDAG_MY_PASSPHRASE": "x"}) == NodeConfig()


def test_valid_addresses_are_accepted() -> None:
    assert parse_host_port("[::1]:8700") == ("::1", 8700)
    assert parse_host_port("node-1.local:0") == ("node-1.local", 0)
    config = load_config(
        parse("--listen", "/ip6/::1/tcp/4001", "--http", "0.0.0.0:9000", "--bootstrap", BOOT_C),
        {},
    )
    assert config.listen == "/ip6/::1/tcp/4001" and config.http_port == 9000


# Each case: how the bad value is given, and the source the message must start with.
BAD_FLAGS = [
    (["--population", "-5"], "--population: must be >= 2"),
    (["--population", "ten"], "--population: expected an integer"),
    (["--publish-every", "0"], "--publish-every: must be >= 1"),
    (["--seed", "-1"], "--seed: must be between"),
    (["--heads-interval", "nan"], "--heads-interval: must be a finite number"),
    (["--heads-interval", "0"], "--heads-interval: must be > 0"),
    (["--reeval-budget-ms", "1001"], "--reeval-budget-ms: must be between 0 and 1000"),
    (["--ban-below", "1"], "--ban-below: must be between"),
    (["--migrants", "65"], "--migrants: migrants 65 is more than population 64"),
    (["--generations", "0"], "--generations: must be >= 1"),
    (["--log-level", "loud"], "--log-level: log level must be one of"),
    (["--passphrase-env", "1BAD"], "--passphrase-env: '1BAD' is not a valid"),
    (["--http", "127.0.0.1"], "--http: expected host:port"),
    (["--http", "127.0.0.1:70000"], "--http: port 70000"),
    (["--http", "999.1.1.1:80"], "--http: '999.1.1.1' in"),
    (["--http", "[::1:80"], "--http: expected host:port"),
    (["--http", "[1:2:3]:80"], "--http: '1:2:3' in"),
    (["--http", "[zz::1]:80"], "--http: expected host:port"),
    (["--http", "bad_host!:80"], "--http: 'bad_host!' in"),
    (["--listen", "/ip4/1.2.3/tcp/1"], "--listen: malformed multiaddr"),
    (["--listen", "/ip4/1.2.3.4/udp/1"], "--listen: listen address must be"),
    (["--listen", BOOT_A], "--listen: listen address must be"),
    (["--bootstrap", "/ip4/10.0.0.1/tcp/4001"], "--bootstrap: bootstrap address must be"),
    (["--bootstrap", "garbage"], "--bootstrap: malformed multiaddr"),
    (["--bootstrap", ""], "--bootstrap: bootstrap address must be"),
    (["--bootstrap", BOOT_A, "--bootstrap", BOOT_A], "--bootstrap: has duplicate items"),
    (["--task", "xor", "--task", "xor"], "--task: has duplicate items"),
    (["--task", " xor"], "--task: task spec must be"),
    (["--data-dir", ""], "--data-dir: must be a non-empty path"),
    (["--config", "/no/such/file.toml"], "--config: config file /no/such/file.toml does not"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_FLAGS)
def test_bad_flags(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(parse(*argv), {})
    assert isinstance(info.value, UserError)
    assert str(info.value).startswith(message), str(info.value)


BAD_ENV = [
    ({"QUDAG_MAX_ORPHANS": "-1"}, "env QUDAG_MAX_ORPHANS: must be >= 1"),
    ({"QUDAG_CLOCK_SKEW_MS": "1.5"}, "env QUDAG_CLOCK_SKEW_MS: expected an integer"),
    ({"QUDAG_HTTP": "localhost"}, "env QUDAG_HTTP: expected host:port"),
    ({"QUDAG_BOOTSTRAP": f"{BOOT_A},nope"}, "env QUDAG_BOOTSTRAP: malformed multiaddr 'nope'"),
    ({"QUDAG_TASKS": " , "}, "env QUDAG_TASKS: needs at least 1 item"),
    ({"QUDAG_CONFIG": "/no/such.toml"}, "env QUDAG_CONFIG: config file"),
    ({"QUDAG_MIGRANTS": "9", "QUDAG_POPULATION": "8"}, "env QUDAG_MIGRANTS: migrants 9"),
]


@pytest.mark.parametrize(("environ", "message"), BAD_ENV)
def test_bad_env(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(parse(), environ)
    assert str(info.value).startswith(message), str(info.value)


BAD_TOML = [
    ("populaton = 3\n", "populaton: unknown setting (did you mean 'population'?)"),
    ("[network]\nlisten = '/ip4/1.2.3.4/tcp/1'\n", "network: unknown setting"),
    ('population = "64"\n', "population: expected an integer, got str '64'"),
    ("population = 64.0\n", "population: expected an integer"),
    ("population = true\n", "population: expected an integer"),
    ("heads_interval_s = true\n", "heads_interval_s: expected a number"),
    ('tasks = "xor"\n', "tasks: expected a list of strings"),
    ("tasks = [1, 2]\n", "tasks: expected a list of strings"),
    ("tasks = []\n", "tasks: needs at least 1 item"),
    ("data_dir = 5\n", "data_dir: expected a string"),
    ("clock_skew_ms = -1\n", "clock_skew_ms: must be >= 0"),
    ('listen = "/ip4/1.2.3.4/tcp/99999"\n', "listen: malformed multiaddr"),
    ('http = "[::1]"\n', "http: expected host:port"),
    ("heads_interval_s = inf\n", "heads_interval_s: must be a finite number"),
    ("population = 3\nmigrants = 4\n", "migrants: migrants 4 is more than population 3"),
]


@pytest.mark.parametrize(("text", "message"), BAD_TOML)
def test_bad_toml(tmp_path: Path, text: str, message: str) -> None:
    toml = write_toml(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(parse("--config", str(toml)), {})
    assert str(info.value).startswith(f"{toml}:{message}"), str(info.value)


def test_bad_toml_syntax_and_unreadable_files(tmp_path: Path) -> None:
    broken = write_toml(tmp_path, "population = = 3\n")
    with pytest.raises(ConfigError, match=r"node\.toml: not valid TOML"):
        load_config(parse("--config", str(broken)), {})
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"population = 3 # \xff\n")
    with pytest.raises(ConfigError, match="not valid"):
        load_config(parse("--config", str(binary)), {})
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(parse("--config", str(tmp_path)), {})


def test_toml_error_names_the_key_even_when_env_and_flags_are_fine(tmp_path: Path) -> None:
    toml = write_toml(tmp_path, "population = 1\n")
    with pytest.raises(ConfigError, match=r"node\.toml:population: must be >= 2"):
        load_config(parse("--config", str(toml), "--seed", "3"), {"QUDAG_POPULATION": "9"})


def test_direct_construction_is_checked_too() -> None:
    with pytest.raises(ConfigError, match=r"NodeConfig\.population: must be >= 2"):
        NodeConfig(population=1)
    with pytest.raises(ConfigError, match=r"NodeConfig\.bootstrap"):
        NodeConfig(bootstrap=("nope",))
    with pytest.raises(ConfigError, match=r"NodeConfig\.migrants"):
        NodeConfig(population=3, migrants=4)
    config = NodeConfig(data_dir="x", tasks=["a", "b"])  # type: ignore[arg-type]
    assert config.data_dir == Path("x") and config.tasks == ("a", "b")
    assert config.key == Path("x/node.key")
    with pytest.raises(AttributeError):
        config.population = 3  # type: ignore[misc]


def test_run_flags_have_help() -> None:
    parser = argparse.ArgumentParser(prog="qudag-node run")
    add_run_arguments(parser)
    text = parser.format_help()
    for flag in (
        "--config",
        "--data-dir",
        "--key",
        "--listen",
        "--bootstrap",
        "--task",
        "--http",
        "--publish-every",
        "--population",
        "--seed",
        "--generations",
    ):
        assert flag in text
    assert "QUDAG_POPULATION" in text
