"""Shepherd Model Gateway (SMG) started in this process with its keys read from files, never argv.

`smg launch --api-key K --tenant-api-key ID:K --control-plane-api-keys ID:NAME:admin:K` would put
every key on the router's command line, where `ps`, /proc/*/cmdline and a pod spec show it to
anyone who can look. This runs SMG's own Python launcher in-process instead (smg 1.13:
`smg.launch_router.parse_router_args` + `launch_router`, the same code `smg launch` runs): the
router's flags come from the command line, with no secret among them, and the keys from files:

  --admin-key-file FILE    the control plane's key(s) (/workers, /wasm, /v1/tokenizers,
                           /flush_cache, ...): lines `ID:KEY`, or one bare KEY (id "admin"). Required:
                           an SMG without control-plane keys lets its data-plane key administer it.
  --worker-key-file FILE   the key SMG sends on its own calls to the replicas (model discovery); the
                           replicas accept it like a client key (docs/SCALE-OUT.md)
  --tenant-keys-file FILE  the clients' keys, as the frontend reads them (`ID:KEY` or a bare KEY per
                           line, plus $API_KEYS): each is an SMG tenant (`--tenant-api-key`), none is
                           an admin. Without client keys nor a worker key SMG's data plane is open,
                           as the replicas are.

SMG's `--host`/`--port` are the cluster's public address, which the front door in this process
takes (llama_triton/serve/router_front.py: stored responses by id, conversations and the operator
endpoints go to a replica, because SMG answers them from its own state; everything else to SMG);
SMG itself listens on 127.0.0.1 at `--smg-port` (0: a free port, logged), behind it.

Everything after `--` goes to SMG's argument parser unchanged. Keys are read once: SMG 1.13 cannot
reload them, so a changed key file needs a new router process (`llama-triton cluster` swaps it;
on Kubernetes a rolling restart of the router Deployment, docs/OPERATIONS.md). For a swap on the
same ports, `--wait-for-ports` does everything but binding (keys read, SMG loaded) and then waits
until the old router has let go of its ports: SMG keeps accepting for --drain-settle-secs after a
SIGTERM, and holds its metrics port until it exits, so the new one cannot bind any earlier.

Only the standard library, smg, frontend/tenancy/ and router_front.py (both standard library only) are
imported, so this runs in SMG's own image with our code on PYTHONPATH (deploy/base/router.yaml).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Optional

from frontend.tenancy.tenants import KEY_ID, KeysInvalid, parse_keys


class RouterKeysError(RuntimeError):
    pass


def read_secret(path: str, what: str) -> str:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise RouterKeysError(f"{what} {path}: {e.strerror}") from None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    if len(lines) != 1 or any(c.isspace() for c in lines[0]):
        raise RouterKeysError(f"{what} {path}: expected one key on one line")
    return lines[0]


def admin_keys(path: str) -> list[tuple[str, str, str, str]]:
    """(id, name, key, role) entries as smg's RouterArgs holds control-plane keys."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise RouterKeysError(f"admin key file {path}: {e.strerror}") from None
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key_id, sep, key = line.partition(":")
        if not sep:
            key_id, key = "admin", line
        if not KEY_ID.match(key_id) or not key or any(c.isspace() for c in key):
            raise RouterKeysError(f"admin key file {path} line {n}: expected ID:KEY (ID: A-Z a-z 0-9 _ . -)")
        out.append((key_id, key_id, key, "admin"))
    if not out:
        raise RouterKeysError(f"admin key file {path} holds no key")
    return out


def tenant_keys(path: Optional[str]) -> list[tuple[str, str]]:
    """(tenant id, key) pairs: the frontend's key ids, so SMG's tenants are the replicas' key ids."""
    text = None
    if path:
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise RouterKeysError(f"tenant keys file {path}: {e.strerror}") from None
    try:
        keys = parse_keys(os.environ.get("API_KEYS"), text)
    except KeysInvalid as e:
        raise RouterKeysError(str(e)) from None
    return sorted((key_id, key) for key, key_id in keys.items())


