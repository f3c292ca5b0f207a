"""The README's quick start is what CI runs: keep them in sync."""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _quick_start():
    text = (REPO / "README.md").read_text()
    block = re.search(r"## Quick start\s+```bash\n(.*?)```", text, re.S)
    assert block, "README has no Quick start bash block"
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


def test_quick_start_is_two_commands():
    commands = _quick_start()
    assert len(commands) == 2
    assert commands[0].endswith("python -m sfpn_edge.bench")


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert _quick_start()[1] in [line.strip() for line in ci]
