"""Sphinx configuration of the API reference (`make docs`; output in build/docs, gitignored)."""

import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

project = "trajax"
author = "trajax authors"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.mathjax"]
napoleon_google_docstring = True
napoleon_numpy_docstring = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "show-inheritance": False}
exclude_patterns = ["_build"]
html_theme = "alabaster"
# NamedTuple states document their fields in an "Attributes:" section: keep
# those (as :ivar: fields) and skip the generated "Alias for field number n".
napoleon_use_ivar = True


def _skip_namedtuple_fields(app, what, name, obj, skip, options):
  doc = getattr(obj, "__doc__", None) or ""
  return True if doc.startswith("Alias for field number") else None


# The docstrings write maths in plain text, where |x| is an absolute value or a
# norm; in reStructuredText |x| is a substitution. Escape the bars in prose
# (not in ``literals``, literal blocks or >>> examples) before parsing.
def _escape_bars(app, what, name, obj, options, lines):
  literal_indent = None
  for i, line in enumerate(lines):
    stripped = line.lstrip()
    indent = len(line) - len(stripped)
    if literal_indent is not None:
      if stripped and indent <= literal_indent:
        literal_indent = None
      else:
        continue
    if stripped.startswith((">>>", "...")) or "|" not in line:
      if stripped.endswith("::"):
        literal_indent = indent
      continue
    parts = line.split("``")
    for k in range(0, len(parts), 2):  # even parts lie outside ``literals``
      parts[k] = parts[k].replace("|", r"\|")
    lines[i] = "``".join(parts)
    if stripped.endswith("::"):
      literal_indent = indent


def setup(app):
  app.connect("autodoc-skip-member", _skip_namedtuple_fields)
  app.connect("autodoc-process-docstring", _escape_bars)
