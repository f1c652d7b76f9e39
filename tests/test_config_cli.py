"""Configuration validation and CLI parsing: no network, no processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.main import EXIT_USAGE, main
from node.addresses import parse_address, parse_addresses, split_host_port
from node.errors import ConfigError
from node.server.config import NodeConfig, parse_range_ms


def config(**overrides: object) -> NodeConfig:
    values: dict[str, object] = {
        "node_id": "n1", "listen": "127.0.0.1:5001", "peers": ("127.0.0.1:5002",),
        "data_dir": Path("unused"),
    }
    values.update(overrides)
    return NodeConfig(**values)  # type: ignore[arg-type]


def test_defaults_are_valid_and_convert_to_ticks() -> None:
    cfg = config()
    cfg.validate()
    assert cfg.heartbeat_ticks == 5
    assert cfg.election_ticks == (25, 50)
    assert cfg.failure_ms == cfg.election_ms_min


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"election_ms_min": 120, "heartbeat_ms": 50}, "election-ms minimum (120) must be at least 3 x heartbeat-ms (50)"),
        ({"election_ms_min": 300, "election_ms_max": 200}, "election-ms maximum (200) must be at least its minimum (300)"),
        ({"heartbeat_ms": 5}, "heartbeat-ms (5) must be at least tick-ms (10)"),
        ({"node_id": ""}, "id: must be non-empty"),
        ({"peers": ("127.0.0.1:5001",)}, "peers: lists this node's own address"),
        ({"peers": ("h:1", "h:1")}, "peers: duplicate address"),
    ],
)
def test_validation_names_both_values(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config(**overrides).validate()


def test_address_parsing() -> None:
    assert parse_address(" localhost:80 ") == "localhost:80"
    assert parse_addresses("a:1,,b:2", "peers") == ("a:1", "b:2")
    for bad in ("nohost", ":80", "h:port", "h:70000"):
        with pytest.raises(ConfigError):
            parse_address(bad, "listen")


def test_split_host_port() -> None:
    assert split_host_port("127.0.0.1:5000") == ("127.0.0.1", 5000)
    assert split_host_port("[::1]:5001") == ("::1", 5001)


def test_range_ms_parsing() -> None:
    assert parse_range_ms("150-300") == (150, 300)
    assert parse_range_ms("200") == (200, 400)
    with pytest.raises(ConfigError, match="election-ms: expected MIN-MAX"):
        parse_range_ms("fast")


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["submit", "--cluster", "h:1", "--op", "sums", "--source", "range:n=3"], "invalid choice: 'sums'"),
        (["submit", "--cluster", "h:1", "--op", "sum", "--source", "range:n=3", "--map", "cube"], "invalid choice: 'cube'"),
        (["submit", "--cluster", "h:1", "--op", "sum", "--source", "range:n=3", "--axis", "1"], "invalid choice: 1"),
        (["submit", "--cluster", "h:1", "--op", "histogram", "--source", "range:n=3", "--bins", "0"], "positive integer"),
        (["submit", "--cluster", "h:1", "--op", "histogram", "--source", "range:n=3", "--range", "5:1"], "LO < HI"),
        (["submit", "--cluster", "h:1", "--op", "sum", "--source", "range:n=3", "--timeout", "-1"], "positive"),
        (["submit", "--cluster", "h:1", "--op", "sum"], "--source"),
        (["start", "--id", "n1", "--listen", "nope", "--peers", ""], "listen: expected HOST:PORT"),
        (["start", "--id", "n1", "--listen", "h:1", "--peers", "h:2", "--heartbeat-ms", "100", "--election-ms", "200-400"], "election-ms minimum (200)"),
        (["frobnicate"], "invalid choice"),
        ([], "required"),
    ],
)
def test_usage_errors_exit_2_with_one_message(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert needle in err
    assert "Traceback" not in err


def test_submit_to_unreachable_cluster_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    from node.testing.ports import free_ports

    (port,) = free_ports(1)
    code = main(["submit", "--cluster", f"127.0.0.1:{port}", "--op", "sum", "--source", "range:n=3", "--timeout", "0.5"])
    assert code == 3
    err = capsys.readouterr().err
    assert "cluster unavailable" in err and "Traceback" not in err


def test_status_of_unreachable_cluster_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    from node.testing.ports import free_ports

    (port,) = free_ports(1)
    assert main(["status", "--cluster", f"127.0.0.1:{port}", "--timeout", "0.3"]) == 3
    assert "cluster unavailable" in capsys.readouterr().err


@pytest.mark.parametrize(("flags", "udp"), [([], True), (["--no-udp-heartbeats"], False)])
def test_udp_heartbeats_flag(flags: list[str], udp: bool, tmp_path: Path) -> None:
    from cli.commands import config_from_args
    from cli.parser import build_parser

    args = build_parser().parse_args(
        ["start", "--id", "n1", "--listen", "127.0.0.1:5001", "--peers", "127.0.0.1:5002",
         "--data-dir", str(tmp_path), *flags]
    )
    assert config_from_args(args).udp_heartbeats is udp
