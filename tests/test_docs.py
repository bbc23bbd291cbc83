"""The documentation site: it builds with warnings as errors (broken links, missing pages or
anchors), and its references hold every CLI flag and every config key the code has."""

from __future__ import annotations

import argparse
import dataclasses
import html
import importlib.util
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from searchprune.cli.main import build_parser
from searchprune.config import Config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def site(tmp_path_factory) -> Path:
    """``mkdocs build --strict`` of this checkout, once per session."""
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed (pip install -e '.[docs]'; install.sh does)")
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, PYTHONPATH=str(ROOT), NO_MKDOCS_2_WARNING="1")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return out


def _text(page: Path) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", page.read_text()))


def parser_commands(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()):
    """``(words, parser)`` of every command, walked independently of docs/gen_ref.py."""
    yield words, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from parser_commands(child, (*words, name))


def config_keys(cls: type = Config, prefix: str = "") -> list[str]:
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys += config_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def sections(page: str) -> dict[str, str]:
    """The HTML of a reference page cut at its ``<h2 id=...>`` headings: ``{id: html}``."""
    parts = re.split(r'<h2 id="([^"]+)"', page)
    return dict(zip(parts[1::2], parts[2::2]))


def missing_flags(page: str) -> list[str]:
    """``"command flag"`` for every option of the parser the CLI page does not list under its
    command's heading."""
    found = sections(page)
    missing = []
    for words, sub in parser_commands(build_parser()):
        body = found.get("-".join(("searchprune", *words)), "")
        if not body:
            missing.append(" ".join(words) or "searchprune")
            continue
        for action in sub._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help") and f"<code>{flag}</code>" not in body:
                    missing.append(f"{' '.join(words)} {flag}")
    return missing


def missing_keys(page: str) -> list[str]:
    """Config keys without a row (``<a id="key">``) and a non-empty description."""
    missing = []
    for key in config_keys():
        row = re.search(rf'<tr>\s*<td><a id="{re.escape(key)}"></a>.*?</tr>', page, re.S)
        cells = re.findall(r"<td>(.*?)</td>", row.group(0), re.S) if row else []
        if len(cells) != 4 or not re.sub(r"<[^>]+>", "", cells[3]).strip():
            missing.append(key)
    return missing


def test_the_site_builds_offline_without_warnings(site):
    pages = {p.relative_to(site).as_posix() for p in site.rglob("*.html")}
    for page in ("index.html", "tutorial.html", "algorithms.html", "problem.html",
                 "explanation/benchmarks.html", "reference/cli.html", "reference/config.html",
                 "reference/api.html", "how-to/workers.html", "how-to/extending.html"):
        assert page in pages, page
    assert not list(site.rglob("gen_ref.py"))  # the hook is not published
    index = (site / "index.html").read_text()
    assert "fonts.googleapis.com" not in index  # theme.font: false, nothing fetched


def test_the_cli_reference_lists_every_command_and_flag(site):
    page = (site / "reference" / "cli.html").read_text()
    assert missing_flags(page) == []
    assert "<code>--trust-checkpoint</code>" in sections(page)["searchprune-export"]


def test_the_flag_check_fails_when_a_flag_is_missing(site):
    page = (site / "reference" / "cli.html").read_text()
    without = page.replace("<code>--plot-top</code>", "<code>--plot-tip</code>")
    assert missing_flags(without) == ["study show --plot-top"]
    export = sections(page)["searchprune-export"]
    assert "export" in missing_flags(page.replace(export, ""))


def test_the_config_reference_lists_every_key_with_type_default_and_description(site):
    page = (site / "reference" / "config.html").read_text()
    assert missing_keys(page) == []
    text = _text(site / "reference" / "config.html")
    assert "pruning.reconstruction.ridge" in text and "0.0001" in text
    row = re.search(r'<a id="data.val_from"></a>.*?</tr>', page, re.S).group(0)
    assert "string" in row and "<code>train</code>" in row and "half of the official" in row


def test_the_key_check_fails_when_a_key_is_missing(site):
    page = (site / "reference" / "config.html").read_text()
    assert missing_keys(page.replace('<a id="search.pareto_cost">', "<a>")) == [
        "search.pareto_cost"]


def test_the_api_reference_is_rendered_from_docstrings(site):
    page = (site / "reference" / "api.html").read_text()
    for name in ("search.run_study", "engine.engine_for", "engine.Engine",
                 "baselines.evaluate_baselines", "config.load_config"):
        assert f'id="searchprune.{name}"' in page, name
    text = _text(site / "reference" / "api.html")
    assert "Run (or continue) the study until it holds" in text  # run_study's docstring
    assert ":func:" not in text and ":class:" not in text


def test_readme_links_into_the_docs_resolve():
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(((?!https?:|#)[^)#]+)(?:#[^)]*)?\)", readme)
    assert any(link.startswith("docs/") for link in links)
    for link in links:
        assert (ROOT / link).exists(), f"README links to {link}, which does not exist"


def documented_commands(markdown: str) -> list[str]:
    """Every ``searchprune ...`` command line in the fenced blocks of ``markdown`` (continuation
    lines joined, comments dropped), except lines with ``[optional]`` or ``a|b`` placeholders."""
    commands = []
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", markdown, re.S | re.M):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            line = re.sub(r"^(torchrun .*?-m |\.venv/bin/)", "", line)
            if line.startswith("searchprune ") and not re.search(r"[\[|]|\.\.\.", line):
                commands.append(line)
    return commands


def test_documented_commands_parse():
    """Each command the README and the docs show is accepted by the parser (flag names, values,
    required arguments), so renaming a flag fails here, not in a reader's terminal."""
    import shlex

    parser = build_parser()
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    checked = 0
    for page in pages:
        for command in documented_commands(page.read_text()):
            try:
                parser.parse_args(shlex.split(command)[1:])
            except SystemExit:
                pytest.fail(f"{page.relative_to(ROOT)}: the parser refuses {command!r}")
            checked += 1
    assert checked >= 30
