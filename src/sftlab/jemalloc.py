"""Run training on jemalloc (`train.allocator`): find the library, decide, re-execute the process on it.

Over a CPU training run glibc's malloc keeps more memory than the live tensors need (freed blocks of
varying sizes fragment its heap); jemalloc with its decay turned off (and every large allocation served
from its oversize arena) keeps the speed at a lower peak
(docs/speed-work.md). A library replaces malloc only when the dynamic loader maps it before the program
starts (LD_PRELOAD), so the choice is made before anything else:

- `resolve_allocator(setting)`: auto = jemalloc when `find_jemalloc()` finds it (Linux only), else the
  system malloc; jemalloc = required (a one-line SftlabError when it is not found); system = never.
- `reexec_on_jemalloc(setting, program)`: when the setting resolves to jemalloc and this process is not on
  it yet (`/proc/self/maps`), replace the process (`os.execve`) with `python *program` under
  `exec_environment`: LD_PRELOAD with the library in front, MALLOC_CONF = `MALLOC_CONF` in front (options
  already set come after it and win), and `SFTLAB_JEMALLOC_EXEC`, which stops a second re-execution even
  when the loader could not preload the library. Child processes (torchrun's workers) inherit them.
  The `sftlab` console script (`sftlab.cli.console`) calls it for `sftlab train`, the benchmark's
  sftlab runner for itself; `sftlab.cli.main`, called in-process, never re-executes.
- `allocator_line()`: the allocator this process runs on, read from `/proc/self/maps` (the run log's line).
"""

from __future__ import annotations

import ctypes.util
import os
import platform
import sys
import sysconfig
import typing
from pathlib import Path

from sftlab.config.schema import TrainConfig
from sftlab.errors import SftlabError

CHOICES = typing.get_args(TrainConfig.model_fields["allocator"].annotation)  # the config's own choices
LIBRARY_NAMES = ("libjemalloc.so.2", "libjemalloc.so")
# keep freed pages (default decay: W1 1939 vs 3045 tokens/s); every large allocation from the arena jemalloc
# keeps for oversize ones (its default threshold is 8 MiB): W1 peak RSS 1.57 vs 1.61 GiB at the same speed
MALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1,oversize_threshold:0"
MARKER = "SFTLAB_JEMALLOC_EXEC"


def search_dirs() -> list[Path]:
    """Where `find_jemalloc` looks, in order (as torch.backends.xeon.run_cpu, plus Debian's multiarch directory)."""
    prefixes = [os.environ.get("VIRTUAL_ENV"), os.environ.get("CONDA_PREFIX"), sys.prefix]
    multiarch = sysconfig.get_config_var("MULTIARCH") or f"{platform.machine()}-linux-gnu"
    dirs = [Path(prefix) / "lib" for prefix in prefixes if prefix]
    dirs += [Path(p) for p in ("/usr/local/lib", "/usr/local/lib64", "/usr/lib64", "/usr/lib", f"/usr/lib/{multiarch}")]
    dirs.append(Path.home() / ".local" / "lib")
    return list(dict.fromkeys(dirs))


def find_jemalloc() -> str | None:
    """A jemalloc shared library to preload: a path from `search_dirs`, else the loader's name for it, else None."""
    for directory in search_dirs():
        for name in LIBRARY_NAMES:
            if (directory / name).is_file():
                return str(directory / name)
    return ctypes.util.find_library("jemalloc")


def resolve_allocator(setting: str) -> str | None:
    """The jemalloc library to run training on for `train.allocator` = `setting`, or None for the system malloc."""
    if setting not in CHOICES:
        raise SftlabError(f"train.allocator: got {setting!r}, expected one of {', '.join(CHOICES)}")
    linux = sys.platform.startswith("linux")
    if setting == "system" or (setting == "auto" and not linux):
        return None
    if not linux:
        raise SftlabError("train.allocator=jemalloc: preloading jemalloc works on Linux only; set train.allocator: "
                          "auto or system")
    library = find_jemalloc()
    if library is None and setting == "jemalloc":
        raise SftlabError("train.allocator=jemalloc: no jemalloc library found; install it (Debian/Ubuntu: "
                          "apt install libjemalloc2) or set train.allocator: system")
    return library


def loaded_jemalloc(maps: str = "/proc/self/maps") -> str | None:
    """The path of the jemalloc library mapped into this process, or None (also where /proc is missing)."""
    try:
        text = Path(maps).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        fields = line.split(maxsplit=5)  # address, permissions, offset, device, inode, path
        if len(fields) == 6 and os.path.basename(fields[5]).startswith("libjemalloc"):
            return fields[5]
    return None


def allocator_line(setting: str | None = None) -> str:
    """'allocator: jemalloc (PATH)' or 'allocator: system malloc', as this process really runs.

    On the system malloc, the line also says why when jemalloc was asked for: the loader could not preload
    the library, or (`setting` jemalloc) training was started in-process rather than by the sftlab command."""
    library = loaded_jemalloc()
    if library:
        return f"allocator: jemalloc ({library})"
    if os.environ.get(MARKER):
        return f"allocator: system malloc ({os.environ[MARKER]} could not be preloaded)"
    if setting == "jemalloc":
        return "allocator: system malloc (train.allocator=jemalloc takes effect when the sftlab command starts the run)"
    library = find_jemalloc() if setting == "auto" else None
    if library:  # run_training from Python, sftlab compare, plan --probe: `sftlab train` would be on jemalloc
        return (f"allocator: system malloc (not started by `sftlab train`, which runs on jemalloc, faster and lighter: "
                f"start the process with LD_PRELOAD={library} MALLOC_CONF={MALLOC_CONF} for the same)")
    return "allocator: system malloc"


def exec_environment(library: str, environ: dict[str, str]) -> dict[str, str]:
    """`environ` with `library` first in LD_PRELOAD, decay off first in MALLOC_CONF, and the marker set."""
    env = dict(environ)
    env["LD_PRELOAD"] = ":".join(part for part in (library, environ.get("LD_PRELOAD", "")) if part)
    env["MALLOC_CONF"] = ",".join(part for part in (MALLOC_CONF, environ.get("MALLOC_CONF", "")) if part)
    env[MARKER] = library
    return env


def reexec_on_jemalloc(setting: str, program: list[str]) -> None:
    """Replace this process with `sys.executable *program` on jemalloc when `setting` resolves to it.

    Returns (and the caller goes on as it is) when the setting means the system malloc, when jemalloc is
    already loaded, or when this process was already re-executed (`MARKER`). Raises SftlabError when
    jemalloc is required and not found."""
    if os.environ.get(MARKER) or loaded_jemalloc():
        return
    library = resolve_allocator(setting)
    if library is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *program], exec_environment(library, dict(os.environ)))


def reexec_for_run_config(config: str, overrides: list[str], program: list[str]) -> None:
    """`reexec_on_jemalloc` with the train.allocator of the run config as `sftlab train` loads it.

    An invalid config (or jemalloc required and missing) re-executes nothing: the command then reports it."""
    from sftlab.config.load import load_config

    try:
        reexec_on_jemalloc(load_config(config, overrides).train.allocator, program)
    except SftlabError:
        return
