"""docs/tutorial.md, run as written: every ``bash`` block and every file block (```` ```lang
title="NAME" ````), in order, in one shell, on a tiny generated ImageFolder.

Only the numbers in :data:`SMALLER` are shrunk (fewer trials, epochs, calibration images; no
latency timing), so the run takes a couple of minutes; each must still be in the tutorial, so a
changed tutorial fails here rather than silently running at full size. ``shell`` blocks (the
setup: activating the venv) and ``text`` blocks (output) are not run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = ROOT / "docs" / "tutorial.md"

# (as written in the tutorial, what the test runs instead)
SMALLER = [
    ("python train_my_model.py my-images 15", "python train_my_model.py my-images 1"),
    ("calib_size: 512 ", "calib_size: 32 "),
    ("n_trials: 30 ", "n_trials: 3 "),
    ("--seeds 2 --n-trials 20", "--seeds 1 --n-trials 2"),
    ("--top 3 --epochs 2 --final-epochs 10", "--top 1 --epochs 1 --final-epochs 1"),
    ("--out exported/", "--out exported/ --no-latency"),
]
_FENCE = re.compile(r"^```(\w+)?(?:\s+title=\"([^\"]+)\")?\s*$")


@dataclass
class Block:
    lang: str
    title: str | None
    text: str
    line: int  # of the opening fence, 1-based


def code_blocks(markdown: str) -> list[Block]:
    """The fenced code blocks of ``markdown`` (top-level fences only), in order."""
    blocks, open_block, lines = [], None, []
    for number, line in enumerate(markdown.splitlines(), 1):
        if open_block is None:
            match = _FENCE.match(line)
            if match:
                open_block, lines = Block(match.group(1) or "", match.group(2), "", number), []
        elif line.strip() == "```":
            open_block.text = "\n".join(lines) + "\n"
            blocks.append(open_block)
            open_block = None
        else:
            lines.append(line)
    return blocks


def runnable(blocks: list[Block]) -> list[Block]:
    return [b for b in blocks if b.lang == "bash" or b.title]


def shell_script(blocks: list[Block]) -> str:
    """One bash script: file blocks become here-documents, bash blocks run as they are; a
    marker line on stderr before each block says which one ran last."""
    parts = ["set -euo pipefail"]
    for b in runnable(blocks):
        parts.append(f"echo '### tutorial block at line {b.line}' >&2")
        if b.title:
            parts.append(f"cat > {b.title} <<'TUTORIAL_EOF'\n{b.text}TUTORIAL_EOF")
        else:
            parts.append(b.text)
    return "\n".join(parts) + "\n"


def shrink(markdown: str) -> str:
    for written, small in SMALLER:
        assert written in markdown, (f"{written!r} is no longer in docs/tutorial.md; update "
                                     "SMALLER in tests/test_tutorial.py")
        markdown = markdown.replace(written, small)
    return markdown


def make_images(root: Path, classes: int = 10, train: int = 8, test: int = 6) -> None:
    """A tiny ImageFolder: 40x40 PNGs, one colour per class plus noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("test", test)):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            colour = rng.integers(0, 256, 3)
            for i in range(n):
                pixels = (colour + rng.normal(0, 30, (40, 40, 3))).clip(0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")


def run_tutorial(markdown: str, where: Path, timeout: float = 1800) -> subprocess.CompletedProcess:
    make_images(where / "my-images")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=str(ROOT), COLUMNS="120")
    env.pop("SEARCHPRUNE_STORAGE", None)
    return subprocess.run(["bash", "-c", shell_script(code_blocks(markdown))], cwd=where,
                          env=env, capture_output=True, text=True, timeout=timeout)


def _failure(result: subprocess.CompletedProcess) -> str:
    marks = re.findall(r"### tutorial block at line \d+", result.stderr)
    return (f"the tutorial failed (exit {result.returncode}) in the "
            f"{marks[-1][4:] if marks else 'first block'}:\n{result.stderr[-3000:]}")


def test_the_tutorial_blocks_are_what_the_test_runs():
    blocks = code_blocks(TUTORIAL.read_text())
    run = runnable(blocks)
    assert [b.title for b in run if b.title] == [
        "train_my_model.py", "my-study.yaml", "load_export.py"]
    commands = " ".join(b.text for b in run if b.lang == "bash")
    for step in ("train_my_model.py", "model info", "study run", "study show", "--plot",
                 "compare", "--baselines", "finetune", "export", "load_export.py"):
        assert step in commands, step
    assert {b.lang for b in blocks} <= {"bash", "shell", "text", "python", "yaml"}
    assert "searchprune" not in next(b.text for b in run if b.title == "load_export.py")


def test_a_mistake_in_a_tutorial_command_fails(tmp_path):
    """The runner stops at the first failing command and names its block."""
    broken = shrink(TUTORIAL.read_text()).replace(
        "python train_my_model.py my-images 1", "python train_my_model.py my-imgs 1")
    result = run_tutorial(broken, tmp_path, timeout=600)
    assert result.returncode != 0
    line = 1 + TUTORIAL.read_text().splitlines().index("python train_my_model.py my-images 15")
    assert f"### tutorial block at line {line - 1}" in _failure(result)
    assert not (tmp_path / "my_resnet18.pt").exists()


@pytest.mark.slow
def test_the_tutorial_runs(tmp_path):
    result = run_tutorial(shrink(TUTORIAL.read_text()), tmp_path)
    assert result.returncode == 0, _failure(result)
    exported = tmp_path / "exported"
    assert {"model.pt2", "state_dict.pt", "card.json"} <= {p.name for p in exported.iterdir()}
    assert (tmp_path / "my-study.png").stat().st_size > 0
    assert (tmp_path / "report" / "report.md").is_file()
    last = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"pruned model: 0\.\d\d of the FLOPs, \d\.\d\d of the params; "
                        r"\d+% of 60 test images right", last), last
    # the export loads where searchprune cannot be imported at all
    blocked = ("import runpy, sys; sys.modules['searchprune'] = None; "
               "runpy.run_path('load_export.py')")
    alone = subprocess.run([sys.executable, "-c", blocked], cwd=tmp_path, capture_output=True,
                           text=True, timeout=300)
    assert alone.returncode == 0, alone.stderr[-2000:]
    assert alone.stdout.startswith("pruned model: ")
