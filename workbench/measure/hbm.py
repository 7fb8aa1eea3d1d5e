"""HBM traffic, measured: Nsight Compute (`ncu`) reads the GPU's DRAM byte counters per kernel.

Why a profiler: the bytes a kernel moves to and from HBM are not visible from Python. The GPU
counts them (dram__bytes_read.sum / dram__bytes_write.sum); ncu replays each kernel to read the
counters. We run the workload in a subprocess under ncu, parse ncu's CSV, and sum per kernel
family (attention, matmul, norm, elementwise, other).

Things ncu does that a student should know when reading its numbers:
- it flushes caches before each kernel (`--cache-control all`): bytes are cold-cache bytes;
- it serializes kernels and replays each one several times: gpu__time_duration is a kernel's
  time alone, good for comparing kernels with each other, not for tok/s. We pass
  `--clock-control none` (ncu's default locks clocks to base): a shared GPU's clocks are not
  ours to change;
- DRAM counters see only traffic that reaches HBM: the part of an output still in L2 (50 MB
  on H100) when the kernel ends is written back later, outside the kernel's count;
- profiling is slow (each kernel is replayed several times): filter with an NVTX range
  (`nvtx_include="attention/"`, trailing slash = push/pop range) or a kernel-name regex.

When ncu is missing, counters are not permitted (ERR_NVGPUCTRPERM) or nothing was profiled, the
record says so (`available=False`, `reason=...`) and holds no numbers.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEFAULT_METRICS = ("dram__bytes_read.sum", "dram__bytes_write.sum", "gpu__time_duration.sum")
NCU_FALLBACK_DIRS = ["/usr/local/cuda/bin"]   # where CUDA puts ncu when it is not on PATH
WARM_L2_NOTES = ("ncu kept L2 between kernels (--cache-control none) and serialized them: a kernel's DRAM "
                 "bytes are what it missed in L2; kernel times alone")
NCU_NOTES = ("ncu flushes caches and serializes kernels: cold-cache bytes, kernel times alone; "
             "output still in L2 when a kernel ends is not in its DRAM writes")

# Units ncu prints -> factor to bytes or seconds. ncu 2025.3's CSV uses "byte" and "ns";
# other versions and --print-units auto scale them (Kbyte = 1000 bytes, usecond, ...).
_UNITS = {"byte": (1, "byte"), "kbyte": (1e3, "byte"), "mbyte": (1e6, "byte"),
          "gbyte": (1e9, "byte"), "tbyte": (1e12, "byte"), "kibyte": (2**10, "byte"),
          "mibyte": (2**20, "byte"), "gibyte": (2**30, "byte"),
          "nsecond": (1e-9, "second"), "usecond": (1e-6, "second"),
          "msecond": (1e-3, "second"), "second": (1, "second"),
          "ns": (1e-9, "second"), "us": (1e-6, "second"), "ms": (1e-3, "second"),
          "s": (1, "second")}

# Kernel families, first match wins. Attention comes first: flash-attn-4's CuTe kernels have
# "cutlass" in their names too. Softmax counts as attention (in an LLM that is where it runs).
FAMILIES = [
    ("attention", re.compile(r"flash|fmha|attn|attention|softmax|sdpa", re.I)),
    ("matmul", re.compile(r"gemm|gemv|cutlass|xmma|nvjet|cublas|matmul|wgmma", re.I)),
    ("norm", re.compile(r"norm", re.I)),
    ("elementwise", re.compile(r"elementwise|triton_poi|fill|copy|cat|index|gather|where", re.I)),
]


def short_kernel_name(name: str) -> str:
    """A name that fits a table: 'void at::native::foo<4, ...>(int, T)' -> 'at::native::foo'.
    torch's generic element-wise launchers get the op inside them appended:
    'at::elementwise_kernel[masked_fill_kernel]'."""
    name = re.sub(r"^void\s+", "", name.strip())
    name = name.replace("(anonymous namespace)::", "").replace("<unnamed>::", "")
    outer = re.split(r"[<(]", name, maxsplit=1)[0] or name
    if outer.endswith("elementwise_kernel"):
        inner = [w for w in re.findall(r"\w*(?:Functor|_kernel)\w*", name[len(outer):])
                 if not w.startswith("gpu_kernel")]
        if inner:
            outer += f"[{inner[-1]}]"
    return outer


def classify_kernel(name: str) -> str:
    """Family of a kernel: by its short name first (template arguments name functors and types
    that would mislead), then by the full name."""
    for text in (short_kernel_name(name), name):
        for family, pattern in FAMILIES:
            if pattern.search(text):
                return family
    return "other"


@dataclass
class KernelMetrics:
    """One profiled kernel launch. `metrics` are in base units: bytes and seconds."""

    id: int
    process_id: int
    kernel: str                      # the name as ncu printed it
    name: str                        # shortened for tables
    family: str
    block: str = ""
    grid: str = ""
    device: str = ""
    metrics: dict = field(default_factory=dict)
    units: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _number(text: str) -> float | None:
    text = text.strip().replace(",", "")             # ncu may print thousands separators
    try:
        return float(text)
    except ValueError:
        return None                                   # "n/a" and friends: not a measurement


def parse_ncu_csv(text: str) -> list[KernelMetrics]:
    """Parse `ncu --csv` (details page): one row per (kernel, metric), after any lines ncu or
    the application printed before the header. Pure: no ncu needed, so it is testable."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines)
                  if '"Kernel Name"' in line and '"Metric Name"' in line
                  and '"Metric Value"' in line), None)
    if start is None:
        return []
    reader = csv.reader(io.StringIO("\n".join(lines[start:])))
    header = next(reader)
    col = {name: i for i, name in enumerate(header)}
    kernels: dict[tuple[int, int], KernelMetrics] = {}
    for row in reader:
        if len(row) != len(header):                   # a stray non-CSV line: skip it
            continue
        get = lambda key: row[col[key]] if key in col else ""  # noqa: E731
        try:
            key = (int(get("Process ID") or 0), int(get("ID")))
        except ValueError:
            continue
        if key not in kernels:
            full = get("Kernel Name")
            kernels[key] = KernelMetrics(id=key[1], process_id=key[0], kernel=full,
                                         name=short_kernel_name(full), family=classify_kernel(full),
                                         block=get("Block Size"), grid=get("Grid Size"),
                                         device=get("Device"))
        value = _number(get("Metric Value"))
        if value is None:
            continue
        factor, unit = _UNITS.get(get("Metric Unit").strip().lower(), (1, get("Metric Unit")))
        kernels[key].metrics[get("Metric Name")] = value * factor
        kernels[key].units[get("Metric Name")] = unit
    return list(kernels.values())


