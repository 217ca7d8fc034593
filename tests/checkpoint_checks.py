"""Checkpoints compared and damaged: what the checkpoint and reliability tests share."""

from __future__ import annotations

import shutil

import jax
import numpy as np

from trajax import checkpoint as ckpt_lib


def assert_identical(a, b):
  """Two pytrees with the same structure and every leaf bit for bit equal."""
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(la, lb, strict=True):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype, (x.dtype, y.dtype)
    np.testing.assert_array_equal(x, y)


def array_files(step_dir):
  """The OCDBT data files of a step's arrays, the writing process's largest first.

  Large arrays stay in the writing process's ``ocdbt.process_<i>/d/`` (stored
  without a checksum); small ones are inlined into the merged tree's
  ``state/d/`` at commit (its b-tree nodes carry a CRC-32C).
  """
  files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
  return sorted(
    files, key=lambda p: (not p.parent.parent.name.startswith("ocdbt."), -p.stat().st_size)
  )


def damage_checkpoint(step_dir, how):
  """Damages a committed checkpoint the way disks, copies and hands do."""
  if how == "flipped_byte":
    # A byte whose flip the storage format does not notice (the file still
    # reads, with other values): only the digest can tell. Arrays are stored
    # compressed, so such a byte is found by trying positions across the file.
    directory, step = step_dir.parent, int(step_dir.name)
    for path in array_files(step_dir):
      original = path.read_bytes()
      for at in np.linspace(0, len(original) - 1, 100).astype(int):
        data = bytearray(original)
        data[at] ^= 0xFF
        path.write_bytes(bytes(data))
        try:
          tree, meta = ckpt_lib.restore_readonly(str(directory), step=step, check=False)
        except Exception:  # noqa: BLE001 -- the format caught this one; try another byte
          continue
        if any("digest mismatch" in p for p in ckpt_lib.check_state(tree, meta)):
          return
      path.write_bytes(original)
    raise AssertionError(f"no silently readable byte flip found in {step_dir}")
  elif how == "truncated_file":
    # Cut the way an interrupted copy leaves them (a file that is read for
    # nothing may be cut too; cutting them all makes the restore need one).
    for path in array_files(step_dir):
      data = path.read_bytes()
      path.write_bytes(data[: len(data) // 2])
  elif how in ("huge_value", "nan"):
    # Rewritten with consistent digests: only the value checks can tell.
    directory, step = step_dir.parent, int(step_dir.name)
    tree, meta = ckpt_lib.restore_readonly(str(directory), step=step, check=False)
    tree = jax.tree.map(np.array, tree)
    tree["params"]["head"]["kernel"].flat[0] = 1e30 if how == "huge_value" else np.nan
    shutil.rmtree(step_dir)
    writer = ckpt_lib.Checkpointer(str(directory), async_save=False)
    writer.save(step, tree, meta)
    writer.close()
  else:
    raise ValueError(how)
