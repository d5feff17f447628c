"""`inferpath doctor`: probes never raise, parse nvidia-smi, say what runs and how to fix the rest."""

from __future__ import annotations

import json
import subprocess
from types import SimpleNamespace

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
        assert "inferpath[gpu]" in text
    json.dumps(report.to_dict())  # structured data is JSON-ready


def test_doctor_report_string_and_cli(capsys):
    assert "Inferpath doctor" in doctor.doctor_report()
    from pipeline.cli import main

    assert main(["doctor", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert "runnable_backends" in data and data["checks"]


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