@dataclass
class HbmRecord:
    """Measured DRAM traffic of a command's kernels (or why it could not be measured)."""

    available: bool
    reason: str = ""
    command: list = field(default_factory=list)
    nvtx_include: str | None = None
    kernel_regex: str | None = None
    kernels: list = field(default_factory=list)          # KernelMetrics
    totals: dict = field(default_factory=dict)           # metric -> sum over kernels
    by_family: dict = field(default_factory=dict)        # family -> {metric: sum, "kernels": n}
    dram_read_bytes: float | None = None
    dram_write_bytes: float | None = None
    gpu_time_s: float | None = None
    notes: str = NCU_NOTES
    workload: dict | None = None                         # measure_hbm_python: fn, kwargs, result
    modelled: bool = False

    @classmethod
    def from_kernels(cls, kernels: list[KernelMetrics], **kw) -> "HbmRecord":
        totals: dict = {}
        by_family: dict = {}
        for k in kernels:
            fam = by_family.setdefault(k.family, {"kernels": 0})
            fam["kernels"] += 1
            for metric, value in k.metrics.items():
                totals[metric] = totals.get(metric, 0.0) + value
                fam[metric] = fam.get(metric, 0.0) + value
        return cls(True, kernels=kernels, totals=totals, by_family=by_family,
                   dram_read_bytes=totals.get("dram__bytes_read.sum"),
                   dram_write_bytes=totals.get("dram__bytes_write.sum"),
                   gpu_time_s=totals.get("gpu__time_duration.sum"), **kw)

    @property
    def dram_bytes(self) -> float | None:
        if self.dram_read_bytes is None or self.dram_write_bytes is None:
            return None
        return self.dram_read_bytes + self.dram_write_bytes

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        if not self.available:
            return f"HBM traffic: unavailable ({self.reason})"
        parts = [f"{len(self.kernels)} kernels"]
        if self.dram_bytes is not None:
            parts.append(f"DRAM {self.dram_read_bytes / 1e6:,.1f} MB read + "
                         f"{self.dram_write_bytes / 1e6:,.1f} MB written")
        if self.gpu_time_s is not None:
            parts.append(f"{self.gpu_time_s * 1e3:.3f} ms GPU time")
        return "HBM traffic (measured by ncu): " + ", ".join(parts) + f" [{self.notes}]"


def ncu_status() -> tuple[str | None, str]:
    """(path to ncu, what we found). Looks at $WORKBENCH_NCU, PATH, then CUDA's bin folder."""
    candidates = [os.environ.get("WORKBENCH_NCU"), shutil.which("ncu")]
    candidates += [str(Path(d) / "ncu") for d in NCU_FALLBACK_DIRS]
    path = next((c for c in candidates if c and os.access(c, os.X_OK)), None)
    if path is None:
        return None, ("ncu: command not found (not on PATH, not in "
                      f"{', '.join(NCU_FALLBACK_DIRS) or 'any fallback folder'}); install Nsight "
                      "Compute (CUDA toolkit) or set WORKBENCH_NCU=/path/to/ncu")
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"{path} does not run ({e}); reinstall Nsight Compute or fix WORKBENCH_NCU"
    version = (out.stdout.strip().splitlines() or ["?"])[-1]
    return path, f"{path} ({version})"


