"""What each subcommand does once its arguments are parsed: build the config or
the client from the flags, call `node`, print the result (render.py)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cli.exits import EXIT_OK, UsageError
from cli.parser import CLUSTER_ENV
from cli.render import ProgressBar, print_answer, print_jobs, print_json, print_status
from node.addresses import parse_address, parse_addresses
from node.core.limits import Limits
from node.errors import CannotStart, ConfigError, SecurityError
from node.security import TlsFiles, load_token
from node.server.config import NodeConfig, default_data_dir, parse_range_ms

if TYPE_CHECKING:
    from node.testing.cluster import LocalCluster


def config_from_args(args: argparse.Namespace) -> NodeConfig:
    try:
        listen = parse_address(args.listen, "listen")
        peers = parse_addresses(args.peers, "peers")
        advertise = parse_address(args.advertise, "advertise") if args.advertise else ""
        http = parse_address(args.http, "http") if args.http else ""
        options: dict[str, Any] = {}
        for name in ("heartbeat_ms", "idle_heartbeat_ms"):
            if getattr(args, name) is not None:
                options[name] = getattr(args, name)
        if args.election_ms is not None:
            options["election_ms_min"], options["election_ms_max"] = parse_range_ms(args.election_ms)
        if args.tick_ms is not None:
            options["tick_ms"] = args.tick_ms
        if args.shard_elems is not None:
            options["shard_elems"] = args.shard_elems
        for name in ("keep_jobs", "keep_result_bytes"):
            if getattr(args, name) is not None:
                options[name] = getattr(args, name)
        if args.formats is not None:
            options["formats"] = tuple(kind.strip() for kind in args.formats.split(",") if kind.strip())
        tls = TlsFiles(args.tls_cert, args.tls_key, args.tls_ca)
        tls.validate_server()
        config = NodeConfig(
            node_id=args.id, listen=listen, peers=peers,
            data_dir=args.data_dir or default_data_dir(args.id, listen),
            data_root=args.data_root, advertise=advertise, parent_pid=args.parent_pid,
            tls=tls, token=load_token(args.token_file), insecure=args.insecure,
            limits=limits_from_args(args), udp_heartbeats=args.udp_heartbeats, local_socket=args.local_socket,
            reset_state=args.reset_state, log_format=args.log_format, http=http, **options,
        )
        config.validate()
    except (ConfigError, SecurityError) as exc:
        raise UsageError(str(exc)) from None
    return config


LIMIT_FLAGS = (
    "max_elements", "max_inline_bytes", "max_vector", "max_jobs",
    "max_jobs_per_client", "max_message_bytes", "job_timeout_s",
)


def limits_from_args(args: argparse.Namespace) -> Limits:
    given = {name: getattr(args, name) for name in LIMIT_FLAGS if getattr(args, name) is not None}
    return Limits(**given)


def client_security(args: argparse.Namespace) -> tuple[str | None, TlsFiles | None]:
    """Token and TLS files from a client command's flags (usage error if unreadable)."""
    try:
        token = load_token(args.token_file)
    except SecurityError as exc:
        raise UsageError(str(exc)) from None
    tls = TlsFiles(args.tls_cert, args.tls_key, args.tls_ca)
    try:
        tls.validate_client()
    except SecurityError as exc:
        raise UsageError(str(exc)) from None
    return token, (tls if tls.enabled else None)


def run_start(args: argparse.Namespace) -> int:
    from node.server.fdlimit import raise_open_files_limit
    from node.server.memory import tune_malloc

    tune_malloc()  # before any thread has made its own malloc arena
    raise_open_files_limit()  # cached memory maps hold a descriptor each
    config = config_from_args(args)
    from node.server.main import run

    return run(config)


