"""Configuration validation and CLI parsing: no network, no processes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from cli.main import EXIT_USAGE, main
from node.addresses import parse_address, parse_addresses, split_host_port
from node.core.limits import Limits
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
    assert cfg.idle_heartbeat_ticks == 12  # 120 ms: the longest whole tick under half the election minimum


@pytest.mark.parametrize(
    ("overrides", "idle_ticks"),
    [
        ({"heartbeat_ms": 30, "election_ms_min": 150, "election_ms_max": 300}, 7),  # 75 is not under half
        ({"heartbeat_ms": 50, "election_ms_min": 200, "election_ms_max": 400}, 9),  # 100 is not under half
        ({"heartbeat_ms": 50, "election_ms_min": 1000, "election_ms_max": 2000}, 12),  # at most 2.5 beats
        ({"heartbeat_ms": 100, "election_ms_min": 300, "election_ms_max": 600}, 14),
        ({"heartbeat_ms": 10, "election_ms_min": 30, "election_ms_max": 60}, 1),  # no tick between: not thinned
        ({"idle_heartbeat_ms": 100}, 10),
        ({"idle_heartbeat_ms": 120}, 12),
        ({"idle_heartbeat_ms": 50}, 5),  # equal to heartbeat-ms: never thinned
        ({"heartbeat_ms": 30, "election_ms_min": 150, "election_ms_max": 300, "idle_heartbeat_ms": 74}, 7),
    ],
)
def test_idle_heartbeats_are_as_thin_as_the_quorum_check_allows_unless_asked_and_counted_in_ticks(
    overrides: dict[str, object], idle_ticks: int,
) -> None:
    cfg = config(**overrides)
    cfg.validate()
    assert cfg.idle_heartbeat_ticks == idle_ticks


@pytest.mark.parametrize("listen", ["0.0.0.0:7001", "[::]:7001"])
def test_a_wildcard_listen_needs_an_advertised_address(listen: str) -> None:
    """Replies name the leader's address; "0.0.0.0" would send clients to their own host."""
    with pytest.raises(ConfigError, match="give --advertise"):
        config(listen=listen, insecure=True).validate()
    config(listen=listen, insecure=True, advertise="10.0.0.1:7001").validate()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"election_ms_min": 120, "heartbeat_ms": 50}, "election-ms minimum (120) must be at least 3 x heartbeat-ms (50)"),
        ({"election_ms_min": 300, "election_ms_max": 200}, "election-ms maximum (200) must be at least its minimum (300)"),
        ({"heartbeat_ms": 5}, "heartbeat-ms (5) must be at least tick-ms (10)"),
        ({"idle_heartbeat_ms": 40}, "idle-heartbeat-ms (40) must be at least heartbeat-ms (50)"),
        ({"idle_heartbeat_ms": 130}, "idle-heartbeat-ms (130) must be at least heartbeat-ms (50) and under half "
                                     "the election-ms minimum (250)"),
        ({"node_id": ""}, "id: 1 to 64 printable characters without spaces, '/' or '\\' (it names the node's "
                          "state directory); got ''"),
        ({"node_id": "../n1"}, "id: 1 to 64 printable characters"),
        ({"node_id": "a\\b"}, "id: 1 to 64 printable characters"),
        ({"node_id": "n 1"}, "id: 1 to 64 printable characters"),
        ({"node_id": "n\u00a01"}, "id: 1 to 64 printable characters"),
        ({"node_id": "n\x1b1"}, "id: 1 to 64 printable characters"),
        ({"node_id": "n" * 65}, "id: 1 to 64 printable characters"),
        ({"limits": Limits(max_message_bytes=65535)},
         "max-message-bytes: a node needs at least 65536 (a job's record and a snapshot chunk must fit), got 65535"),
        ({"peers": ("127.0.0.1:5001",)}, "peers: lists this node's own address"),
        ({"peers": ("h:1", "h:1")}, "peers: duplicate address"),
    ],
)
def test_validation_names_both_values(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        config(**overrides).validate()


def test_ids_and_message_sizes_at_their_bounds_are_taken() -> None:
    for node_id in ("n1", "A.b_c-9", "n" * 64, "7", "node@rack:2", "nœud-1", ".n1", ".."):
        config(node_id=node_id).validate()
    config(limits=Limits(max_message_bytes=65536)).validate()


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
        (["start", "--id", "n1", "--listen", "h:1", "--peers", "h:2", "--idle-heartbeat-ms", "200"], "idle-heartbeat-ms (200)"),
        (["start", "--id", "n1", "--listen", "h:1", "--max-message-bytes", "4096"], "max-message-bytes: a node needs"),
        (["start", "--id", "n1/x", "--listen", "h:1"], "id: 1 to 64 printable characters"),
        (["frobnicate"], "invalid choice"),
        ([], "required"),
    ],
)
def test_usage_errors_exit_2_with_one_message(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = main(argv)
    except SystemExit as exit_info:  # argparse's own errors
        code = exit_info.code  # type: ignore[assignment]
    assert code == EXIT_USAGE
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


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("distnode ")


def test_only_version_looks_the_version_up() -> None:
    """Every command (and every daemon) starts without importing importlib.metadata:
    ~15 ms per process, paid 16 times over when a 16-node cluster starts."""
    code = ("import sys\nfrom cli.main import main\nimport node.server.daemon\n"
            "try:\n    main(['status', '--help'])\nexcept SystemExit:\n    pass\n"
            "print('importlib.metadata' in sys.modules)")
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert found.stdout.splitlines()[-1] == "False"


@pytest.mark.parametrize("command", ["start", "submit", "status", "local", "certs"])
def test_every_flag_says_its_default_or_that_it_is_required(command: str) -> None:
    """--help tells a newcomer what each flag does when left out."""
    import argparse

    from cli.parser import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    for action in sub._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction) or action.required:
            continue
        if action.nargs == 0:  # a switch: off unless given
            assert action.help, action.option_strings
            continue
        assert action.help and ("default" in action.help or "required" in action.help), action.option_strings


