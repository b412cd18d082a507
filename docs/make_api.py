#!/usr/bin/env python
"""Write docs/api.md from the docstrings of fsllm's public API (``fsllm.__all__``).

    python docs/make_api.py            # rewrite docs/api.md
    python docs/make_api.py --check    # exit 1 if docs/api.md is not what the code says (a test runs this)

The convention the docstrings follow, which this reads: a first line that says what the object
is or does, then paragraphs in Markdown with ``code`` in double backquotes (rendered as single
ones). Classes list their public methods and, for dataclasses, their fields with the help text
they carry (``metadata["help"]``), so the page is the command line's ``--help`` in Python terms.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import sys
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parent / "api.md"


def _doc(obj) -> str:
    text = inspect.getdoc(obj) or "(no docstring)"
    return re.sub(r"``([^`]+)``", r"`\1`", text)


def _signature(obj) -> str:
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return "(...)"


def _fields(cls) -> list[str]:
    rows = ["| field | default | help |", "|---|---|---|"]
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = f"{f.default_factory.__name__}()"
        else:
            default = "required"
        help_text = re.sub(r"\s+", " ", f.metadata.get("help", "")).replace("|", "\\|")
        rows.append(f"| `{f.name}` | `{default}` | {help_text} |")
    return rows


def _methods(cls) -> list[str]:
    """The public methods ``cls`` defines, and those of its fsllm mixins (``FSModel`` takes its folder
    methods from ``fsllm.persistence.FolderMixin``); not those of transformers' or torch's bases."""
    out = []
    mixins = [b for b in cls.__bases__ if b.__module__.startswith("fsllm.") and not issubclass(b, torch.nn.Module)]
    members = {name: member for c in (cls, *mixins) for name, member in vars(c).items()}
    for name, member in members.items():
        if name.startswith("_") or not (inspect.isfunction(member) or isinstance(member, (classmethod, staticmethod))):
            continue
        fn = member.__func__ if isinstance(member, (classmethod, staticmethod)) else member
        first = (_doc(fn).splitlines() or [""])[0]
        out.append(f"- `{name}{_signature(fn)}`: {first}")
    return out


def render() -> str:
    import fsllm

    lines = [
        "# API reference",
        "",
        "Generated from the docstrings by `python docs/make_api.py`; do not edit by hand. The public API is",
        "what `import fsllm` exports; the modules behind it are described in [design.md](design.md).",
        "",
    ]
    for name in sorted(fsllm.__all__, key=str.lower):
        obj = getattr(fsllm, name)
        if inspect.isclass(obj):
            kind = "exception" if issubclass(obj, BaseException) else "class"
            lines += [f"## `{name}` ({kind}, `{obj.__module__}`)", "", _doc(obj), ""]
            if dataclasses.is_dataclass(obj):
                lines += _fields(obj) + [""]
            methods = _methods(obj)
            if methods and not issubclass(obj, BaseException):
                lines += ["Methods:", "", *methods, ""]
        elif callable(obj):
            lines += [f"## `{name}{_signature(obj)}` (`{obj.__module__}`)", "", _doc(obj), ""]
        else:
            lines += [f"## `{name}`", "", f"`{type(obj).__name__}` with {len(obj)} entries: "
                      + ", ".join(f"`{k}`" for k in obj) if hasattr(obj, "__len__") else repr(obj), ""]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 when they differ")
    a = p.parse_args(argv)
    text = render()
    if a.check:
        if not OUT.is_file() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run python docs/make_api.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
