"""What TLS and the token cost on the small-job round trip, side by side.

    python scripts/security_cost.py [--jobs 300] [--rounds 5] [--json PATH]

Starts three 3-node clusters at once on 127.0.0.1 (plaintext; TLS + token;
mutual TLS + token), then one separate client process submits `sum` over
`range:n=1000` to each cluster's leader in turn, `--jobs` per cluster per
round, alternating clusters round by round so that machine noise lands on all
three alike. Prints p50/p99 per mode and the ratio to plaintext.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from node.client.blocking import Client
from node.security import TlsFiles
from node.testing.certs import make_certs
from node.testing.ports import free_ports

MODES = ("plain", "tls+token", "mtls+token")
TOKEN = "bench-token-0123456789abcdef"


def server_flags(mode: str, certs: Path, token_file: Path, node: str) -> list[str]:
    if mode == "plain":
        return []
    flags = ["--tls-cert", str(certs / f"{node}.pem"), "--tls-key", str(certs / f"{node}.key"),
             "--token-file", str(token_file)]
    if mode == "mtls+token":
        flags += ["--tls-ca", str(certs / "ca.pem")]
    return flags


def client_security(mode: str, certs: Path) -> tuple[str | None, TlsFiles | None]:
    if mode == "plain":
        return None, None
    if mode == "tls+token":
        return TOKEN, TlsFiles(ca=certs / "ca.pem")
    return TOKEN, TlsFiles(certs / "client.pem", certs / "client.key", certs / "ca.pem")


def start_cluster(mode: str, workdir: Path, certs: Path, token_file: Path) -> tuple[list[str], list[Any]]:
    ports = free_ports(3)
    addresses = [f"127.0.0.1:{p}" for p in ports]
    processes = []
    for i, address in enumerate(addresses):
        node = f"n{i + 1}"
        peers = ",".join(a for a in addresses if a != address)
        log = open(workdir / f"{mode}-{node}.log", "wb")  # noqa: SIM115 - closed with the process
        # Without --tls-ca a node verifies its peers against the default roots;
        # point those at our private CA (what a real deployment's public CA is).
        env = {**os.environ, "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH": str(certs / "ca.pem")}
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "cli", "start", "--id", node, "--listen", address, "--peers", peers,
             "--data-dir", str(workdir / mode / node), "--parent-pid", str(os.getpid()),
             *server_flags(mode, certs, token_file, node)],
            stdout=subprocess.DEVNULL, stderr=log, env=env,
        ))
    return addresses, processes


def client_main(spec_path: str) -> None:
    """The separate client process: measure every cluster, alternating rounds."""
    spec = json.loads(Path(spec_path).read_text())
    certs = Path(spec["certs"])
    clients = {}
    for mode in MODES:
        token, tls = client_security(mode, certs)
        client = Client(spec["clusters"][mode], token=token, tls=tls)
        client.wait_for_leader(timeout=30)
        for _ in range(50):  # warm-up: connections, leader discovery
            client.submit(op="sum", source="range:n=1000")
        clients[mode] = client
    samples: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(spec["rounds"]):
        for mode in MODES:
            for _ in range(spec["jobs"]):
                started = time.perf_counter()
                answer = clients[mode].submit(op="sum", source="range:n=1000")
                samples[mode].append((time.perf_counter() - started) * 1000)
                assert answer.result == 499500
    for client in clients.values():
        client.close()
    print(json.dumps(samples))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--client-spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client_spec:
        client_main(args.client_spec)
        return 0
    with tempfile.TemporaryDirectory(prefix="distnode-seccost-") as tmp:
        workdir = Path(tmp)
        certs = workdir / "certs"
        make_certs(certs, nodes=3)
        token_file = workdir / "token"
        token_file.write_text(TOKEN)
        clusters, processes = {}, []
        try:
            for mode in MODES:
                clusters[mode], procs = start_cluster(mode, workdir, certs, token_file)
                processes += procs
            spec = workdir / "spec.json"
            spec.write_text(json.dumps({"clusters": clusters, "certs": str(certs),
                                        "jobs": args.jobs, "rounds": args.rounds}))
            out = subprocess.run([sys.executable, __file__, "--client-spec", str(spec)],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"client process failed:\n{out.stderr}")
            samples = json.loads(out.stdout)
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(timeout=10)
    base = percentile(samples["plain"], 0.5)
    rows = {mode: {"p50_ms": percentile(s, 0.5), "p99_ms": percentile(s, 0.99), "n": len(s)}
            for mode, s in samples.items()}
    print("| mode | p50 ms | p99 ms | p50 ratio vs plain | jobs |")
    print("| --- | --- | --- | --- | --- |")
    for mode, row in rows.items():
        ratio = row["p50_ms"] / base
        print(f"| {mode} | {row['p50_ms']:.3f} | {row['p99_ms']:.3f} | {ratio:.2f} | {row['n']} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
