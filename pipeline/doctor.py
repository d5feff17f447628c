"""``inferpath doctor``: what this machine has, and which backends will therefore run.

Each probe is independent and never raises: a missing library or a GPU-less machine is a finding,
not an error. The report lists the GPU (from ``nvidia-smi``, else from cuda-python), whether TensorRT runs on it
(compute capability 7.5, Turing, or newer for TensorRT 10.5+ and 11), the GPU extra that fits its
driver (``gpu-cu13`` for r580+, ``gpu-cu12`` for r535+, installed from NVIDIA's index), TensorRT, the CUDA bindings
(cuda-python, pycuda), ONNX Runtime and its execution providers, which backends will run, and an
install hint for everything missing. :func:`collect` returns the structured data;
:func:`format_report` the text the CLI prints.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import platform
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.backends.cuda import NVIDIA_INDEX, pip_gpu_extra

GPU_EXTRA_HINT = f"{pip_gpu_extra('gpu-cu13')} (driver r580+) or 'inferpath[gpu-cu12]' (driver r535+)"

# The oldest driver each GPU extra runs on, newest first, as NVIDIA's TensorRT prerequisites state
# them: r580 (CUDA 13.0) for the CUDA 13 wheels, r535 (CUDA 12.2) for the CUDA 12 wheels, which
# resolve to TensorRT 11.x. (extra, oldest CUDA version the driver reports, oldest driver branch.)
GPU_EXTRAS = (("gpu-cu13", (13, 0), 580), ("gpu-cu12", (12, 2), 535))


@dataclass
class Check:
    """One finding: ``ok`` True/False, ``detail`` what was found, ``hint`` how to fix it."""

    name: str
    ok: bool
    detail: str
    hint: str = ""


@dataclass
class DoctorReport:
    checks: list[Check] = field(default_factory=list)
    gpus: list[dict[str, str]] = field(default_factory=list)
    runnable_backends: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def check(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def probe_gpus(run: Callable[..., Any] = subprocess.run) -> tuple[list[dict[str, str]], str]:
    """GPUs as ``nvidia-smi`` reports them, and a one-line status (``run`` is injectable for tests)."""
    if shutil.which("nvidia-smi") is None and run is subprocess.run:
        return [], "nvidia-smi not found (no NVIDIA driver installed, or not on PATH)"
    fields = "name,driver_version,memory.total,compute_cap"
    try:
        proc = run(
            ["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return [], f"nvidia-smi failed to run ({exc})"
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout or "").strip().splitlines()
        return [], f"nvidia-smi exited {proc.returncode}: {msg[0] if msg else 'no output'}"
    gpus = []
    for line in proc.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 4:
            gpus.append(dict(zip(("name", "driver", "memory", "compute_capability"), parts)))
    return gpus, f"{len(gpus)} GPU(s)" if gpus else "nvidia-smi lists no GPUs"


def gpu_extra_for_driver(driver: str) -> tuple[str | None, str]:
    """The GPU extra that fits ``driver`` and why: a driver version (``580.65.06``, from nvidia-smi)
    or the CUDA version the driver supports (``CUDA 13.0``, from cuda-python). None if too old."""
    cuda = re.match(r"\s*CUDA\s+(\d+)(?:\.(\d+))?", driver, re.IGNORECASE)
    drv = re.match(r"\s*(\d+)\.", driver)
    for extra, (cu_major, cu_minor), min_driver in GPU_EXTRAS:
        cuda_text = f"CUDA {cu_major}.{cu_minor}"
        if cuda and (int(cuda.group(1)), int(cuda.group(2) or 0)) >= (cu_major, cu_minor):
            return extra, f"the driver supports {cuda.group(0).strip()}; {extra} needs {cuda_text}"
        if drv and int(drv.group(1)) >= min_driver:
            return extra, f"driver {driver} >= r{min_driver}, which {extra}'s TensorRT needs"
    if not (cuda or drv):
        return None, f"driver version {driver!r} not understood"
    oldest = GPU_EXTRAS[-1]
    return None, (f"driver ({driver}) older than r{oldest[2]} / CUDA {oldest[1][0]}.{oldest[1][1]}; "
                  "update the NVIDIA driver")


def gpu_support(gpus: list[dict[str, str]], trt_version: str | None) -> Check:
    """Whether TensorRT (``trt_version``; None: what the GPU extras install) runs on every listed GPU,
    from each one's compute capability. One line for a GPU it cannot run on."""
    from pipeline.backends.tensorrt import gpu_support_problem, min_compute_capability

    need = min_compute_capability(trt_version)
    problems = []
    for g in gpus:
        m = re.match(r"\s*(\d+)\.(\d+)", g.get("compute_capability", ""))
        if not m:
            problems.append(f"{g['name']}: compute capability {g.get('compute_capability')!r} not understood")
            continue
        problem = gpu_support_problem(trt_version, g["name"], (int(m.group(1)), int(m.group(2))))
        if problem:
            problems.append(problem)
    if problems:
        return Check("gpu support", False, "; ".join(problems),
                     "TensorRT needs a Turing (sm 7.5) or newer NVIDIA GPU; ONNX Runtime on the CPU runs anywhere")
    which = f"TensorRT {trt_version}" if trt_version else "TensorRT 11"
    return Check("gpu support", True, f"compute capability >= {need[0]}.{need[1]}, which {which} needs")