async def run_submit(args: argparse.Namespace) -> int:
    if args.op == "histogram" and (args.bins is None or args.range is None):
        raise UsageError("histogram needs --bins N and --range LO:HI")
    if args.trace is not None:
        check_trace_file(args.trace, args.detach)
    token, tls = client_security(args)
    progress = ProgressBar() if sys.stderr.isatty() and not args.json else None
    from node.client.async_client import AsyncClient

    size = {"max_message_bytes": args.max_message_bytes} if args.max_message_bytes else {}
    async with AsyncClient(args.cluster, timeout=args.timeout, token=token, tls=tls, **size) as client:
        if args.detach:
            job = await client.enqueue(
                op=args.op, source=args.source, map=args.map, axis=args.axis, bins=args.bins,
                range=args.range, job_id=args.job_id,
            )
            if args.json:
                print_json({"job_id": job.job_id, "state": job.state})
            else:
                print(job.job_id, flush=True)
            return EXIT_OK
        try:
            answer = await client.submit(
                op=args.op, source=args.source, map=args.map, axis=args.axis,
                bins=args.bins, range=args.range, job_id=args.job_id,
                on_progress=progress.update if progress else None, trace=args.trace is not None,
            )
        finally:
            if progress is not None:
                progress.close()
        # Said before the client closes: closing waits (briefly) for the nodes to end its streams.
        if args.trace is not None:
            args.trace.write_text(json.dumps(answer.trace))
        if args.json:
            print_json(answer.as_dict())
        else:
            print_answer(answer)
    return EXIT_OK


def check_trace_file(path: Path, detach: bool) -> None:
    """--trace: refused before anything is submitted if it cannot be written."""
    if detach:
        raise UsageError("--trace: a detached job has no timeline to send back; submit it without --detach")
    check_writable("--trace", path)


