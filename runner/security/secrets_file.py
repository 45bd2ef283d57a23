"""`--secrets-file`: secrets kept in a dotenv file instead of the environment.

The file is read once, when `treadle run` or `treadle serve` starts, with
python-dotenv (`KEY=value` lines, `#` comments, quotes, `export KEY=...`). Values are
taken as written: `${VAR}` is not expanded. What the file sets is added to the
process environment to make the mapping the engine reads secrets from
(`Engine(environ=...)`, also used by webhook and notification keys); a variable set
(non-empty) in the environment wins over the file. The file's values are not put
into the environment of `run` steps: a step gets one only through its `env`.

Errors name the file and the line, never a value.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from dotenv import dotenv_values
from dotenv.parser import parse_stream

from ..errors import (
    SecretsFileError,
    )

ENV_VAR = "TREADLE_SECRETS_FILE"


def read_secrets_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """The `KEY=value` pairs of a dotenv file (keys without a value are left out)."""
    where = Path(path)
    try:
        text = where.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SecretsFileError(f"secrets file {str(path)!r} not found") from None
    except IsADirectoryError:
        raise SecretsFileError(f"secrets file {str(path)!r} is a folder, not a file") from None
    except PermissionError:
        raise SecretsFileError(f"secrets file {str(path)!r} cannot be read: permission denied") from None
    except UnicodeDecodeError as exc:
        raise SecretsFileError(f"secrets file {str(path)!r} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise SecretsFileError(f"secrets file {str(path)!r} cannot be read: {exc.strerror or exc}") from None
    bad = [b.original.line for b in parse_stream(io.StringIO(text)) if b.error]
    if bad:
        lines = ", ".join(str(n) for n in bad[:5]) + (" ..." if len(bad) > 5 else "")
        raise SecretsFileError(f"secrets file {str(path)!r}: cannot read the line{'s' if len(bad) > 1 else ''} "
                               f"starting at line {lines}; write KEY=value")
    values = dotenv_values(stream=io.StringIO(text), interpolate=False)
    return {key: value for key, value in values.items() if value is not None}


def with_secrets_file(path: str | os.PathLike[str] | None,
                      environ: Mapping[str, str] | None = None) -> dict[str, str] | None:
    """The environment (default: the process's) completed by the secrets file at
    `path`; None when there is no file (use the environment as it is)."""
    if not path:
        return None
    merged = dict(os.environ if environ is None else environ)
    for key, value in read_secrets_file(path).items():
        if not merged.get(key):  # the environment wins, unless it is empty there
            merged[key] = value
    return merged


def loose_permissions(path: str | os.PathLike[str]) -> str | None:
    """A warning when other users may read the file (it holds secrets), else None."""
    try:
        mode = Path(path).stat().st_mode
    except OSError:
        return None
    if os.name == "posix" and mode & (stat.S_IRGRP | stat.S_IROTH):
        return (f"secrets file {str(path)!r} can be read by other users "
                f"(mode {stat.S_IMODE(mode):04o}); chmod 600 it")
    return None
