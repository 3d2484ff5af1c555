"""Finding and preparing a `tritonserver` binary, and the command line that starts it.

Search order: an explicit path, `PATH`, `/opt/tritonserver/bin` (NGC images), then the
`nvidia-pytriton` wheel, whose server needs a writable copy with the Python backend stub of the
running interpreter beside it.
"""
from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

NGC_BIN = Path("/opt/tritonserver/bin/tritonserver")
# Triton's administrative protocols: loading models (the Python backend runs any model.py), shared
# memory registration, and trace/logging settings (which name files to write). With
# `--expose-triton` they need a key in a header; inference, health, metadata and model config
# stay open for direct gRPC/HTTP clients, and the frontend uses only those.
ADMIN_PROTOCOLS = ("model-repository", "shared-memory", "statistics", "trace", "logging")
ADMIN_HEADER = "admin-key"
GRPC_ADMIN_METADATA = f"triton-grpc-protocol-{ADMIN_HEADER}"   # Triton prefixes gRPC header names


class TritonNotFound(RuntimeError):
    pass


@dataclass
class TritonInstall:
    binary: Path
    backend_dir: Path | None = None              # None: the server's built-in default
    env: dict[str, str] = field(default_factory=dict)  # extra environment (library paths)
    source: str = ""


def _pytriton_install(work_dir: Path) -> TritonInstall | None:
    try:
        import pytriton  # noqa: F401  (only to locate the wheel)
    except ImportError:
        return None
    pkg = Path(pytriton.__file__).resolve().parent
    wheel_server = pkg / "tritonserver"
    libs = pkg.parent / "nvidia_pytriton.libs"
    if not (wheel_server / "bin" / "tritonserver").exists():
        return None
    target = work_dir.resolve() / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = wheel_server / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise TritonNotFound(f"nvidia-pytriton has no Python backend stub for Python {version}")
    marker = target / ".prepared"
    if not marker.exists() or marker.read_text() != str(wheel_server):
        # The wheel's folder is read-only in spirit (site-packages); the stub must sit inside
        # backends/python, so we work on a private copy.
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(wheel_server, target, ignore=shutil.ignore_patterns("python_backend_stubs"))
        shutil.copy2(stub, target / "backends" / "python" / "triton_python_backend_stub")
        marker.write_text(str(wheel_server))
    # The stub links `libpython3.X.so.1.0`; it must load the running interpreter's copy, not an
    # older system one, or extension modules of this Python fail with undefined symbols.
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    pylib = libdir if libdir and (Path(libdir) / f"libpython{version}.so.1.0").exists() else ""
    ld = os.pathsep.join(p for p in (pylib, str(libs), os.environ.get("LD_LIBRARY_PATH", "")) if p)
    return TritonInstall(binary=target / "bin" / "tritonserver", backend_dir=target / "backends",
                         env={"LD_LIBRARY_PATH": ld}, source="nvidia-pytriton wheel")


def find_tritonserver(explicit: str | None, work_dir: Path) -> TritonInstall:
    if explicit:
        path = Path(explicit)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise TritonNotFound(f"--tritonserver {explicit}: not an executable file")
        return TritonInstall(binary=path.resolve(), source="--tritonserver")
    on_path = shutil.which("tritonserver")
    if on_path:
        return TritonInstall(binary=Path(on_path), source="PATH")
    if NGC_BIN.exists():
        return TritonInstall(binary=NGC_BIN, source=str(NGC_BIN.parent))
    install = _pytriton_install(work_dir)
    if install is None:
        raise TritonNotFound(
            "tritonserver not found: pass --tritonserver, put it on PATH, use an NGC "
            "tritonserver image (/opt/tritonserver/bin), or install the CPU extra "
            "(pip install '.[cpu]', which brings nvidia-pytriton)")
    return install


def restricted_args(key: str, header: str = ADMIN_HEADER, protocols: tuple[str, ...] = ADMIN_PROTOCOLS) -> list[str]:
    """tritonserver 2.51 flags that make `protocols` answer only requests with `header: key`.

    Syntax (`tritonserver --help`): `--grpc-restricted-protocol=<p1>,<p2>,...:<header>=<value>`,
    and the same for `--http-restricted-api`.
    """
    if not key or any(c in key for c in ",:= \t\n"):
        raise ValueError("the Triton admin key must be non-empty and free of ',', ':', '=' and whitespace")
    if not header or any(c in header for c in ",:= \t\n") or header != header.lower():
        raise ValueError("the Triton admin header must be a lower-case name without ',', ':' or '='")
    spec = f"{','.join(protocols)}:{header}={key}"
    return [f"--grpc-restricted-protocol={spec}", f"--http-restricted-api={spec}"]


def server_command(install: TritonInstall, model_repository: Path, *, grpc_port: int, http_port: int,
                   metrics_port: int, bind_address: str = "127.0.0.1", log_verbose: int = 0,
                   extra_args: list[str] | None = None) -> list[str]:
    cmd = [str(install.binary), f"--model-repository={model_repository}",
           f"--grpc-port={grpc_port}", f"--http-port={http_port}", f"--metrics-port={metrics_port}",
           f"--grpc-address={bind_address}", f"--http-address={bind_address}",
           f"--metrics-address={bind_address}", "--disable-auto-complete-config",
           f"--log-verbose={log_verbose}", "--exit-on-error=true"]
    if install.backend_dir is not None:
        cmd.append(f"--backend-directory={install.backend_dir}")
    return cmd + list(extra_args or [])
