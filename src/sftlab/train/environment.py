"""The software and device a run trained with: the `environment` of every checkpoint's sidecar and the model card.

    collect_environment(device, "auto")   # {"python": "3.12.3", "packages": {"sftlab": "0.1.0", "torch": ...,
                                          #  "peft": None, ...}, "device": {"kind": "cpu", "name": "x86_64"},
                                          #  "allocator": "allocator: system malloc"}
    version_warning(saved_environment)    # "warning: ... transformers 4.46.0 (now 5.25.0) ..." or None

Versions come from `importlib.metadata` (null for a package that is not installed), so collecting them imports
nothing heavy. On `--resume` the versions that decide the arithmetic (torch, transformers, peft) are compared
with the checkpoint's; a change is reported in one line and the run goes on. A checkpoint written before this
record existed has no `environment` and resumes without a word.
"""

from __future__ import annotations

import importlib.metadata
import platform

PACKAGES = ("sftlab", "torch", "transformers", "peft", "accelerate", "tokenizers")
COMPARED_ON_RESUME = ("torch", "transformers", "peft")


def package_version(name: str) -> str | None:
    """The installed version of distribution `name`, or None when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def device_info(device) -> dict:
    """{"kind": "cpu" | "cuda" | ..., "name": the GPU's name or the CPU's architecture} of a torch device."""
    kind = getattr(device, "type", None) or str(device or "cpu").split(":")[0]
    if kind == "cuda":
        import torch  # already loaded: `device` is a torch.device

        return {"kind": kind, "name": torch.cuda.get_device_name(device)}
    return {"kind": kind, "name": platform.processor() or platform.machine() or None}


def collect_environment(device=None, allocator: str | None = None) -> dict:
    """Python, the versions of `PACKAGES`, the device (when given) and the allocator line of this process.

    `allocator` is the run's train.allocator setting, passed on to `sftlab.jemalloc.allocator_line`."""
    from sftlab.jemalloc import allocator_line

    return {"python": platform.python_version(), "packages": {name: package_version(name) for name in PACKAGES},
            "device": device_info(device) if device is not None else None, "allocator": allocator_line(allocator)}


def version_warning(saved: dict | None, now: dict | None = None) -> str | None:
    """One line naming each of torch/transformers/peft whose version differs from the checkpoint's, else None.

    `saved` is the checkpoint's `environment` (None for an older checkpoint: nothing to compare); `now`
    defaults to this process's versions."""
    before = (saved or {}).get("packages") or {}
    now = now if now is not None else {name: package_version(name) for name in COMPARED_ON_RESUME}
    changed = [f"{name} {before[name] or 'not installed'} (now {now.get(name) or 'not installed'})"
               for name in COMPARED_ON_RESUME if name in before and before[name] != now.get(name)]
    if not changed:
        return None
    return (f"warning: the checkpoint was written with {', '.join(changed)}; resuming anyway, but the losses may "
            "differ from an uninterrupted run")


def environment_lines(environment: dict) -> list[str]:
    """Markdown list items for the model card: python and package versions, device, allocator."""
    packages = ", ".join(f"{name} {version or 'not installed'}"
                         for name, version in (environment.get("packages") or {}).items())
    lines = [f"- python {environment.get('python', '?')}, {packages}"]
    device = environment.get("device")
    if device:
        lines.append(f"- device: {device['kind']}" + (f" ({device['name']})" if device.get("name") else ""))
    if environment.get("allocator"):
        lines.append(f"- {environment['allocator']}")
    return lines
