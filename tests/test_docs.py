"""The manual's commands work: every fenced ``clrun`` command in README.md composes through the console script
(``--cfg job``), and every one in docs/ composes as clrun would run it, so a renamed key or preset breaks the
build. The README stays a manual."""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ValueType

from clrun.app import compose
from tests.conftest import FAST, REPO

FENCE = re.compile(r"^```(bash|sh|)\n(.*?)^```", re.S | re.M)
ENV = re.compile(r"^[A-Z_]+=")


def fenced_commands(path: Path) -> list[tuple[dict[str, str], list[str]]]:
    """``(environment, arguments)`` of each ``clrun`` command in the file's fenced blocks (continuation lines
    joined, comments and anything before ``&&`` dropped)."""
    found = []
    for _, block in FENCE.findall(path.read_text()):
        for line in block.replace("\\\n", " ").splitlines():
            if "clrun " not in line and not line.strip().endswith("clrun"):
                continue
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                env = {}
                while words and ENV.match(words[0]):
                    key, _, value = words.pop(0).partition("=")
                    env[key] = value
                if words and words[0] == "clrun":
                    found.append((env, words[1:]))
    return found


def one_cell(args: list[str]) -> list[str]:
    """A sweep command as the single job of its first cell: ``--cfg`` cannot be combined with ``-m``."""
    parser = OverridesParser.create()
    cell = []
    for a in args:
        if a in ("-m", "--multirun"):
            continue
        o = parser.parse_override(a) if "=" in a and not a.startswith("-") else None
        if o is None or not o.is_sweep_override():
            cell.append(a)
        elif o.value_type == ValueType.INTERVAL_SWEEP:  # an optimising sweeper's range: its lower end
            cell.append(f"{o.get_key_element()}={o.value().start}")
        else:
            cell.append(f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}")
    return cell


README_COMMANDS = fenced_commands(REPO / "README.md")
DOCS_COMMANDS = [(p, env, args) for p in sorted((REPO / "docs").rglob("*.md")) for env, args in fenced_commands(p)]


def test_the_readme_is_a_manual_and_has_commands():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 300
    assert len(README_COMMANDS) >= 10 and len(DOCS_COMMANDS) >= 12
    assert (["-m", "paper=der2020/seq_mnist_buffer"] in [args for _, args in README_COMMANDS])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A run directory for the README's ``clrun --resume DIR``."""
    out = tmp_path_factory.mktemp("resume") / "run"
    subprocess.run([sys.executable, "-m", "clrun.app", *FAST, "benchmark.n_tasks=2", "iters=1",
                    f"hydra.run.dir={out}"], check=True, capture_output=True)
    return out


# runs each command's console-script entry point in one interpreter (Hydra starts in a second per process)
RUNNER = """
import contextlib, io, json, os, sys
from clrun.app import main
results = []
for cwd, env, argv in json.loads(sys.argv[1]):
    os.chdir(cwd)
    saved = dict(os.environ)
    os.environ.update(env)
    out, err = io.StringIO(), io.StringIO()
    sys.argv = ["clrun", *argv, "--cfg", "job"]
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main()
        except SystemExit as e:
            code = e.code
    os.environ.clear()
    os.environ.update(saved)
    results.append([code, out.getvalue(), err.getvalue()[-1500:]])
print(json.dumps(results))
"""


def test_every_readme_command_composes_through_the_console_script(finished_run):
    commands = []
    for env, args in README_COMMANDS:
        if args[:1] == ["--resume"]:
            args = ["--resume", str(finished_run)]
        cwd = REPO / "examples" / "my_project" if "CLRUN_CONFIG_PATH" in env else REPO
        commands.append([str(cwd), env, one_cell(args)])
    proc = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(commands)], capture_output=True, text=True,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for (_, env, args), (code, out, err) in zip(commands, json.loads(proc.stdout.splitlines()[-1])):
        assert code in (0, None) and "_target_" in out, (env, args, err)


@pytest.mark.parametrize("path,env,args", DOCS_COMMANDS,
                         ids=[f"{p.name}: {' '.join(a)[:50]}" for p, _, a in DOCS_COMMANDS])
def test_every_docs_command_composes_as_clrun_would_run_it(path, env, args):
    overrides = [a for a in one_cell(args) if "=" in a and not a.startswith("-")]
    if "CLRUN_CONFIG_PATH" in env or any(a.startswith("--resume") for a in args):
        pytest.skip("a user's config directory or run directory; the README's example covers the path")
    # hydra's own keys are settings of the run's directory and launcher, which compose does not take
    cfg = compose(*[o for o in overrides if not o.lstrip("+").startswith("hydra.")])
    assert cfg.method._target_ and cfg.benchmark._target_