def probe_gpus_cudart(rt: Any) -> tuple[list[dict[str, str]], str]:
    """GPUs as the CUDA runtime (cuda-python) reports them: for a machine without ``nvidia-smi``."""
    try:
        err, count = rt.cudaGetDeviceCount()
        if int(err) != 0:
            return [], f"CUDA error {err}"
        err, version = rt.cudaDriverGetVersion()
        driver = f"CUDA {int(version) // 1000}.{int(version) % 1000 // 10}" if int(err) == 0 else "?"
        gpus = []
        for i in range(int(count)):
            err, p = rt.cudaGetDeviceProperties(i)
            if int(err) != 0:
                continue
            name = p.name.split(b"\0", 1)[0].decode() if isinstance(p.name, bytes) else str(p.name)
            gpus.append({"name": name, "driver": driver, "memory": f"{int(p.totalGlobalMem) >> 20} MiB",
                         "compute_capability": f"{p.major}.{p.minor}"})
    except Exception as exc:  # libcudart or the driver missing
        return [], f"CUDA runtime unusable ({exc})"
    return gpus, f"{len(gpus)} GPU(s) (from cuda-python)" if gpus else "cuda-python sees no GPU"


def _version_of_module(name: str) -> str | None:
    try:
        return str(importlib.import_module(name).__version__)
    except Exception:
        return None


def _probe_tensorrt() -> Check:
    try:
        trt = importlib.import_module("tensorrt")
    except Exception as exc:  # ImportError, or a broken install raising OSError on a missing .so
        why = "not installed" if isinstance(exc, ImportError) else f"import failed ({exc})"
        return Check("tensorrt", False, why, f"{GPU_EXTRA_HINT} (TensorRT's libraries come from {NVIDIA_INDEX})")
    ver = str(getattr(trt, "__version__", "?"))
    major = ver.split(".")[0]
    note = {
        "10": "precision from ONNX (strongly typed) or FP16 builder flag",
        "11": "strongly typed only: precision comes from the ONNX",
    }.get(major, "untested major version")
    return Check(
        "tensorrt",
        major in ("10", "11"),
        f"{ver} ({note})",
        "" if major in ("10", "11") else "Inferpath supports TensorRT 10.x and 11.x",
    )


def _probe_cuda_python(rt: Any = None) -> tuple[Check, Any]:
    """The cuda-python check, and its runtime module (None when not importable)."""
    ver = _version("cuda-python") or _version("cuda-bindings")
    try:
        from pipeline.backends.cuda import import_cudart

        rt = rt if rt is not None else import_cudart()
    except Exception:
        return Check("cuda-python", False, "not installed", f"{GPU_EXTRA_HINT} (or pip install cuda-python)"), None
    try:
        err, count = rt.cudaGetDeviceCount()
        devices = int(count) if int(err) == 0 else 0
        detail = f"{ver or '?'}; {devices} CUDA device(s)" if int(err) == 0 else f"{ver or '?'}; CUDA error {err}"
    except Exception as exc:  # libcudart or the driver missing
        devices, detail = 0, f"{ver or '?'}; CUDA runtime unusable ({exc})"
    return Check("cuda-python", devices > 0, detail, "" if devices else "needs an NVIDIA GPU and driver"), rt


def _probe_pycuda() -> Check:
    ver = _version("pycuda")
    if ver is None:
        return Check(
            "pycuda",
            False,
            "not installed (optional; cuda-python is the default)",
            "pip install pycuda (only for backend.tensorrt.cuda_binding: pycuda)",
        )
    return Check("pycuda", True, ver)


def _probe_onnxruntime() -> tuple[Check, list[str]]:
    try:
        ort = importlib.import_module("onnxruntime")
    except Exception as exc:
        return Check("onnxruntime", False, f"not importable ({exc})", "pip install onnxruntime"), []
    providers = list(ort.get_available_providers())
    return Check("onnxruntime", True, f"{ort.__version__}; providers: {', '.join(providers)}"), providers


