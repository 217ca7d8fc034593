"""Shared pytest set-up: where the quoted sources' text is (see experiments/sources.py)."""

from __future__ import annotations

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
      pytest.skip(f"quote check needs the {name}'s text: {sources.how_to_enable()}")

  return read