def _unavailable(reason: str, **kw) -> HbmRecord:
    return HbmRecord(False, reason=reason, notes="", **kw)


def _tail(text: str, lines: int = 8) -> str:
    return " | ".join(line for line in text.strip().splitlines()[-lines:] if line.strip())


def diagnose_ncu_output(output: str, returncode: int, kernels: list) -> str | None:
    """Why a run gave no trustworthy numbers (None if it did)."""
    if "ERR_NVGPUCTRPERM" in output:
        return ("ncu: ERR_NVGPUCTRPERM, this user may not read the GPU performance counters; "
                "run as root, or load the nvidia driver with NVreg_RestrictProfilingToAdminUsers=0 "
                "(https://developer.nvidia.com/ERR_NVGPUCTRPERM)")
    if returncode != 0:
        return (f"ncu or the profiled program exited with code {returncode}; numbers of a failed "
                f"run are not reported. Output tail: {_tail(output)}")
    if not kernels:
        return ("ncu profiled no kernels; check that the workload runs CUDA kernels, that the NVTX "
                "range name matches (push/pop ranges end in '/', e.g. 'attention/') and that the "
                f"kernel regex matches. Output tail: {_tail(output)}")
    return None


def run_ncu(cmd: list[str], *, kernel_regex: str | None = None, nvtx_include: str | None = None,
            metrics=DEFAULT_METRICS, extra_args=(), timeout_s: float = 600,
            env: dict | None = None, cwd: str | None = None, warm_l2: bool = False) -> HbmRecord:
    """Run `cmd` under ncu and return its kernels' DRAM bytes and GPU time. warm_l2: ncu leaves L2
    as the kernel before left it (by default it flushes it before each kernel), so a kernel's DRAM
    bytes are what it missed in L2; with application replay, should the metrics need several
    passes, each reruns the whole command, so no pass finds the bytes the last one left in L2."""
    where = dict(nvtx_include=nvtx_include, kernel_regex=kernel_regex)
    path, status = ncu_status()
    if path is None:
        return _unavailable(status, command=list(cmd), **where)
    args = [path, "--csv", "--print-units", "base", "--metrics", ",".join(metrics),
            "--target-processes", "all", "--clock-control", "none"]
    if nvtx_include:
        args += ["--nvtx", "--nvtx-include", nvtx_include]
    if kernel_regex:
        args += ["-k", f"regex:{kernel_regex}"]
    if warm_l2:
        args += ["--cache-control", "none", "--replay-mode", "application"]
    args += [*extra_args, *cmd]
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s,
                              env=env, cwd=cwd)
    except subprocess.TimeoutExpired:
        return _unavailable(f"ncu ran past {timeout_s:.0f} s; profile fewer kernels (NVTX range or "
                            "kernel regex) or raise timeout_s", command=args, **where)
    except OSError as e:
        return _unavailable(f"could not start ncu ({e}); check {path}", command=args, **where)
    kernels = parse_ncu_csv(proc.stdout)
    problem = diagnose_ncu_output(proc.stdout + "\n" + proc.stderr, proc.returncode, kernels)
    if problem:
        return _unavailable(problem, command=args, **where)
    return HbmRecord.from_kernels(kernels, command=args, notes=WARM_L2_NOTES if warm_l2 else NCU_NOTES, **where)


def workload_address(fn) -> dict:
    """{"module", "name"} of a workload function: how the worker finds it again in a fresh process."""
    module, name = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not callable(fn) or not module or module == "__main__" or "." in name or "<" in name:
        raise ValueError(f"{fn!r}: pass a function defined at the top level of an importable module "
                         "(e.g. workbench.measure.workloads.attention_workload): ncu runs it in a fresh "
                         "process, which imports it by its module and name")
    return {"module": module, "name": name}


def measure_hbm_python(workload, args: dict | None = None, *,
                       nvtx_include: str | None = "attention/", kernel_regex: str | None = None,
                       metrics=DEFAULT_METRICS, python: str | None = None, extra_args=(),
                       timeout_s: float = 600, warm_l2: bool = False) -> HbmRecord:
    """Profile a workload function (e.g. workloads.attention_workload, imported) called with
    `args` as keyword arguments, in a fresh process under ncu. The function marks the part to
    measure with an NVTX range (default: 'attention')."""
    where = workload_address(workload)
    repo_root = str(Path(__file__).resolve().parents[2])      # so the child imports workbench
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo_root, env.get("PYTHONPATH")) if p)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        spec = {**where, "kwargs": args or {}, "out": str(out)}
        cmd = [python or sys.executable, "-m", "workbench.measure.hbm_worker", json.dumps(spec)]
        record = run_ncu(cmd, kernel_regex=kernel_regex, nvtx_include=nvtx_include,
                         metrics=metrics, extra_args=extra_args, timeout_s=timeout_s, env=env, warm_l2=warm_l2)
        result = json.loads(out.read_text()) if out.is_file() else None
    record.workload = {"fn": f"{where['module']}.{where['name']}", "kwargs": args or {}, "result": result}
    return record
