"""MkDocs hook: the command-line and configuration references, generated from the code.

A page that holds ``<!-- generated: cli -->`` gets every command and flag of searchprune's
argument parser (``searchprune.cli.main.build_parser``); ``<!-- generated: config -->`` gets every
key of the configuration dataclasses (``searchprune.config.Config``) with its type, default and
description (the attribute docstring under the field in ``searchprune/config.py``). So neither
reference can drift from the code; ``tests/test_docs.py`` checks the built pages hold every flag
and key. Also: Sphinx roles in docstrings (``:func:`x```) render as plain code on the API page.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import os
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

CLI_MARK = "<!-- generated: cli -->"
CONFIG_MARK = "<!-- generated: config -->"
_CODE = re.compile(r"(`+).+?\1")
_ROLE = re.compile(r":(?:func|class|meth|mod|attr|exc|data|obj):(?=<code>)")


def on_config(config: Any) -> Any:
    """Import searchprune from this checkout, whatever is installed."""
    root = str(Path(config.config_file_path).resolve().parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    return config


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if CLI_MARK in markdown:
        markdown = markdown.replace(CLI_MARK, cli_reference())
    if CONFIG_MARK in markdown:
        markdown = markdown.replace(CONFIG_MARK, config_reference())
    return markdown


def on_page_content(html: str, page: Any, config: Any, files: Any) -> str:
    return _ROLE.sub("", html)


# ---------------------------------------------------------------------------------- the CLI


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = (),
             help_text: str = "") -> list[tuple[tuple[str, ...], str, argparse.ArgumentParser]]:
    """Every (sub)command as ``(words, help, parser)``, depth first, in the parser's order."""
    found = [(path, help_text, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, child in action.choices.items():
                found += commands(child, (*path, name), helps.get(name, ""))
    return found


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The arguments a user types (no subcommand selectors, no suppressed ones)."""
    return [a for a in parser._actions
            if not isinstance(a, argparse._SubParsersAction) and a.help != argparse.SUPPRESS]


def _anchor(words: tuple[str, ...]) -> str:
    return "-".join(("searchprune", *words))


def _value(action: argparse.Action) -> str:
    if not action.option_strings:  # a positional: its name is in the first column
        return "optional" if action.nargs == "?" else ""
    if action.nargs == 0:
        return ""
    if action.choices is not None:
        return " \\| ".join(f"`{c}`" for c in action.choices)
    metavar = action.metavar or (action.dest if not action.option_strings
                                 else action.dest.upper())
    return f"`{metavar}`"


def _default(action: argparse.Action) -> str:
    if action.nargs == 0 or action.default in (None, argparse.SUPPRESS) or action.required:
        return ""
    if action.default == []:
        return ""
    return f"`{action.default}`"


# Said of arguments the parser gives no help text (the same meaning in every command).
_PLAIN = {
    "storage": "storage URL or SQLite file (default $SEARCHPRUNE_STORAGE, else "
               "studies/searchprune.db)",
    "study_name": "the study's name",
    "config": "the study file (YAML)",
}


def _help(action: argparse.Action, overrides: dict[str, str]) -> str:
    text = action.help or ""
    if "%(" in text:
        text = text % {**vars(action), "prog": ""}
    if action.dest in overrides:
        text = (text + "; " if text else "") + f"sets `{overrides[action.dest]}`"
    elif not text:
        text = _PLAIN.get(action.dest, "")
    notes = []
    if action.required and action.option_strings:
        notes.append("required")
    if isinstance(action, argparse._AppendAction) and "repeatable" not in text:
        notes.append("repeatable")
    tail = f" ({', '.join(notes)})" if notes else ""
    return (_cell(text) + tail).strip()


def _cell(text: str) -> str:
    """Text for a Markdown table cell: one line, pipes outside code spans escaped (inside them
    the table extension leaves pipes alone)."""
    text = " ".join(text.split())
    out, pos = [], 0
    for code in _CODE.finditer(text):
        out += [text[pos:code.start()].replace("|", "\\|"), code.group(0)]
        pos = code.end()
    return "".join([*out, text[pos:].replace("|", "\\|")])


def cli_reference() -> str:
    """Markdown for every command: its purpose, usage and a table of its arguments."""
    from searchprune.cli.main import build_parser
    from searchprune.cli.study import _OVERRIDES

    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # usage lines wrap the same on every machine
    try:
        parser = build_parser()
        found = commands(parser)
        usages = {words: sub.format_usage() for words, _, sub in found}
    finally:
        if columns is None:
            os.environ.pop("COLUMNS")
        else:
            os.environ["COLUMNS"] = columns
    lines: list[str] = []
    for words, help_text, sub in found:
        name = " ".join(("searchprune", *words))
        lines += [f"## `{name}` {{#{_anchor(words)}}}", ""]
        if help_text:
            lines += [help_text[0].upper() + help_text[1:] + ".", ""]
        elif sub.description:
            lines += [sub.description, ""]
        usage = usages[words].replace("usage: ", "", 1).strip()
        usage = "\n".join(line[len("usage: "):] if line.startswith(" " * 7) else line
                          for line in usage.splitlines())
        lines += ["```text", usage, "```", ""]
        children = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
        for action in children:
            links = ", ".join(f"[`{c}`](#{_anchor((*words, c))})" for c in action.choices)
            lines += [f"Commands: {links}.", ""]
        rows = [a for a in options(sub) if not isinstance(a, argparse._HelpAction)]
        if rows:
            lines += ["| argument | value | default | what it does |", "|---|---|---|---|"]
            overrides = _OVERRIDES if words == ("study", "run") else {}
            for a in rows:
                flags = ", ".join(f"`{s}`" for s in a.option_strings) or f"`{a.metavar or a.dest}`"
                lines.append(f"| {flags} | {_value(a)} | {_default(a)} | "
                             f"{_help(a, overrides)} |")
            lines.append("")
    return "\n".join(lines)


def cli_flags() -> dict[str, list[str]]:
    """Every command (``"study run"``) and the option strings it takes (for the tests)."""
    from searchprune.cli.main import build_parser

    return {" ".join(words): [s for a in options(sub) for s in a.option_strings]
            for words, _, sub in commands(build_parser())}


# ----------------------------------------------------------------------------- the config


def attribute_docs(cls: type) -> dict[str, str]:
    """``{field: docstring}``: the string literal right under each field of ``cls``."""
    tree = ast.parse(inspect.getsource(cls).lstrip())
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)):
            docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


_WORDS = {bool: "boolean", int: "integer", float: "number", str: "string"}


def type_words(hint: Any) -> str:
    """A field's type as a YAML user reads it (``integer or null``, ``list of numbers``)."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    words = []
    for o in options:
        if o is type(None):
            continue
        origin = typing.get_origin(o)
        if origin is list:
            inner = typing.get_args(o)[0]
            words.append(f"list of {_WORDS.get(inner, 'value')}s")
        elif origin is dict:
            words.append("mapping")
        else:
            words.append(_WORDS.get(o, getattr(o, "__name__", str(o))))
    if type(None) in options:
        words.append("null")
    return " or ".join(words)


def _yaml(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def config_keys(cls: type | None = None, prefix: str = "") -> list[dict[str, Any]]:
    """Every key of the configuration, depth first, in the dataclasses' order: ``key``,
    ``type``, ``default``, ``doc`` and, for a section, ``section`` (its class)."""
    from searchprune.config import Config

    cls = cls or Config
    hints = typing.get_type_hints(cls)
    docs = attribute_docs(cls)
    rows: list[dict[str, Any]] = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            rows.append({"key": key, "section": hints[f.name], "doc": docs.get(f.name, "")})
            rows += config_keys(hints[f.name], f"{key}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        rows.append({"key": key, "type": type_words(hints[f.name]), "default": _yaml(default),
                     "doc": docs.get(f.name, "")})
    return rows


def config_reference() -> str:
    """Markdown: one table per section; each key with its type, default and description."""
    from searchprune.config import Config

    top = [r for r in config_keys() if "." not in r["key"] and "section" not in r]
    lines = ["## Top level", "", inspect.cleandoc(Config.__doc__ or ""), ""]
    lines += _table(top)
    rows = config_keys()
    for row in rows:
        if "section" not in row:
            continue
        key = row["key"]
        members = [r for r in rows if r["key"].startswith(key + ".") and "section" not in r
                   and "." not in r["key"][len(key) + 1:]]
        lines += [f"## `{key}` {{#{key.replace('.', '-')}}}", ""]
        doc = inspect.cleandoc(row["section"].__doc__ or "")
        if doc:
            lines += [doc, ""]
        if members:  # a section may hold only sections (finetune: finetune.distill)
            lines += _table(members)
    return "\n".join(lines)


def _table(rows: list[dict[str, Any]]) -> list[str]:
    out = ["| key | type | default | description |", "|---|---|---|---|"]
    for r in rows:
        anchor = f'<a id="{r["key"]}"></a>'
        out.append(f"| {anchor}`{r['key']}` | {r['type']} | `{r['default']}` | "
                   f"{_cell(r['doc'])} |")
    return [*out, ""]
