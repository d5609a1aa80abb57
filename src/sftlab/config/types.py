"""Number and boolean field types that refuse what pydantic's lax mode would quietly convert.

Lax mode reads `true` as 1 (or 1.0), the string "3" as 3 and 1 as true. Config files, serve settings and API
requests use these instead of plain `int`, `bool` and `float`:

- `Int`: an integer only (no boolean, string or float, not even 2.0);
- `Bool`: a boolean only;
- `Float`: a number or a numeric string, never a boolean. Strings stay accepted because PyYAML reads `1e-4`
  (no dot) as a string.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, Strict


def _not_bool(value):
    """Refuse a boolean where a number is expected."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value}")
    return value


Int = Annotated[int, Strict()]
Bool = Annotated[bool, Strict()]
Float = Annotated[float, BeforeValidator(_not_bool)]
