"""`inferpath doctor`: probes never raise, parse nvidia-smi, say what runs and how to fix the rest."""

from __future__ import annotations

import json
import subprocess
from types import SimpleNamespace

import pytest

from pipeline import doctor


def fake_smi(stdout: str = "", returncode: int = 0, stderr: str = ""):
    def run(cmd, **kw):
        assert cmd[0] == "nvidia-smi"
        return SimpleNamespace(stdout=stdout, stderr=stderr, returncode=returncode)

    return run


def test_gpu_parsed_from_nvidia_smi():
    run = fake_smi("NVIDIA H100 80GB HBM3, 550.54.15, 81559 MiB, 9.0\nNVIDIA L4, 550.54.15, 23034 MiB, 8.9\n")
    gpus, status = doctor.probe_gpus(run)
    assert status == "2 GPU(s)"
    assert gpus[0] == {
        "name": "NVIDIA H100 80GB HBM3",
        "driver": "550.54.15",
        "memory": "81559 MiB",
        "compute_capability": "9.0",
    }
    report = doctor.collect(run)
    assert report.check("gpu").ok
    assert "H100" in doctor.format_report(report)


def test_nvidia_smi_failures_are_findings_not_errors():
    gpus, status = doctor.probe_gpus(fake_smi(returncode=9, stderr="NVIDIA-SMI has failed: no driver\n"))
    assert gpus == [] and "exited 9" in status and "no driver" in status

    def timeout(cmd, **kw):
        raise subprocess.TimeoutExpired(cmd, 10)

    gpus, status = doctor.probe_gpus(timeout)
    assert gpus == [] and "failed to run" in status


def test_report_on_this_machine_lists_backends_and_hints():
    report = doctor.collect(fake_smi(returncode=1))
    text = doctor.format_report(report)
    assert "onnxruntime (CPU)" in report.runnable_backends
    assert "Backends that will run:" in text
    names = {c.name for c in report.checks}
    assert {"gpu", "tensorrt", "cuda-python", "pycuda", "onnxruntime"} <= names
    for c in report.checks:
        if not c.ok and c.name in ("gpu", "tensorrt", "cuda-python"):
            assert c.hint, c.name
    if not report.check("tensorrt").ok:
        assert not any(b.startswith("tensorrt") for b in report.runnable_backends)
        assert "inferpath[gpu-cu13]" in text and "inferpath[gpu-cu12]" in text
    json.dumps(report.to_dict())  # structured data is JSON-ready


