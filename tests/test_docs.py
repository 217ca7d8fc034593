"""Docs that run: the README's and docs/*.md's code, the docstring examples, the API reference.

* Every fenced ``python`` block of README.md and docs/*.md is executed, in
  order, one namespace per file (a block may use names an earlier block of the
  same file defined), in a temporary directory.
* Every ``>>>`` example in the docstrings of trajax.averaging,
  trajax.schedules, trajax.theory, trajax.posthoc and trajax.probes (every
  submodule) runs as a doctest, with ELLIPSIS and NORMALIZE_WHITESPACE.
* Every command in README.md's ``bash`` blocks is run as written (slow), or
  carries a marker in its trailing comment saying why not: ``needs: WHAT``
  (hardware or data a test machine lacks) or ``not run by tests: WHY``. A
  command that is neither fails :func:`test_every_readme_command_is_run_or_marked`.
  The runner reads the commands from README.md at test time: the README is
  the single source of what runs.
* ``make docs`` (Sphinx, warnings as errors) builds the API reference (~15 s).

Setup before a block: an HTML comment right before a fence (invisible on the
rendered page),

    <!-- test-setup
    params = {"w": jnp.zeros(3)}
    -->

is Python run by this module just before the block, in the block's namespace
and directory. Besides the file's own names it may call ``tiny_run(path)``,
which copies a tiny trained run of ``configs/mnist1d.py`` at ``path``: the
README's training command shrunk by :data:`TINY_RUN` (trained once per module,
in-process; its 6000 steps keep every step the README names).

Shrinking: a command that trains with ``--config=configs/mnist1d.py`` gets
:data:`SHRINK` appended, ``--config.<field>=`` overrides only (the override
syntax the README uses), none of which changes a step the commands name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import doctest
import importlib
import io
import os
import pkgutil
import re
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
DOC_FILES = [README] + sorted(
  os.path.join(REPO, "docs", f) for f in os.listdir(os.path.join(REPO, "docs")) if f.endswith(".md")
)
DOCTEST_PACKAGES = (
  "trajax.averaging",
  "trajax.schedules",
  "trajax.theory",
  "trajax.posthoc",
  "trajax.probes",
)
# Public functions that must carry a >>> example (the main entry points).
MUST_HAVE_EXAMPLES = (
  "trajax.averaging.ema",
  "trajax.averaging.averaged_params",
  "trajax.averaging.kernel",
  "trajax.schedules.equivalent_schedule",
  "trajax.theory.expected_loss",
  "trajax.theory.stationary_variance",
  "trajax.posthoc.target",
  "trajax.posthoc.user_kernel",
  "trajax.posthoc.equivalent_schedule",
  "trajax.probes.l2_distance",
  "trajax.probes.epsilon_max",
  "trajax.probes.hessian_top_eigs",
)
# The README's mnist1d run, shrunk for the commands that train: a narrower CNN
# on a smaller pool, cheaper evaluation. Steps (6000 in all, checkpoints every
# 1000) and the batch size (the probes' B) are the README's own.
SHRINK = (
  "--config.model.width=8",
  "--config.dataset.num_train=2000",
  "--config.eval_batch_size=100",
  "--config.averaging.bn_recompute_batches=2",
  "--config.log_every_steps=1000",
)
# tiny_run(): cheaper still (the blocks that use it only read its checkpoints).
TINY_RUN = (*SHRINK, "--config.model.width=4", "--config.batch_size=8")
MARKERS = ("needs:", "not run by tests:")
SHRUNK_CONFIG = "--config=configs/mnist1d.py"


# --------------------------------------------------------------------------- extraction


@dataclasses.dataclass
class Block:
  path: str
  line: int  # 1-based line of the opening fence
  lang: str
  code: str
  setup: str  # the test-setup comment's code ('' if none)


_FENCE = re.compile(r"^```(\w*)\s*$")
_SETUP = re.compile(r"<!--\s*test-setup\b[^\n]*\n(.*)-->", re.S)


def extract_blocks(path: str) -> list[Block]:
  """The fenced blocks of a Markdown file, each with its test-setup comment."""
  lines = open(path, encoding="utf-8").read().splitlines()
  blocks, i = [], 0
  while i < len(lines):
    m = _FENCE.match(lines[i])
    if not m:
      i += 1
      continue
    start, lang = i, m.group(1)
    j = i + 1
    while j < len(lines) and not lines[j].startswith("```"):
      j += 1
    if j == len(lines):
      raise ValueError(f"{path}:{start + 1}: unclosed code fence")
    before = "\n".join(lines[:start]).rstrip()
    opened = before.rfind("<!-- test-setup")
    s = _SETUP.fullmatch(before[opened:]) if opened >= 0 and before.endswith("-->") else None
    setup = s.group(1) if s and "-->" not in s.group(1) else ""
    blocks.append(Block(path, start + 1, lang, "\n".join(lines[start + 1 : j]) + "\n", setup))
    i = j + 1
  return blocks


@dataclasses.dataclass
class Command:
  line: int
  text: str  # the command as written, continuations joined, comment removed
  comment: str

  @property
  def marker(self) -> str | None:
    for m in MARKERS:
      k = self.comment.find(m)
      if k >= 0:
        return self.comment[k:].strip()
    return None


def _split_comment(line: str) -> tuple[str, str]:
  """(code, comment) at the first '#' outside quotes that starts a word."""
  quote = None
  for k, ch in enumerate(line):
    if quote:
      quote = None if ch == quote else quote
    elif ch in "'\"":
      quote = ch
    elif ch == "#" and (k == 0 or line[k - 1].isspace()):
      return line[:k].rstrip(), line[k + 1 :].strip()
  return line.rstrip(), ""


def extract_commands(block: Block) -> list[Command]:
  """The shell commands of a bash block: backslash continuations joined."""
  out, parts, comments, first = [], [], [], None
  for n, raw in enumerate(block.code.splitlines()):
    code, comment = _split_comment(raw)
    if not code.strip() and not parts:
      continue
    first = block.line + 1 + n if first is None else first
    comments.append(comment)
    if code.endswith("\\"):
      parts.append(code[:-1].strip())
      continue
    parts.append(code.strip())
    out.append(Command(first, " ".join(p for p in parts if p), " ".join(c for c in comments if c)))
    parts, comments, first = [], [], None
  assert not parts, f"{block.path}:{block.line}: a command ends in a continuation"
  return out


def readme_bash_blocks() -> list[Block]:
  return [b for b in extract_blocks(README) if b.lang == "bash"]


# --------------------------------------------------------------------------- the tiny run


def _apply_overrides(config, flags) -> None:
  import ast

  for flag in flags:
    key, value = flag.removeprefix("--config.").split("=", 1)
    *path, last = key.split(".")
    node = config
    for p in path:
      node = node[p]
    node[last] = ast.literal_eval(value)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
  """configs/mnist1d.py as the README trains it, shrunk by TINY_RUN (in-process)."""
  from configs import mnist1d
  from trajax import loop

  config = mnist1d.get_config()
  _apply_overrides(config, TINY_RUN)
  workdir = str(tmp_path_factory.mktemp("docs_run") / "mnist1d")
  with contextlib.redirect_stdout(io.StringIO()):
    loop.train_and_evaluate(config, workdir)
  return workdir


def _tiny_run_copier(trained_run, cwd):
  def tiny_run(path: str) -> str:
    # A copy, not a link: posthoc refuses a run reached through a symlink.
    target = os.path.join(cwd, path)
    if os.path.isdir(target):
      return target  # a later block of the same file asks again
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.copytree(trained_run, target, ignore=shutil.ignore_patterns(".trajax.lock"))
    return target

  return tiny_run


def _scratch_dir(tmp_path) -> str:
  """A working directory where the docs' relative paths (configs/...) resolve."""
  d = str(tmp_path / "cwd")
  os.makedirs(d)
  os.symlink(os.path.join(REPO, "configs"), os.path.join(d, "configs"))
  return d


