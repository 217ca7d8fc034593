"""An average is a value: Average / Kernel, their spellings and the record's window inverse."""

import json

import numpy as np
import pytest

from trajax import averaging, schedules

# One example per registered method (parameters that change the kernel).
EXAMPLES = {
  "none": {},
  "ema": {"decay": 0.2, "every": 2, "debias": True},
  "swa": {"every": 3},
  "two_point": {"gap": 3},
  "multi_point": {"n": 3, "gap": 2},
  "power_ema": {"gamma": 2.5, "start_step": 1},
}


def test_every_registered_method_has_an_example():
  assert set(EXAMPLES) == set(averaging.METHODS)


@pytest.mark.parametrize("method", sorted(EXAMPLES))
def test_value_round_trips_through_text_and_dict(method):
  a = averaging.average(method, **EXAMPLES[method])
  assert a.method == method
  # Defaults filled in, every non-dtype parameter of the record present, in its order.
  names = [p.name for p in averaging.METHODS[method].params if p.kind != "dtype"]
  assert [k for k, _ in a.params] == names
  assert averaging.Average.parse(str(a)) == a
  assert averaging.as_average(str(a)) == a
  stored = json.loads(json.dumps(a.to_dict()))
  assert averaging.Average.from_dict(stored) == a == averaging.as_average(stored)
  assert hash(a) == hash(averaging.average(method, **EXAMPLES[method]))


@pytest.mark.parametrize("method", [m for m in sorted(EXAMPLES) if m != "none"])
def test_value_kernel_and_weights_are_the_records(method):
  a = averaging.average(method, **EXAMPLES[method])
  k = a.default_window() or 6
  c = a.kernel(k)
  np.testing.assert_array_equal(c, averaging.kernel(method, window=k, **EXAMPLES[method]))
  assert c.dtype == np.float64 and abs(c.sum() - 1) < 1e-12
  np.testing.assert_array_equal(
    a.step_weights(k), averaging.step_weights_table(method, window=k, **EXAMPLES[method])
  )
  # The same average as a kernel: same weights, same side-trip factors.
  kern = averaging.as_average(c)
  assert isinstance(kern, averaging.Kernel) and kern.default_window() == k
  np.testing.assert_allclose(kern.step_weights(), a.step_weights(k), atol=1e-14)
  np.testing.assert_allclose(schedules.weights_from_kernel(c), kern.step_weights(), rtol=0)


def test_averager_is_the_methods():
  a = averaging.average("ema", decay=0.5)
  s = a.averager().init(np.float32(0.0))
  s = a.averager().update(np.float32(1.0), s)
  assert float(s.average) == 0.5
  import jax.numpy as jnp

  low = a.averager(accumulator_dtype=jnp.bfloat16).init(np.float32(1.0))
  assert low.average.dtype == jnp.bfloat16  # the dtype is the averager's, not the value's
  assert "accumulator_dtype" not in a.values


def test_kernel_value_checks_and_spelling():
  k = averaging.Kernel.of([0.1, 0.2, 0.7])
  assert str(k) == "kernel(0.1, 0.2, 0.7)"
  assert averaging.Kernel.parse(str(k)) == k
  assert averaging.as_average({"kernel": [0.1, 0.2, 0.7]}) == k
  # Exact: every float spelt by repr reads back bit for bit.
  c = np.random.default_rng(0).dirichlet(np.ones(50))
  c[-1] = 1.0 - np.sum(c[:-1])
  back = averaging.as_average(str(averaging.Kernel.of(c)))
  np.testing.assert_array_equal(back.kernel(), c)
  for bad, match in (
    ([0.5, 0.6], "sum to 1"),
    ([1.0], "k \\+ 1 >= 2"),
    ([0.5, float("nan"), 0.5], "finite"),
    ([[0.5, 0.5]], "1-D"),
  ):
    with pytest.raises(ValueError, match=match):
      averaging.Kernel.of(bad)
  with pytest.raises(ValueError, match="covers 2 steps"):
    k.kernel(3)


@pytest.mark.parametrize(
  "text,match",
  [
    ("ema(decay=2)", r"average 'ema\(decay=2\)': decay must be a float in \(0, 1\], got 2$"),
    ("foo(x=1)", "unknown method 'foo'; must be a method of"),
    ("ema(decay=0.1", "not understood"),
    ("ema(decay=x)", "'x' is not a number"),
    ("ema(decay=0.1, decay=0.2)", "decay given twice"),
    ("ema", "needs decay"),
    ("swa(decay=0.1)", "decay=0.1 is not one of its parameters"),
    ("kernel(0.5, x=1)", "weights only"),
    ("__import__('os')", "unknown method '__import__'"),
    ("ema(decay=__import__('os'))", "is not a number"),
  ],
)
def test_parse_errors_name_the_text_and_what_is_allowed(text, match):
  with pytest.raises(ValueError, match=match) as e:
    averaging.Average.parse(text)
  assert "\n" not in str(e.value)