def check_writable(flag: str, path: Path) -> None:
    """UsageError, naming `flag`, unless `path` is a file this process may write."""
    if path.is_dir():
        raise UsageError(f"{flag} {path}: is a directory")
    if not path.parent.is_dir():
        raise UsageError(f"{flag} {path}: directory {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UsageError(f"{flag} {path}: not writable")


async def run_journal(args: argparse.Namespace) -> int:
    """`result`, `jobs` and `cancel`: the job table, from any node."""
    token, tls = client_security(args)
    from node.client.async_client import AsyncClient

    async with AsyncClient(args.cluster, timeout=args.timeout, token=token, tls=tls) as client:
        if args.command == "result":
            answer = await client.result(args.job_id, wait=args.wait)
            print_json(answer.as_dict()) if args.json else print_answer(answer)
        elif args.command == "jobs":
            jobs = await client.jobs(state=args.state, limit=args.limit)
            print_json({"jobs": [job.as_dict() for job in jobs]}) if args.json else print_jobs(jobs)
        else:
            job = await client.cancel(args.job_id)
            print(f"{job.job_id} {job.state}", flush=True)
    return EXIT_OK


async def run_status(args: argparse.Namespace) -> int:
    token, tls = client_security(args)
    from node.client.async_client import AsyncClient

    async with AsyncClient(args.cluster, timeout=args.timeout, token=token, tls=tls) as client:
        view = await client.status(timeout=args.timeout)
    if args.json:
        print_json(view.as_dict())
    else:
        print_status(view)
    return EXIT_OK


def run_certs(args: argparse.Namespace) -> int:
    from node.testing.certs import make_certs

    hosts = [h.strip() for h in args.hosts.split(",") if h.strip()]
    if (Path(args.out) / "ca.pem").exists():  # a new CA would silently split nodes that trust the old one
        raise UsageError(f"out: {args.out} already holds a CA (ca.pem), which nodes may trust; "
                         "remove it first, or choose another directory")
    for path in make_certs(Path(args.out), args.nodes, hosts):
        print(path)
    return EXIT_OK


def run_local(args: argparse.Namespace) -> int:
    from node.testing.cluster import LocalCluster

    options = _local_timing(args)
    if args.base_port is not None and not 0 < args.base_port <= 65536 - 2 * args.nodes:
        raise UsageError(f"base-port: {args.nodes} nodes need ports {args.base_port} to "
                         f"{args.base_port + 2 * args.nodes - 1} (gRPC, then their pages), within 1-65535")
    try:
        token = load_token(args.token_file)
    except SecurityError as exc:
        raise UsageError(str(exc)) from None
    if args.cluster_file is not None:  # before any node starts, not once they all have
        check_writable("--cluster-file", args.cluster_file)
    for signum in STOP_SIGNALS:  # while it starts, each stops what started, as Ctrl-C does
        signal.signal(signum, _interrupt)
    with contextlib.ExitStack() as running:
        try:
            cluster = running.enter_context(LocalCluster(
                nodes=args.nodes, base_port=args.base_port, tls=args.tls, token=token,
                keep_logs=args.keep_logs, http=True, **options,
            ))
        except (RuntimeError, TimeoutError) as exc:  # a node exited, or never listened: its last words
            said = [line for line in str(exc).splitlines() if line.strip()]
            raise CannotStart(f"a node did not start: {said[-1] if said else exc}") from None
        # Set once the cluster runs (a Ctrl-C while it starts stops what started). The
        # handlers only flip a flag: taking a lock (Event.set) inside a signal handler can
        # deadlock against the main thread holding that same lock.
        stop: list[int] = []
        for signum in STOP_SIGNALS:
            signal.signal(signum, lambda signum, _frame: stop.append(signum))
        _announce(cluster, args.cluster_file, token is not None)
        reported: set[int] = set()
        while not stop:
            time.sleep(0.1)
            if not stop:  # a stop signal reaches the nodes too: their ends are no news then
                _say_exits(cluster, reported)
    return EXIT_OK


def _say_exits(cluster: LocalCluster, said: set[int]) -> None:
    """One line on stderr for each node that ended while the cluster runs (killed to watch a
    failover, or crashed): without it, `local` went on in silence with nodes gone."""
    for node_id, pid, code in cluster.exits():
        if pid in said:
            continue
        said.add(pid)
        if code < 0:
            try:
                how = f"killed by {signal.Signals(-code).name}"
            except ValueError:  # a real-time signal has no name
                how = f"killed by signal {-code}"
        else:
            last = [line for line in cluster.log(node_id).splitlines() if line.strip()][-1:]
            how = f"exit code {code}" + (f": {last[0][:300]}" if last else "")
        alive = sum(cluster.pid(other) is not None for other in cluster.ids)
        print(f"distnode local: {node_id} (pid {pid}) ended, {how}; {alive} of {len(cluster.ids)} nodes run",
              file=sys.stderr, flush=True)


#: What stops `distnode local` (and its cluster, and its work directory): Ctrl-C, kill, a
#: closed terminal. Without a handler, the last two would end it with no clean-up at all.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _local_timing(args: argparse.Namespace) -> dict[str, Any]:
    """`local`'s timing flags as LocalCluster takes them, checked as each node's `start`
    will check them, before any node is spawned (UsageError)."""
    options: dict[str, Any] = {}
    timing: dict[str, Any] = {}
    try:
        if args.heartbeat_ms is not None:
            options["heartbeat_ms"] = timing["heartbeat_ms"] = args.heartbeat_ms
        if args.idle_heartbeat_ms is not None:
            options["extra_args"] = ["--idle-heartbeat-ms", str(args.idle_heartbeat_ms)]
            timing["idle_heartbeat_ms"] = args.idle_heartbeat_ms
        if args.election_ms is not None:
            options["election_ms"] = parse_range_ms(args.election_ms)
            timing["election_ms_min"], timing["election_ms_max"] = options["election_ms"]
        NodeConfig(node_id="n1", listen="127.0.0.1:1", peers=(), data_dir=Path("."), **timing).validate()
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    return options


def _announce(cluster: LocalCluster, cluster_file: Path | None, token: bool) -> None:
    """What another shell needs to use the cluster: addresses, leader, logs, a first command."""
    addresses = ",".join(cluster.addresses)
    if cluster_file is not None:  # first: once anything is printed, the file is there
        cluster_file.write_text(addresses + "\n")
    for node_id in cluster.ids:
        print(f"{node_id} {cluster.address(node_id)}", flush=True)
    print(f"leader {cluster.leader()}", flush=True)
    print(f"logs in {cluster.workdir}", flush=True)
    for node_id, http in cluster.http_addresses.items():
        print(f"{node_id} page http://{http}/ metrics http://{http}/metrics", flush=True)
    if cluster_file is not None:
        print(f"addresses in {cluster_file}: export {CLUSTER_ENV}=$(cat {cluster_file})", flush=True)
    hint = f"distnode submit --cluster {addresses} --op sum --source range:n=1e6"
    if cluster.certs_dir is not None:
        c = cluster.certs_dir
        hint += f" --tls-ca {c}/ca.pem --tls-cert {c}/client.pem --tls-key {c}/client.key"
    if token:
        hint += " --token-file FILE"
    print(f"try: {hint}", flush=True)
    print("Ctrl-C stops the cluster.", flush=True)
