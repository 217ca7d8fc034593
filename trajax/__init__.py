"""trajax: SGD training trajectories, parameter averaging and equivalent schedules in JAX.

Submodules are imported explicitly (``import trajax.averaging``); this package
file imports nothing heavy, so the optax transforms work on images without
TensorFlow, TFDS, clu or ml-collections.
"""

__version__ = "0.1.0"
