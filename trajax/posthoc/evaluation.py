"""Evaluating post-hoc averages as the run evaluates its own: test metrics and BatchNorm policy.

:class:`Evaluator` gives an averaged params tree its BatchNorm statistics by
the run's ``averaging.batch_norm`` (the one policy for free parameters,
:func:`trajax.train.evaluation_variables`: 'recompute' over its
``bn_recompute_batches`` fixed training batches; 'average': the statistics
given, the snapshots' combined with the params' coefficients) and evaluates
it on the run's test set. The CLI, the side-trip comparison and the benches
use it, so "this average" and "this side-trip" compare like for like.
"""

from __future__ import annotations

__all__ = ["Evaluator", "in_training"]


class Evaluator:
  """The run's evaluation and BatchNorm policy for averaged params.

  ``Evaluator(run)(*Evaluator(run).variables(params, batch_stats))`` is the
  test metrics dict (``loss``, ``accuracy``, ...) of ``params``.
  """

  def __init__(self, run):
    from trajax import state as state_lib
    from trajax import train

    self.run = run
    self.config = run.config
    self.ev = train.evaluator(run.model, state_lib.make_mesh(run.config))

  def variables(self, params, batch_stats):
    """``(params, batch_stats)`` by the run's policy (:func:`trajax.train.evaluation_variables`)."""
    from trajax import train

    return train.evaluation_variables(
      params, batch_stats, config=self.config, evaluator=self.ev, dataset=self.run.dataset
    )

  def __call__(self, params, batch_stats) -> dict:
    return self.ev.evaluate(params, batch_stats, self.run.dataset.eval_batches("test"))


def in_training(run, evaluate: Evaluator, end: int) -> dict | None:
  """The run's own average at ``end``, evaluated: ``{'method', 'params', **metrics}``.

  None: the run did not average, or ``end`` is not a committed step.
  """
  from trajax import averaging, train

  config = run.config
  if config.averaging.method == "none" or end not in run.steps:
    return None
  state = run.state_at(end)
  params, stats = train.averaged_variables(state, config, evaluate.ev, run.dataset)
  return {
    "method": config.averaging.method,
    "params": averaging.method_params(config.averaging.method, config.averaging),
    **evaluate(params, stats),
  }