def test_as_average_refuses_other_things():
  with pytest.raises(TypeError, match="an average must be"):
    averaging.as_average(3)
  with pytest.raises(ValueError, match="needs 'method'"):
    averaging.as_average({"decay": 0.1})


# ---------------------------------------------------------------------------
# params_for_window: the inverse of default_window; the sweep hint.


@pytest.mark.parametrize("method", sorted(EXAMPLES))
@pytest.mark.parametrize("k", [4, 12])
def test_params_for_window_inverts_default_window(method, k):
  m = averaging.METHODS[method]
  base = dict(EXAMPLES[method], decay=0.1)  # a flat section: other methods' fields ignored
  p = averaging.params_for_window(method, k, base)
  full = averaging.check_params(method, p)
  window = m.default_window(full)
  if window is None:
    # No default window: the parameters do not depend on k (the caller gives k).
    assert p == averaging.params_for_window(method, k + 1, base)
    assert averaging.average(method, **p).kernel(k).shape == (k + 1,)
  else:
    assert window == k
    assert averaging.average(method, **p).for_window(k) == averaging.average(method, **p)


def test_params_for_window_errors():
  with pytest.raises(ValueError, match="divisible by n - 1"):
    averaging.params_for_window("multi_point", 7, {"n": 3})
  with pytest.raises(ValueError, match="needs n"):
    averaging.params_for_window("multi_point", 6, {})
  with pytest.raises(ValueError, match="window must be an integer >= 1"):
    averaging.params_for_window("two_point", 0, {})


def test_sweep_hints():
  for name, m in averaging.METHODS.items():
    if m.sweep is None:
      continue
    assert m.sweep.param == "window" or m.param(m.sweep.param) is not None, name
    grid = m.sweep.grid
    assert list(grid) == sorted(grid)
    for v in grid:  # every default grid value is a valid parameter value
      averaging.average(name, **{**EXAMPLES[name], m.sweep.param: v})
  ema = averaging.METHODS["ema"].sweep.grid
  assert ema[0] == 1e-4 and ema[-1] == 0.1 and len(ema) == 31  # 10 per decade
  assert averaging.METHODS["power_ema"].sweep.grid[:2] == (1.0, 1.19)


# ---------------------------------------------------------------------------
# The side-trip's one field, sidetrip.average.


def test_sidetrip_average_field_old_and_new_spellings(caplog):
  from trajax import config, config_validation, sidetrip

  base = config.base_config()
  base.averaging.method, base.averaging.every, base.averaging.debias = "ema", 2, True
  old = sidetrip.with_sidetrip(base, kind="equivalent", method="ema", decay=0.1, window=8)
  with caplog.at_level("WARNING"):
    spec_old = sidetrip.resolve(old, 10)
  # The deprecated spelling keeps the parent's every and debias, as it always did.
  want = "ema(decay=0.1, start_step=0, every=2, debias=True)"
  assert spec_old.average == want
  assert any("deprecated" in r.getMessage() and want in r.getMessage() for r in caplog.records)
  new = sidetrip.with_sidetrip(base, kind="equivalent", average=want, window=8)
  spec_new = sidetrip.resolve(new, 10)
  assert spec_new.average == want and spec_new.params == spec_old.params
  assert sidetrip.SidetripRate.of(spec_new) == sidetrip.SidetripRate.of(spec_old)
  # A kernel runs exactly that kernel.
  c = np.array([0.1, 0.0, 0.3, 0.2, 0.4])
  trip = sidetrip.with_sidetrip(base, kind="equivalent", average=c)
  spec = sidetrip.resolve(trip, 10)
  assert spec.window == spec.steps == 4 and spec.method is None
  np.testing.assert_allclose(
    sidetrip.SidetripRate.of(spec).weights, [0.9, 0.9, 0.6, 0.4], atol=1e-15
  )
  for fields, match in (
    (dict(average="swa", method="ema"), r"sidetrip.average = 'swa': give the average once"),
    (dict(average=c, window=5), r"sidetrip.window = 5: window = 5: this kernel covers 4"),
    (dict(average="ema(decay=0.1)"), "sidetrip.window = None"),
    (dict(average="emma"), r"sidetrip.average = 'emma': average 'emma': unknown method"),
  ):
    with pytest.raises(config_validation.ConfigError, match=match):
      sidetrip.resolve(sidetrip.with_sidetrip(base, kind="equivalent", **fields), 10)
