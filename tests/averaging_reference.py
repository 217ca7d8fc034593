"""An independent NumPy reference for the averages of trajax.averaging.

The averages written from their definitions (explicit sums over the recorded
θ_t in float64), not from the recursions the averagers run. Shared by the
averaging test files (the wrappers, the optax contract, the stored layout).
"""

import numpy as np

# The methods this reference writes out; a method registered later is checked
# against its own pure averager instead (tests/averaging_cases.py).
METHODS = ("ema", "swa", "power_ema", "two_point", "multi_point")


def reference_average(method, thetas, *, start_step=0, **p):
  """a_t for t = 0..T from the θ_t sequence, by the issue's definitions."""
  thetas = np.asarray(thetas, np.float64)
  s = start_step
  out = []
  for t in range(len(thetas)):
    if method in ("ema", "swa", "power_ema"):
      every = p.get("every", 1)
      if t <= s:
        out.append(thetas[t])
        continue
      points = [u for u in range(s + 1, t + 1) if (u - s) % every == 0]
      if not points:
        out.append(thetas[s])
      elif method == "swa":
        out.append(np.mean(thetas[points], axis=0))
      elif method == "power_ema":
        # Karras et al.'s profile over the k points: c_i = (i^{γ+1} − (i−1)^{γ+1}) / k^{γ+1}.
        g, k = p["gamma"] + 1.0, len(points)
        i = np.arange(1, k + 1, dtype=np.float64)
        out.append(np.tensordot((i**g - (i - 1) ** g) / k**g, thetas[points], 1))
      else:
        d, q = p["decay"], len(points)
        weights = np.array([d * (1 - d) ** (q - 1 - j) for j in range(q)])
        if p.get("debias", False):
          out.append(np.tensordot(weights, thetas[points], 1) / (1 - (1 - d) ** q))
        else:
          out.append((1 - d) ** q * thetas[s] + np.tensordot(weights, thetas[points], 1))
    elif method in ("multi_point", "two_point"):
      n = p.get("n", 2)
      gap = p["gap"]
      if t < s:
        out.append(thetas[t])
        continue
      snaps = [u for u in range(s, t + 1) if (u - s) % gap == 0]
      out.append(np.mean(thetas[snaps[-n:]], axis=0))
    else:
      raise ValueError(f"no NumPy reference for method {method!r}; written: {list(METHODS)}")
  return np.stack(out)
