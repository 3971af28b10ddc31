"""What every command does alike: flag help, its name, TensorFlow's logs.

`flag_help`: help text for a command-line flag that sets a config field.
The one source of a setting's meaning is its field in `configs/schema.py`:
the trailing comment (or the comment lines just above it), the dataclass
default, and the allowed values in `schema.CHOICES`. Every command builds
its flag help from here, so `--help` and the schema cannot drift apart.
TF-free (read by `--help` before anything heavy is imported).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import os
import re
import sys

from configs import schema

_FIELD = re.compile(r"^    (\w+): [^=]+=[^#]*?(?:#\s*(.*))?$")
_COMMENT = re.compile(r"^    #\s?(.*)$")


@functools.lru_cache(maxsize=None)
def _comments(cls: type) -> dict[str, str]:
    """{field name: its comment} of a schema dataclass, from its source."""
    out, above = {}, []
    for line in inspect.getsource(cls).splitlines():
        comment = _COMMENT.match(line)
        if comment:
            above.append(comment.group(1).strip())
            continue
        field = _FIELD.match(line)
        if field:
            text = " ".join(
                above + ([field.group(2).strip()] if field.group(2) else [])
            )
            out[field.group(1)] = text
        above = []
    return out


def flag_help(
    cls: type, name: str, *, default=dataclasses.MISSING, set_form: bool = True
) -> str:
    """`comment (default: D; one of: a, b)` for field `name` of `cls`.

    Args:
        cls: a schema dataclass (`schema.PretrainConfig`, ...).
        name: one of its fields.
        default: the flag's own default where it differs from the field's
            (e.g. a data job's); else the field default is shown.
        set_form: name the `--set section.name=` equivalent (commands that
            take `--config`/`--set`; the data jobs take flags only).
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if name not in fields:
        raise KeyError(f"{cls.__name__} has no field {name}")
    if default is dataclasses.MISSING:
        f = fields[name]
        default = (
            f.default if f.default is not dataclasses.MISSING else f.default_factory()
        )
    parts = [_comments(cls).get(name, "")]
    shown = "''" if default == "" else default
    details = [f"default: {shown}"]
    choices = schema.CHOICES.get((cls.__name__, name))
    if choices:
        details.append("one of: " + ", ".join(choices))
    section = schema.SECTIONS.get(cls.__name__)
    if section and set_form:
        details.append(f"= --set {section}.{name}=...")
    text = " ".join(p for p in parts if p)
    # argparse formats help with %-interpolation.
    return (
        f"{text} ({'; '.join(details)})" if text else f"({'; '.join(details)})"
    ).replace("%", "%%")


def program_name(module: str) -> str:
    """What the user typed: `bert-pretrain` for the console script, else
    `python -m model.pretrain` (usage lines and errors name it)."""
    ran = os.path.basename(sys.argv[0] if sys.argv else "")
    return ran if ran.startswith("bert-") else f"python -m {module}"


class _QuietTensorFlowImport:
    """A `sys.meta_path` finder that runs TensorFlow's first import with
    file descriptor 2 pointed at /dev/null.

    TensorFlow 2.21 writes its CUDA probe lines ("Could not find cuda
    drivers ...") through absl before absl's logging is initialised, so
    `TF_CPP_MIN_LOG_LEVEL` does not silence them. Python errors raised by
    the import still propagate (and print once stderr is back).
    """

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once; and find_spec below must not recurse
        import importlib.util

        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def quiet_exec(module):
            sys.stderr.flush()
            saved = os.dup(2)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            try:
                exec_module(module)
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                os.close(devnull)

        spec.loader.exec_module = quiet_exec
        return spec


def quiet_tensorflow_logs() -> None:
    """TensorFlow's C++ INFO/WARNING lines (CUDA probing, CPU features) off
    unless the user chose a level: `TF_CPP_MIN_LOG_LEVEL=2` when unset, and
    TensorFlow's import-time lines (written before that setting is read)
    dropped.

    Called by each command's `main()` before TensorFlow is imported (a
    library import never changes the environment); errors still print. A
    user who sets `TF_CPP_MIN_LOG_LEVEL` gets TensorFlow's output as is.
    """
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    if "tensorflow" not in sys.modules:
        sys.meta_path.insert(0, _QuietTensorFlowImport())


def parse_bool(value: str) -> bool:
    """`--flag=VALUE` as a bool: 1/true/yes/y/on or 0/false/no/n/off."""
    lowered = str(value).strip().lower()
    if lowered in ("1", "true", "yes", "y", "on"):
        return True
    if lowered in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def add_overwrite_flag(add, replaces: str) -> None:
    """Adds `--overwrite` (or `--overwrite=true|false`), default false.

    One definition for every command that refuses to replace a finished
    result (DESIGN.md: "Output locations"), so the flag takes the same
    values everywhere. `add` is a parser's `add_argument`; `replaces` says
    what the flag replaces, e.g. "replace an earlier export in --export_dir".
    """
    add(
        "--overwrite",
        type=parse_bool,
        nargs="?",
        const=True,
        default=False,
        help=f"{replaces} (default false: refuse)",
    )
