"""Stand-in for torchaudio in bench/.venv-lf: llamafactory imports it unconditionally, text runs never use it.

PyPI's torchaudio wheel beside CPU torch 2.13 is a CUDA build that fails to load, so the benchmark puts
this directory first on sys.path; any attribute access raises, so audio use fails loudly.
"""

__version__ = "0.0.0+bench-stub"


def __getattr__(name):
    raise ImportError(f"torchaudio is a stand-in in the benchmark's LLaMA-Factory venv (asked for {name!r})")
