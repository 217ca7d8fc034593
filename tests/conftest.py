"""Shared pytest set-up: where the quoted sources' text is (experiments/sources.py), and
fixtures that several test files share across xdist workers (the tiny demo)."""

from __future__ import annotations

import contextlib
import fcntl
import os

import pytest


def pytest_addoption(parser):
  parser.addoption(
    "--paper_text",
    default=None,
    help="path of the paper's text (or a directory with it and the notes) for the quote checks; "
    "same as TRAJAX_PAPER_TEXT",
  )


def pytest_configure(config):
  path = config.getoption("--paper_text")
  if path:
    os.environ["TRAJAX_PAPER_TEXT"] = os.path.abspath(path)


@pytest.fixture
def source_text():
  """``source_text(name)``: the verified text of a quoted source, or a one-line skip without a copy.

  A copy whose SHA-256 differs from the recorded one fails the test: the
  quotes would be checked against other words.
  """
  from experiments import sources

  def read(name: str) -> str:
    try:
      return sources.read_source(name)
    except sources.SourceNotFound:
      pytest.skip(f"quote check needs the text of the {name}: {sources.how_to_enable()}")

  return read


def shared_tmp(tmp_path_factory, name: str):
  """A temporary path shared by every xdist worker of this session (one per session without xdist)."""
  base = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    base = base.parent  # pytest-N/, above each worker's popen-gwK/
  return base / name


@contextlib.contextmanager
def exclusive(path):
  """Holds an OS lock on ``path`` (created if missing) for the ``with`` block."""
  with open(path, "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory):
  """``(workdir, report)`` of one ``make demo --tiny`` per session, shared across xdist workers.

  The demo is resumable: the first worker to take the lock runs it, the others
  then read the finished stages back (seconds) instead of training again.
  """
  from experiments import demo

  root = shared_tmp(tmp_path_factory, "tiny_demo")
  with exclusive(f"{root}.lock"):
    out = demo.main(["--workdir", str(root), "--tiny"])
  return str(root), out
