"""A real PostgreSQL server for the tests: Debian's `postgresql` package, a fresh cluster (initdb)
in a temporary directory, listening on a free loopback port with trust authentication, stopped
and removed afterwards. As root (CI) the server runs as the package's `postgres` user, since
PostgreSQL refuses to run as root."""
from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from llama_triton.serve.common import free_port

PACKAGE = "postgresql"


class PostgresMissing(RuntimeError):
    pass


def find_bin_dir() -> Path:
    """The newest /usr/lib/postgresql/<version>/bin with initdb and postgres."""
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(Path(d).parent.name.split(".")[0]))
    for d in reversed(dirs):
        if (Path(d) / "initdb").exists() and (Path(d) / "postgres").exists():
            return Path(d)
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    raise PostgresMissing(f"PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/initdb): install "
                          f"Debian's '{PACKAGE}' package (apt-get install -y {PACKAGE})")


@dataclass
class PostgresServer:
    proc: subprocess.Popen
    port: int
    data_dir: Path
    user: str = "llama_triton"
    database: str = "llama_triton"

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            # SIGINT is PostgreSQL's "fast" shutdown: open sessions are ended (SIGTERM, "smart",
            # waits for every client to disconnect first)
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.data_dir.parent, ignore_errors=True)


def _server_user() -> dict:
    """Popen arguments that run a command as the `postgres` user when we are root: the process is
    then PostgreSQL itself, so signals reach it (a wrapper such as runuser would not pass them on)."""
    if os.geteuid() != 0:
        return {}
    import pwd
    entry = pwd.getpwnam("postgres")
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": [],
            "env": {**os.environ, "HOME": entry.pw_dir, "USER": "postgres", "LOGNAME": "postgres"}}


def start_postgres(timeout: float = 60.0) -> PostgresServer:
    bin_dir = find_bin_dir()
    root = Path(tempfile.mkdtemp(prefix="llama-triton-pg-"))
    data = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        os.chmod(root, 0o700)
    port = free_port()
    log = root / "postgres.log"
    subprocess.run([str(bin_dir / "initdb"), "-D", str(data), "-U", "llama_triton", "-A", "trust", "-E", "UTF8",
                    "--no-sync"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=root,
                   **_server_user())
    with open(log, "wb") as log_file:
        proc = subprocess.Popen([str(bin_dir / "postgres"), "-D", str(data), "-p", str(port), "-h", "127.0.0.1",
                                 "-k", str(root), "-c", "fsync=off"], stdout=subprocess.DEVNULL, stderr=log_file,
                                cwd=root, **_server_user())
    server = PostgresServer(proc, port, data)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"postgres exited with {proc.returncode}: {log.read_text()[-2000:]}")
        ready = subprocess.run([str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if ready.returncode == 0:
            created = subprocess.run([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U",
                                      server.user, server.database], capture_output=True)
            if created.returncode != 0:
                server.stop()
                raise RuntimeError(f"createdb failed: {created.stderr.decode()[-2000:]}")
            return server
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"postgres not ready after {timeout:.0f} s: {log.read_text()[-2000:]}")
