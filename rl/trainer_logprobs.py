"""Where a step's trainer log-probs b_t come from, chosen once at start-up.

b_t are the trainer's log-probs of the sampled tokens under the weights that sampled them: the
mismatch metrics' b_t every step, and the update's old log-probs with
`algorithm.old_logprobs=recompute`. Two sources:

- `FromUpdate`: the update's own forward yields them, with no separate pass. Exact when the step
  makes one optimiser step (`trainer.num_minibatches == 1`: every training forward runs on the
  weights that sampled the batch) and the training forward is the policy's (no active dropout).
- `SeparatePass`: a forward pass before the update, run while the verifiers score unless refill
  rounds may still change the batch.

The step calls the three hooks in order, whatever the source: `while_scoring`, `before_update`
(b_t if known before the update: the old log-probs to send, else None), `after_update` (b_t).
"""

from __future__ import annotations

import logging

from rl.batch import Sample
from rl.config import RunConfig
from rl.groups import TrainerGroup
from trainer.batch import TokenLogprobs

log = logging.getLogger("lockstep.driver")


class SeparatePass:
    from_update = False

    def __init__(self, trainers: TrainerGroup, while_scoring: bool):
        self.trainers = trainers
        self.during_scoring = while_scoring  # False while refill rounds may change the batch
        self.rows: list[TokenLogprobs] | None = None  # this step's b_t, once computed

    def while_scoring(self, samples: list[Sample]) -> None:
        if self.during_scoring:
            self.rows = self.trainers.logprobs([s.for_trainer() for s in samples])

    def before_update(self, samples: list[Sample]) -> list[TokenLogprobs]:
        if self.rows is None:
            self.rows = self.trainers.logprobs([s.for_trainer() for s in samples])
        return self.rows

    def after_update(self, samples: list[Sample], update: list[TokenLogprobs] | None) -> list[TokenLogprobs]:
        rows, self.rows = self.before_update(samples), None
        return rows


class FromUpdate:
    from_update = True

    def __init__(self, trainers: TrainerGroup):
        self.trainers = trainers

    def while_scoring(self, samples: list[Sample]) -> None:
        pass

    def before_update(self, samples: list[Sample]) -> None:
        return None  # the update takes its old log-probs from its own forward

    def after_update(self, samples: list[Sample], update: list[TokenLogprobs] | None) -> list[TokenLogprobs]:
        if update is None:  # no update this step: the log-probs still have to be measured
            return self.trainers.logprobs([s.for_trainer() for s in samples])
        return update


def choose(cfg: RunConfig, trainers: TrainerGroup) -> SeparatePass | FromUpdate:
    if cfg.trainer.num_minibatches > 1:
        why = "trainer.num_minibatches > 1: later mini-batches see updated weights"
    elif not trainers.train_forward_is_eval_forward:
        why = "the model has active dropout: its training forward is not the policy's log-prob"
    else:
        log.info("trainer log-probs come from the update's forward (one optimiser step per RL step)")
        return FromUpdate(trainers)
    log.info("trainer log-probs: a separate pass before the update (%s)", why)
    return SeparatePass(trainers, while_scoring=cfg.algorithm.dynamic_sampling_max_rounds == 1)