def parse(argv: list[str]):
    """(our options, smg's RouterArgs with the keys from files)."""
    p = argparse.ArgumentParser(prog="python -m llama_triton.serve.router_launch", description=__doc__.splitlines()[0])
    p.add_argument("--admin-key-file", required=True)
    p.add_argument("--worker-key-file", default=None)
    p.add_argument("--tenant-keys-file", default=None)
    p.add_argument("--wait-for-ports", action="store_true",
                   help="bind only once the router's ports are free (a swap: the old router is draining)")
    p.add_argument("--smg-port", type=int, default=0,
                   help="SMG's own port on 127.0.0.1, behind the front door on --port (0: a free port)")
    p.add_argument("smg_args", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    smg_args = [x for x in a.smg_args if x != "--"] if a.smg_args[:1] == ["--"] else a.smg_args
    secret_flags = ("--api-key", "--tenant-api-key", "--control-plane-api-keys")
    for arg in smg_args:
        if arg.split("=", 1)[0] in secret_flags:
            raise RouterKeysError(f"{arg.split('=', 1)[0]} may not be given on the command line: use the key files")
    admins = admin_keys(a.admin_key_file)
    tenants = tenant_keys(a.tenant_keys_file)
    worker = read_secret(a.worker_key_file, "worker key file") if a.worker_key_file else None
    if tenants and worker is None:
        raise RouterKeysError("client keys are set but no --worker-key-file: SMG could not call the replicas")
    from smg.launch_router import parse_router_args
    args = parse_router_args(smg_args)
    args.api_key = worker
    # The replicas' keys file lists the worker key too (`router:KEY`, so that they accept SMG's own
    # calls); to SMG it is its --api-key, not a tenant (SMG refuses a key listed twice).
    args.tenant_api_keys = [(t, k) for t, k in tenants if k != worker]
    args.control_plane_api_keys = admins
    # The public address is the front door's; SMG moves behind it, on loopback.
    a.public = (args.host, args.port)
    a.admin_key = admins[0][2]
    args.host, args.port = "127.0.0.1", a.smg_port or free_loopback_port()
    return a, args


def free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)    # as SMG binds (TIME_WAIT is no obstacle)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def wait_for_ports(options, args, timeout: float = 600.0) -> None:
    ports = [options.public, (args.host, args.port)]
    if args.prometheus_port:
        ports.append((args.prometheus_host or "0.0.0.0", args.prometheus_port))
    deadline = time.monotonic() + timeout
    while not all(port_bindable(h, p) for h, p in ports):
        if time.monotonic() > deadline:
            raise RouterKeysError(f"the router's ports {ports} were not freed within {timeout:.0f} s")
        time.sleep(0.01)


def main(argv: Optional[list[str]] = None) -> int:
    try:
        options, args = parse(sys.argv[1:] if argv is None else argv)
    except RouterKeysError as e:
        print(f"router_launch: {e}", file=sys.stderr)
        return 2
    from smg.launch_router import launch_router
    if options.wait_for_ports:
        try:
            wait_for_ports(options, args)
        except RouterKeysError as e:
            print(f"router_launch: {e}", file=sys.stderr)
            return 2
    try:
        start_front(options, args)
    except OSError as e:
        print(f"router_launch: the front door cannot listen on {options.public[0]}:{options.public[1]}: {e}",
              file=sys.stderr)
        return 2
    print(f"router_launch: front door on {options.public[0]}:{options.public[1]}, SMG behind it on "
          f"{args.host}:{args.port}", file=sys.stderr, flush=True)
    # Blocks until SMG stops (SIGTERM: its own graceful shutdown, in-flight requests included,
    # which the front keeps relaying); the front's thread ends with the process.
    launch_router(args)
    return 0


def start_front(options, args) -> None:
    """The front door (router_front.py) on its own event loop thread; returns once it listens."""
    from llama_triton.serve.router_front import serve
    ready, failed = threading.Event(), []

    def run() -> None:
        try:
            asyncio.run(serve(*options.public, (args.host, args.port), options.admin_key, started=ready.set))
        except BaseException as e:      # noqa: BLE001 - reported to the main thread
            failed.append(e)
        if ready.is_set():
            # Serving stopped: a router without its public port serves nobody. Stop SMG too (its
            # own graceful shutdown), so that the supervisor (llama-triton cluster, the kubelet)
            # starts a whole new router.
            print(f"router_launch: the front door stopped ({failed[-1] if failed else 'no error'}); stopping SMG",
                  file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGTERM)
        ready.set()
    threading.Thread(target=run, name="router-front", daemon=True).start()
    ready.wait()
    if failed:
        raise failed[0] if isinstance(failed[0], OSError) else OSError(str(failed[0]))


if __name__ == "__main__":
    sys.exit(main())
