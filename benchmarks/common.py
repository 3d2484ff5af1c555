"""Shared benchmark plumbing: machine description, result files, plots, the stack, process CPU.

Every benchmark writes `benchmarks/results/<name>/<name>.json` (with `machine` from
`machine_info()`) and PNG plots next to it. Paths in results are relative to the repository.
"""
from __future__ import annotations

import atexit
import datetime as _dt
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Optional

from tests.served_stack import ServedStack, start_served_stack

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_MODEL_DIR = "var/models/llama2-tiny"

_T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[bench {time.monotonic() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def rel(path: Path | str) -> str:
    """A path relative to the repository when it lies inside it (results never hold this machine's paths)."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(ROOT))
    except ValueError:
        return p.name if p.is_absolute() else str(p)


# --------------------------------------------------------------------------- machine description

def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.platform()


def _version(dist: str) -> Optional[str]:
    from importlib import metadata
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> Optional[str]:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    except Exception:
        return None


def machine_info() -> dict[str, Any]:
    import psutil
    # Result files a previous run left modified do not make the measured code "dirty".
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)benchmarks/results")
    return {
        "cpu_model": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": _os_name(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "tritonclient": _version("tritonclient"),
        "nvidia_pytriton": _version("nvidia-pytriton"),
        "aiohttp": _version("aiohttp"),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


# --------------------------------------------------------------------------- results

def results_dir(name: str) -> Path:
    d = RESULTS / name
    d.mkdir(parents=True, exist_ok=True)
    return d


def write_json(name: str, data: dict[str, Any], filename: Optional[str] = None) -> Path:
    path = results_dir(name) / (filename or f"{Path(name).name}.json")
    path.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
    log(f"wrote {rel(path)}")
    return path


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return rel(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "__dict__"):
        return vars(o)
    return str(o)


def percentiles(values: Iterable[float], ps: Iterable[int] = (50, 90, 99)) -> dict[str, Optional[float]]:
    """Nearest-rank-interpolated percentiles plus mean; None when there are no values."""
    xs = sorted(v for v in values if v is not None and not math.isnan(v))
    out: dict[str, Optional[float]] = {}
    if not xs:
        out["mean"] = None
        for p in ps:
            out[f"p{p}"] = None
        return out
    out["mean"] = sum(xs) / len(xs)
    for p in ps:
        k = (len(xs) - 1) * p / 100
        lo, hi = math.floor(k), math.ceil(k)
        out[f"p{p}"] = xs[lo] + (xs[hi] - xs[lo]) * (k - lo)
    return out


def plt():
    """matplotlib.pyplot with the file-only backend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot
    return pyplot


def style_grouped_bars(axes, titles, ylabels, num_groups: int, num_series: int, width: float,
                       group_labels) -> None:
    """Titles, labels, centred group ticks, legend and grid for side-by-side grouped bar charts."""
    for ax, title, ylabel in zip(axes, titles, ylabels):
        ax.set_xticks([j + width * (num_series - 1) / 2 for j in range(num_groups)])
        ax.set_xticklabels(group_labels)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, axis="y")


def save_fig(fig, name: str, filename: str) -> Path:
    path = results_dir(name) / filename
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt().close(fig)
    log(f"wrote {rel(path)}")
    return path


def bar_chart(name: str, filename: str, title: str, labels: list[str], values: list[float], ylabel: str,
              annotate: str = "{:.0f}") -> Path:
    pyplot = plt()
    fig, ax = pyplot.subplots(figsize=(max(5, 1.2 * len(labels) + 2), 4))
    bars = ax.bar(labels, [v or 0 for v in values], color="#4c72b0")
    for b, v in zip(bars, values):
        if v is not None:
            ax.annotate(annotate.format(v), (b.get_x() + b.get_width() / 2, b.get_height()),
                        ha="center", va="bottom", fontsize=8)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.tick_params(axis="x", labelrotation=20)
    return save_fig(fig, name, filename)


# --------------------------------------------------------------------------- the stack

def start_stack(model_dir: str = DEFAULT_MODEL_DIR, *, decoder_kind: str = "llama", max_batch_size: int = 64,
                max_queue_size: int = 1024, extra: tuple[str, ...] = (), work_name: str = "stack",
                timeout: float = 300.0) -> ServedStack:
    """Starts the launcher with its own work dir under var/bench/ and waits until it serves."""
    if not (ROOT / model_dir / "config.json").is_file() and not (Path(model_dir) / "config.json").is_file():
        raise SystemExit(f"model {model_dir} not found: run `make model` first")
    work = ROOT / "var" / "bench" / work_name
    work.mkdir(parents=True, exist_ok=True)
    log(f"starting the stack (decoder {decoder_kind}, max_batch_size {max_batch_size}); "
        f"log: {rel(work / 'stack.log')}")
    stack = start_served_stack(model_dir, work, "--decoder-kind", decoder_kind, "--max-batch-size",
                               str(max_batch_size), "--max-queue-size", str(max_queue_size), *extra,
                               timeout=timeout, cwd=ROOT)
    atexit.register(stack.stop)   # also when the benchmark dies of an exception
    log(f"stack ready: frontend :{stack.port}, Triton gRPC :{stack.grpc_port}")
    return stack


# --------------------------------------------------------------------------- CPU accounting

class CpuMeter:
    """CPU seconds (user + system, children excluded) used by named groups of processes.

    `groups` maps a label to a callable returning the group's current psutil.Process list; the
    lists are re-read at `stop()` so that processes seen at start are measured at both ends.
    """

    def __init__(self, groups: dict[str, Any]):
        self.groups = groups
        self._start: dict[str, dict[int, float]] = {}
        self._procs: dict[str, list] = {}
        self.wall = 0.0
        self._t0 = 0.0

    @staticmethod
    def _cpu(p) -> Optional[float]:
        try:
            t = p.cpu_times()
            return t.user + t.system
        except Exception:
            return None

    def start(self) -> "CpuMeter":
        for label, get in self.groups.items():
            procs = list(get())
            self._procs[label] = procs
            self._start[label] = {p.pid: c for p in procs if (c := self._cpu(p)) is not None}
        self._t0 = time.monotonic()
        return self

    def stop(self) -> dict[str, dict[str, float]]:
        self.wall = time.monotonic() - self._t0
        out = {}
        for label, procs in self._procs.items():
            total = 0.0
            for p in procs:
                c = self._cpu(p)
                if c is not None and p.pid in self._start[label]:
                    total += c - self._start[label][p.pid]
            out[label] = {"cpu_s": round(total, 3), "cores": round(total / self.wall, 3) if self.wall else None,
                          "processes": len(procs)}
        return out


def self_process():
    import psutil
    return psutil.Process(os.getpid())


def add_openai_load_args(ap, *, model_help: str) -> None:
    """The endpoint and load-shape options both OpenAI benchmarks take (openai_load, openai_aiperf)."""
    ap.add_argument("--base-url", help="an OpenAI endpoint, e.g. http://127.0.0.1:8080/v1 "
                    "(default: start our stack on free ports for this run)")
    ap.add_argument("--model", help=model_help)
    ap.add_argument("--model-dir", default=DEFAULT_MODEL_DIR, help="tokenizer for the prompts (and the stack)")
    ap.add_argument("--concurrency", default="1,4,16", help="comma list: closed-loop sweep")
    ap.add_argument("--rate", default=None, help="comma list of request rates (req/s, Poisson); replaces the "
                    "closed-loop sweep, --max-concurrency caps requests in flight")
    ap.add_argument("--max-concurrency", type=int, default=None)
    ap.add_argument("--num-requests", type=int, default=0,
                    help="requests per point (default: max(16, 8 x concurrency), or 10 s worth at --rate)")
    ap.add_argument("--prompt-len", default="64:256", help="tokens: N or LO:HI (uniform)")
