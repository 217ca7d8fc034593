"""The texts that claims quote: what identifies each, and where to find a copy.

Every claim record (``experiments/claims.py`` and the stages beside it)
quotes a sentence verbatim from one of two sources. Their text is not ours to
ship, so the repository keeps only what identifies each source and the
SHA-256 of the exact text the quotes were checked against; the user points
trajax at a copy:

1. ``$TRAJAX_PAPER_TEXT``: the paper's text file (the notes are looked for
   beside it), or a directory holding both files;
2. ``papers/`` at the repository root (git-ignored, for a local copy);
3. ``shared/papers/`` in this checkout's directory or any directory above it
   (the team's layout).

The quote checks in ``tests/`` run whenever a copy is found and fail if its
digest differs from the recorded one (the quotes were checked against other
words); without a copy they are skipped with one line saying how to enable
them. Nothing outside the tests reads these texts: ``make demo`` never needs
them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

ENV = "TRAJAX_PAPER_TEXT"
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))


@dataclasses.dataclass(frozen=True)
class Source:
  """One quoted text: its identity, the file name of a copy, the digest of that copy."""

  name: str
  title: str
  identifier: str
  file: str
  sha256: str


PAPER = Source(
  name="paper",
  title=(
    "Sandler, Zhmoginov, Vladymyrov, Miller (2023). Training trajectories, mini-batch "
    "losses and the curious role of the learning rate."
  ),
  # The copy's abstract reads "averaging just two points a few steps apart",
  # the wording of the first arXiv version (later versions say "many steps").
  identifier="arXiv:2301.02312v1 (https://arxiv.org/abs/2301.02312v1), as plain text",
  file="training-trajectories-paper.txt",
  sha256="59d7a3326ce407bbb1f5aaeec03312ae25cd89bce2a4045f3a436c1754babdc2",
)
NOTES = Source(
  name="notes",
  title=(
    "Understanding convergence of SGD: batch size, learning rate, weight averaging, "
    "and solutions that generalize better (blog notes on McCandlish et al. 2018, "
    "Keskar et al. 2017, Smith & Le 2018, Smith et al. 2018, Izmailov et al. 2018)"
  ),
  # The copy the team received is Markdown with front matter and no address of
  # its own; the digest pins it.
  identifier="companion notes, Markdown copy (no canonical address recorded)",
  file="sgd-convergence-notes.md",
  sha256="a966932f9be9075dc36c194fdc88697966d10fa7dd93088aacaabf72e47a33f6",
)
SOURCES = {s.name: s for s in (PAPER, NOTES)}


class SourceNotFound(FileNotFoundError):
  """No copy of a quoted text was found where :func:`find_source` looks."""


class SourceMismatch(ValueError):
  """A copy was found, but it is not the text the quotes were checked against."""


def how_to_enable() -> str:
  """The one line that tells a user how to let the quote checks run."""
  return (
    f"set {ENV}=/path/to/{PAPER.file} ({PAPER.identifier.split(' ')[0]}; "
    f"{NOTES.file} beside it), or copy both into {os.path.join(REPO, 'papers')}/"
  )


def _candidates(start: str | None) -> list[str]:
  """Directories that may hold the copies, in the order of the module docstring."""
  dirs = []
  env = os.environ.get(ENV)
  if env:
    if os.path.isdir(env):
      dirs.append(env)
    elif os.path.isfile(env):
      dirs.append(os.path.dirname(os.path.abspath(env)))
    else:
      raise SourceNotFound(f"{ENV}={env!r} is neither a file nor a directory")
  dirs.append(os.path.join(REPO, "papers"))
  here = os.path.abspath(start or REPO)
  while True:
    dirs.append(os.path.join(here, "shared", "papers"))
    up = os.path.dirname(here)
    if up == here:
      return dirs
    here = up


def find_source(name: str, start: str | None = None) -> str:
  """Path of a copy of source ``name`` (``'paper'`` or ``'notes'``); see the module docstring.

  ``$TRAJAX_PAPER_TEXT`` may name the paper's file itself (whatever its name);
  every other copy is found by its file name in the directories listed there.
  ``start`` (default: the repository root) is where the upward search begins.
  """
  if name not in SOURCES:
    raise ValueError(f"claim source {name!r}: must be one of {sorted(SOURCES)}")
  env = os.environ.get(ENV)
  if name == "paper" and env and os.path.isfile(env):
    return env
  for d in _candidates(start):
    path = os.path.join(d, SOURCES[name].file)
    if os.path.isfile(path):
      return path
  raise SourceNotFound(f"no copy of {SOURCES[name].file!r} found; {how_to_enable()}")


def digest(path: str) -> str:
  """SHA-256 of a file's bytes, as hex."""
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def read_source(name: str, start: str | None = None) -> str:
  """The text of source ``name``, checked against its recorded SHA-256.

  Raises :class:`SourceNotFound` when there is no copy, :class:`SourceMismatch`
  when the copy is not the text the quotes were checked against.
  """
  path = find_source(name, start)
  got = digest(path)
  if got != SOURCES[name].sha256:
    raise SourceMismatch(
      f"{path!r} has SHA-256 {got[:12]}..., not {SOURCES[name].sha256[:12]}... of the "
      f"{SOURCES[name].identifier} text the quotes were checked against"
    )
  with open(path, encoding="utf-8") as f:
    return f.read()