def test_a_one_node_cluster_needs_no_peers(tmp_path: Path) -> None:
    from cli.commands import config_from_args
    from cli.parser import build_parser

    args = build_parser().parse_args(["start", "--id", "n1", "--listen", "127.0.0.1:5001", "--data-dir", str(tmp_path)])
    assert config_from_args(args).peers == ()


def test_one_election_number_means_n_to_2n(tmp_path: Path) -> None:
    from cli.commands import config_from_args
    from cli.parser import build_parser

    args = build_parser().parse_args(["start", "--id", "n1", "--listen", "127.0.0.1:5001", "--election-ms", "300",
                                      "--data-dir", str(tmp_path)])
    config = config_from_args(args)
    assert (config.election_ms_min, config.election_ms_max) == (300, 600)


def test_histogram_without_bins_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["submit", "--cluster", "127.0.0.1:1", "--op", "histogram", "--source", "range:n=9"]) == EXIT_USAGE
    assert "histogram needs --bins N and --range LO:HI" in capsys.readouterr().err


def test_the_cluster_can_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from cli.parser import build_parser

    monkeypatch.setenv("DISTNODE_CLUSTER", "127.0.0.1:7001,127.0.0.1:7002")
    args = build_parser().parse_args(["status"])
    assert args.cluster == "127.0.0.1:7001,127.0.0.1:7002"
    assert build_parser().parse_args(["status", "--cluster", "h:1"]).cluster == "h:1"
    monkeypatch.delenv("DISTNODE_CLUSTER")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["status"])


@pytest.mark.parametrize(("nodes", "said"), [(["n1", "n2"], "on n1,n2 in"), ([], "on (nodes not kept) in")])
def test_an_answer_on_a_terminal_names_its_nodes_or_says_they_were_not_kept(
    nodes: list[str], said: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A detached job's record may leave its list of nodes out (too many for a message)."""
    import numpy as np

    from cli.render import print_answer
    from node.client.answer import Answer

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    print_answer(Answer("j", "sum", np.array(6.0), 2, nodes, 1.5, "n1", 3, 0))
    out, err = capsys.readouterr()
    assert out == "6.0\n"
    assert f"sum: 2 shard(s) {said} 1.5 ms (leader n1, term 3, retries 0)" in err