def test_doctor_report_string_and_cli(capsys):
    from pipeline.cli import main

    assert main(["doctor"]) == 0
    assert "Inferpath doctor" in capsys.readouterr().out
    assert main(["doctor", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert "runnable_backends" in data and data["checks"]


@pytest.mark.parametrize(
    "driver,extra",
    [
        ("580.65.06", "gpu-cu13"),
        ("590.44.01", "gpu-cu13"),
        ("575.57.08", "gpu-cu12"),
        ("535.54.03", "gpu-cu12"),
        ("525.60.13", None),  # TensorRT 11's CUDA 12 wheels need r535 (NVIDIA's prerequisites)
        ("470.256.02", None),
        ("CUDA 13.0", "gpu-cu13"),
        ("CUDA 12.8", "gpu-cu12"),
        ("CUDA 12.2", "gpu-cu12"),
        ("CUDA 12.0", None),  # an r525 driver
        ("CUDA 11.8", None),
        ("?", None),
    ],
)
def test_gpu_extra_for_driver(driver, extra):
    got, why = doctor.gpu_extra_for_driver(driver)
    assert got == extra and why


@pytest.mark.parametrize("driver,extra", [("580.65.06", "gpu-cu13"), ("550.54.15", "gpu-cu12")])
def test_report_names_the_extra_that_fits_the_driver(driver, extra):
    report = doctor.collect(fake_smi(f"NVIDIA L4, {driver}, 23034 MiB, 8.9\n"))
    assert report.check("gpu extra").ok and f"inferpath[{extra}]" in report.check("gpu extra").detail
    text = doctor.format_report(report)
    line = f"pip install --extra-index-url https://pypi.nvidia.com 'inferpath[{extra}]'"  # the libraries' index
    assert line in text
    if not report.check("tensorrt").ok:  # the hint names only the extra that fits
        assert report.check("tensorrt").hint.startswith(f"{line} (TensorRT's libraries come from")


def test_old_driver_gets_no_extra_and_says_why():
    report = doctor.collect(fake_smi("Tesla K80, 470.256.02, 11441 MiB, 3.7\n"))
    check = report.check("gpu extra")
    assert not check.ok and "r535" in check.detail and check.hint


@pytest.mark.parametrize(
    "smi,ok,needle",
    [
        ("NVIDIA L4, 550.54.15, 23034 MiB, 8.9\n", True, "compute capability >= 7.5"),
        ("Tesla T4, 550.54.15, 15360 MiB, 7.5\n", True, "compute capability >= 7.5"),
        ("Tesla V100-SXM2-16GB, 550.54.15, 16384 MiB, 7.0\n", False,
         "Tesla V100-SXM2-16GB is compute capability 7.0; TensorRT 11 (what the GPU extras install) needs 7.5"),
        ("Tesla P100-PCIE-16GB, 550.54.15, 16384 MiB, 6.0\n", False, "compute capability 6.0"),
    ],
)
def test_gpu_support_is_judged_by_compute_capability(smi, ok, needle):
    """TensorRT 11 (and 10.5+) runs on Turing (sm 7.5) or newer: an older GPU is refused in one line,
    and the tensorrt backend is not listed as runnable."""
    report = doctor.collect(fake_smi(smi))
    check = report.check("gpu support")
    assert check.ok is ok and needle in check.detail and "\n" not in check.detail
    if not ok:
        assert check.hint and not any(b.startswith("tensorrt") for b in report.runnable_backends)
        assert any(n.startswith("tensorrt backend will not run: ") and needle in n for n in report.notes)
        lines = doctor.format_report(report).splitlines()
        assert [x for x in lines if x.split()[:3] == ["--", "gpu", "support"]] == [
            next(x for x in lines if check.detail in x)]  # one line


def test_gpu_support_follows_the_installed_tensorrt():
    """TensorRT 10.0-10.4 still ran on Volta (7.0); 10.5 removed it; 11 needs Turing."""
    volta = [{"name": "Tesla V100", "compute_capability": "7.0"}]
    assert doctor.gpu_support(volta, "10.3.0").ok
    assert not doctor.gpu_support(volta, "10.5.0").ok
    assert "TensorRT 11.4.0 needs 7.5" in doctor.gpu_support(volta, "11.4.0").detail
    assert doctor.gpu_support([{"name": "H100", "compute_capability": "9.0"}], "11.4.0").ok


def test_gpu_support_from_cuda_python_without_nvidia_smi():
    class OldGpuRuntime(FakeRuntime):
        def cudaGetDeviceProperties(self, i):
            return (0, SimpleNamespace(name=b"Tesla V100\0", totalGlobalMem=16384 << 20, major=7, minor=0))

    report = doctor.collect(fake_smi(returncode=127, stderr="nvidia-smi: not found"), cudart=OldGpuRuntime())
    assert not report.check("gpu support").ok and "Tesla V100 is compute capability 7.0" in report.check(
        "gpu support").detail


class FakeRuntime:
    """cuda-python's runtime as a machine without nvidia-smi shows it: one H200, a CUDA 13.0 driver."""

    def cudaGetDeviceCount(self):
        return (0, 1)

    def cudaDriverGetVersion(self):
        return (0, 13000)

    def cudaGetDeviceProperties(self, i):
        return (0, SimpleNamespace(name=b"NVIDIA H200\0\0", totalGlobalMem=143771 << 20, major=9, minor=0))


def test_gpu_seen_by_cuda_python_without_nvidia_smi():
    report = doctor.collect(fake_smi(returncode=127, stderr="nvidia-smi: not found"), cudart=FakeRuntime())
    assert report.gpus == [
        {"name": "NVIDIA H200", "driver": "CUDA 13.0", "memory": "143771 MiB", "compute_capability": "9.0"}
    ]
    assert report.check("gpu").ok and report.check("cuda-python").ok
    assert "inferpath[gpu-cu13]" in report.check("gpu extra").detail


def test_doctor_reports_prometheus_client():
    """prometheus-client is a core dependency (metrics are a headline feature): doctor says so."""
    report = doctor.collect(fake_smi(returncode=1))
    check = report.check("prometheus-client")
    assert check is not None and check.ok, doctor.format_report(report)
    assert "prometheus-client" in doctor.format_report(report)


def test_prometheus_client_is_a_core_dependency():
    from pathlib import Path

    import tomllib

    project = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"]
    assert any(d.startswith("prometheus-client") for d in project["dependencies"])


def test_doctor_reports_the_track_and_cluster_extras(monkeypatch):
    """Installed or not, and how to install them (before: not mentioned at all)."""
    import importlib.metadata

    from tests.conftest import run_cli

    proc = run_cli("doctor", "--json", timeout=120)
    checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    for extra, dist in (("track", "trackers"), ("cluster", "ray")):
        try:
            ver = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            ver = None
        check = checks[f"{extra} extra"]
        assert check["ok"] == (ver is not None), check
        assert (f"{dist} {ver}" in check["detail"]) if ver else (check["hint"] == f"pip install 'inferpath[{extra}]'")
    real = doctor._version
    monkeypatch.setattr(doctor, "_version", lambda dist: None if dist in ("trackers", "ray") else real(dist))
    text = doctor.format_report(doctor.collect(fake_smi(returncode=1)))
    assert "track extra: pip install 'inferpath[track]'" in text
    assert "cluster extra: pip install 'inferpath[cluster]'" in text