def _needs_run(blocks) -> bool:
  return any("tiny_run(" in b.setup for b in blocks)


# --------------------------------------------------------------------------- code blocks


def _files_with_python():
  return [
    pytest.param(p, id=os.path.relpath(p, REPO))
    for p in DOC_FILES
    if any(b.lang == "python" for b in extract_blocks(p))
  ]


def test_extractor_finds_the_readme_blocks_and_their_setup():
  blocks = extract_blocks(README)
  python = [b for b in blocks if b.lang == "python"]
  assert len(python) >= 2 and all(b.code.strip() for b in python)
  assert all(b.setup for b in python), "each README Python block has its test-setup"
  commands = [c for b in readme_bash_blocks() for c in extract_commands(b)]
  assert len(commands) >= 10
  # Continuations are joined into one command, and a '#' inside quotes is not a comment.
  assert any(
    c.text.startswith("python -m trajax.sidetrip") and "--config.sidetrip.steps=500" in c.text
    for c in commands
  )
  assert _split_comment("""echo '#x' "#y" # z""") == ("""echo '#x' "#y\"""", "z")
  # Shrinking only overrides config fields (the README's --config.<field>= syntax),
  # never the steps the README's commands name.
  for flag in SHRINK + TINY_RUN:
    key = flag.split("=")[0].removeprefix("--config.")
    assert flag.startswith("--config.") and not key.startswith(("total_steps", "checkpoint")), flag


@pytest.mark.parametrize("path", _files_with_python())
def test_python_blocks_run(path, tmp_path, request, monkeypatch):
  """Each Python block runs, after its test-setup, in one namespace per file."""
  blocks = [b for b in extract_blocks(path) if b.lang == "python"]
  cwd = _scratch_dir(tmp_path)
  monkeypatch.chdir(cwd)
  namespace = {"__name__": "__docs__"}
  if _needs_run(blocks):
    namespace["tiny_run"] = _tiny_run_copier(request.getfixturevalue("trained_run"), cwd)
  for b in blocks:
    where = f"{os.path.relpath(b.path, REPO)}:{b.line}"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
      if b.setup:
        exec(compile(b.setup, f"{where} (test-setup)", "exec"), namespace)
      exec(compile(b.code, where, "exec"), namespace)