def collect(run: Callable[..., Any] = subprocess.run, cudart: Any = None) -> DoctorReport:
    """Probe everything; never raises. ``run`` (nvidia-smi) and ``cudart`` are injectable for tests."""
    report = DoctorReport()
    report.checks.append(Check("python", True, f"{platform.python_version()} on {platform.platform(terse=True)}"))
    cp, rt = _probe_cuda_python(cudart)
    gpus, gpu_status = probe_gpus(run)
    if not gpus and rt is not None:  # no nvidia-smi (e.g. a container without it): ask CUDA itself
        gpus, cuda_status = probe_gpus_cudart(rt)
        gpu_status = cuda_status if gpus else f"{gpu_status}; {cuda_status}"
    report.gpus = gpus
    gpu_detail = (
        "; ".join(f"{g['name']} (driver {g['driver']}, {g['memory']}, sm {g['compute_capability']})" for g in gpus)
        or gpu_status
    )
    report.checks.append(
        Check(
            "gpu", bool(gpus), gpu_detail, "" if gpus else "TensorRT needs an NVIDIA GPU with its driver (nvidia-smi)"
        )
    )
    extra = None
    trt = _probe_tensorrt()
    support = None
    if gpus:
        support = gpu_support(gpus, _version_of_module("tensorrt") if trt.ok else None)
        report.checks.append(support)
        extra, why = gpu_extra_for_driver(gpus[0]["driver"])
        report.checks.append(
            Check("gpu extra", extra is not None, f"inferpath[{extra}]: {why}" if extra else why,
                  "" if extra else "TensorRT 10/11 wheels need CUDA 12 (driver r535+) or CUDA 13 (driver r580+)")
        )
        if extra:
            report.notes.append(f"for this driver install the TensorRT wheels with: {pip_gpu_extra(extra)}")
    if extra:  # the install hints name the one extra that fits this driver
        for check in (trt, cp):
            if not check.ok and check.hint.startswith(GPU_EXTRA_HINT):
                check.hint = pip_gpu_extra(extra) + check.hint[len(GPU_EXTRA_HINT):]
    pc = _probe_pycuda()
    ort, providers = _probe_onnxruntime()
    report.checks += [trt, cp, pc, ort]
    for dist, hint in (("prometheus-client", "pip install prometheus-client (a core dependency: reinstall inferpath)"),
                       ("onnxconverter-common", "pip install 'inferpath[precision]' (inferpath convert --fp16)")):
        ver = _version(dist)
        report.checks.append(Check(dist, ver is not None, ver or "not installed", "" if ver else hint))
    for extra, dist, what in (("track", "trackers", "tracking: --track, tracking.enabled, inferpath track"),
                              ("cluster", "ray", "Ray workers: cluster.engine: ray")):
        ver = _version(dist)
        report.checks.append(Check(f"{extra} extra", ver is not None,
                                   f"{dist} {ver} ({what})" if ver else f"not installed ({what})",
                                   "" if ver else f"pip install 'inferpath[{extra}]'"))
    if ort.ok:
        report.runnable_backends.append("onnxruntime (CPU)")
        if "CUDAExecutionProvider" in providers:
            report.runnable_backends.append("onnxruntime (CUDA provider)")
        if "TensorrtExecutionProvider" in providers:
            report.notes.append("onnxruntime has the TensorRT provider; Inferpath's tensorrt backend is separate")
    if support is not None and not support.ok:
        report.notes.append(f"tensorrt backend will not run: {support.detail}")
    elif trt.ok and bool(gpus) and (cp.ok or pc.ok):
        binding = "cuda-python" if cp.ok else "pycuda (set backend.tensorrt.cuda_binding: pycuda)"
        report.runnable_backends.append(f"tensorrt (via {binding})")
    elif trt.ok or cp.ok or gpus:
        missing = [c.name for c in (trt,) if not c.ok] + ([] if gpus else ["gpu"])
        if not (cp.ok or pc.ok):
            missing.append("a CUDA binding (cuda-python or pycuda)")
        report.notes.append(f"tensorrt backend will not run: missing {', '.join(missing)}")
    return report


def format_report(report: DoctorReport) -> str:
    """The human-readable report: one line per check, then the verdict and hints."""
    from pipeline.tables import render_table  # here: the doctor still reports on a broken install

    lines = ["Inferpath doctor", ""]
    checks = render_table(None, [("ok" if c.ok else "--", c.name, c.detail) for c in report.checks], align="lll", gap=2)
    lines += ["  " + line for line in checks.splitlines()]
    lines.append("")
    lines.append("Backends that will run: " + (", ".join(report.runnable_backends) or "none"))
    lines += [f"Note: {n}" for n in report.notes]
    hints = [f"  {c.name}: {c.hint}" for c in report.checks if not c.ok and c.hint]
    if hints:
        lines += ["", "To enable what is missing:", *hints]
    return "\n".join(lines)
