"""Where the quoted texts are found, and that a different text is refused (experiments/sources.py).

These run without the real texts: they build stand-in copies in a temporary
directory. The quote checks themselves (test_claims, test_curvature,
test_batch_size_vs_decay) read the real copies through the ``source_text``
fixture of conftest.py.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest

from experiments import sources


def _copy(dirpath, source, text):
  path = os.path.join(dirpath, source.file)
  with open(path, "w") as f:
    f.write(text)
  return path


def test_records_identify_each_source():
  for s in sources.SOURCES.values():
    assert len(s.sha256) == 64 and int(s.sha256, 16) >= 0
    assert s.title and s.identifier and s.file
  assert "arXiv:2301.02312" in sources.PAPER.identifier


def test_env_file_or_directory_and_the_notes_beside(tmp_path, monkeypatch):
  paper = _copy(tmp_path, sources.PAPER, "paper words")
  notes = _copy(tmp_path, sources.NOTES, "notes words")
  monkeypatch.setenv(sources.ENV, paper)
  assert sources.find_source("paper") == paper
  assert sources.find_source("notes") == notes
  monkeypatch.setenv(sources.ENV, str(tmp_path))
  assert sources.find_source("paper") == paper
  # A paper copy under another name is taken when named directly.
  other = tmp_path / "my-copy.txt"
  other.write_text("x")
  monkeypatch.setenv(sources.ENV, str(other))
  assert sources.find_source("paper") == str(other)
  with pytest.raises(ValueError, match=r"claim source 'blog': must be one of \['notes', 'paper'\]"):
    sources.find_source("blog")


def test_upward_search_finds_shared_papers(tmp_path, monkeypatch):
  monkeypatch.delenv(sources.ENV, raising=False)
  (tmp_path / "shared" / "papers").mkdir(parents=True)
  paper = _copy(tmp_path / "shared" / "papers", sources.PAPER, "p")
  deep = tmp_path / "a" / "b"
  deep.mkdir(parents=True)
  monkeypatch.setattr(sources, "REPO", str(tmp_path / "nowhere"))
  assert sources.find_source("paper", str(deep)) == paper


def test_missing_copy_says_how_to_enable(tmp_path, monkeypatch):
  monkeypatch.setattr(sources, "REPO", str(tmp_path / "repo"))
  monkeypatch.delenv(sources.ENV, raising=False)
  with pytest.raises(sources.SourceNotFound, match=r"set TRAJAX_PAPER_TEXT=.*papers/"):
    sources.find_source("notes", str(tmp_path))
  monkeypatch.setenv(sources.ENV, str(tmp_path / "missing.txt"))
  with pytest.raises(FileNotFoundError, match=r"TRAJAX_PAPER_TEXT='.*missing.txt' is neither"):
    sources.find_source("paper")


def test_a_different_text_is_refused(tmp_path, monkeypatch):
  text = "Training trajectories, but edited."
  paper = _copy(tmp_path, sources.PAPER, text)
  monkeypatch.setenv(sources.ENV, paper)
  assert sources.digest(paper) == hashlib.sha256(text.encode()).hexdigest()
  with pytest.raises(sources.SourceMismatch, match=r"SHA-256 .* arXiv:2301.02312v1"):
    sources.read_source("paper")
  # The recorded digest is what read_source accepts.
  rec = sources.dataclasses.replace(sources.PAPER, sha256=sources.digest(paper))
  monkeypatch.setitem(sources.SOURCES, "paper", rec)
  assert sources.read_source("paper") == text


def test_without_a_copy_the_quote_check_skips_with_one_line(tmp_path):
  """A fresh clone: the quote tests report one skip line saying how to enable them."""
  env = {k: v for k, v in os.environ.items() if k != sources.ENV}
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  test = tmp_path / "test_q.py"
  test.write_text(
    "from experiments import sources\n"
    "def test_q(source_text, monkeypatch):\n"
    "  monkeypatch.setattr(sources, 'REPO', '/nonexistent')\n"
    "  monkeypatch.setattr(sources, '_candidates', lambda start: ['/nonexistent'])\n"
    "  source_text('paper')\n"
  )
  (tmp_path / "conftest.py").write_text(open(os.path.join(repo, "tests", "conftest.py")).read())
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "pytest",
      "-q",
      "-rs",
      "-p",
      "no:cacheprovider",
      "-p",
      "no:xdist",
      str(test),
    ],
    cwd=tmp_path,
    env={**env, "PYTHONPATH": repo},
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert out.returncode == 0, out.stdout + out.stderr
  skips = [ln for ln in out.stdout.splitlines() if ln.startswith("SKIPPED")]
  assert len(skips) == 1 and "set TRAJAX_PAPER_TEXT=" in skips[0], out.stdout