# --------------------------------------------------------------------------- doctests


def _modules():
  for name in DOCTEST_PACKAGES:
    module = importlib.import_module(name)
    yield module
    if hasattr(module, "__path__"):
      for info in pkgutil.iter_modules(module.__path__, name + "."):
        if not info.name.endswith("__main__"):
          yield importlib.import_module(info.name)


def _doctests():
  finder = doctest.DocTestFinder(exclude_empty=True)
  tests = []
  for module in _modules():
    tests += [t for t in finder.find(module, module.__name__) if t.examples]
  return tests


def test_main_public_functions_have_examples():
  names = {t.name for t in _doctests()}
  # DocTestFinder names a function by the module that defines it.
  missing = [
    n for n in MUST_HAVE_EXAMPLES if not any(m.endswith("." + n.rsplit(".", 1)[1]) for m in names)
  ]
  assert not missing, f"no >>> example in: {missing}"


@pytest.mark.parametrize("package", DOCTEST_PACKAGES)
def test_docstring_examples(package):
  runner = doctest.DocTestRunner(
    optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False
  )
  tests = [t for t in _doctests() if t.name.startswith(package)]
  assert tests, f"{package}: no >>> examples found"
  out = io.StringIO()
  for t in tests:
    runner.run(t, out=out.write)
  result = runner.summarize(verbose=False)
  assert result.attempted > 0
  assert result.failed == 0, out.getvalue()


# --------------------------------------------------------------------------- shell commands


def command_problems(blocks) -> list[str]:
  """Commands the runner would not run that carry no marker saying why (empty: all good)."""
  problems = []
  for b in blocks:
    for c in extract_commands(b):
      where = f"{os.path.relpath(b.path, REPO)}:{c.line}: {c.text!r}"
      if c.marker:
        if not c.marker.split(":", 1)[1].strip(" )"):
          problems.append(f"{where}: the marker says nothing ({c.marker!r})")
      elif not c.text.startswith("python -m "):
        problems.append(f"{where}: neither run by tests (python -m ...) nor marked {MARKERS}")
  return problems


def test_every_readme_command_is_run_or_marked():
  """Unmarked commands are Python entry points the runner below executes; the rest say why not."""
  problems = command_problems(readme_bash_blocks())
  assert not problems, "\n".join(problems)
  marked = {c.text for b in readme_bash_blocks() for c in extract_commands(b) if c.marker}
  assert {"make test", "make demo"} <= marked  # never run recursively
  # The check itself: an unmarked command the runner cannot run, or an empty marker, is caught.
  fake = Block(README, 1, "bash", "make demo\ngsutil ls gs://b  # needs:\npython -m x  # ok\n", "")
  assert len(command_problems([fake])) == 2


def _run_command(command: Command, cwd: str) -> subprocess.CompletedProcess:
  text = command.text
  if SHRUNK_CONFIG in text.split():
    text = f"{text} {' '.join(SHRINK)}"
  env = dict(os.environ)
  env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  return subprocess.run(
    ["bash", "-c", text], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
  )


def _bash_blocks_to_run():
  params = []
  for b in readme_bash_blocks():
    if any(not c.marker for c in extract_commands(b)):
      params.append(pytest.param(b, id=f"README.md:{b.line}"))
  return params


@pytest.mark.slow
@pytest.mark.parametrize("block", _bash_blocks_to_run())
def test_readme_commands_run_as_written(block, tmp_path, request, monkeypatch):
  """Each README bash block in a fresh directory: its test-setup, then its unmarked commands."""
  cwd = _scratch_dir(tmp_path)
  monkeypatch.chdir(cwd)
  if block.setup:
    namespace = {"__name__": "__docs__"}
    if _needs_run([block]):
      namespace["tiny_run"] = _tiny_run_copier(request.getfixturevalue("trained_run"), cwd)
    exec(compile(block.setup, f"README.md:{block.line} (test-setup)", "exec"), namespace)
  for c in extract_commands(block):
    if c.marker:
      continue
    done = _run_command(c, cwd)
    assert done.returncode == 0, (
      f"README.md:{c.line}: {c.text}\nexit {done.returncode}\n{done.stdout[-3000:]}\n"
      f"{done.stderr[-3000:]}"
    )


# --------------------------------------------------------------------------- API reference


def test_api_reference_builds_without_warnings(tmp_path):
  """`make docs`' Sphinx build, warnings as errors, into a scratch directory."""
  assert shutil.which("make"), "make is not installed"
  stamp = tmp_path / "installed"  # newer than pyproject.toml: `make install` is not re-run
  stamp.touch()
  done = subprocess.run(
    [
      "make",
      "-s",
      "docs",
      f"PY={sys.executable}",
      f"STAMP={stamp}",
      f"DOCS_BUILD={tmp_path / 'html'}",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
  for page in ("averaging", "schedules", "theory", "posthoc", "probes", "runs"):
    html = open(tmp_path / "html" / f"{page}.html", encoding="utf-8").read()
    assert f"trajax.{page}" in html
  assert "equivalent_schedule" in open(tmp_path / "html" / "schedules.html").read()
