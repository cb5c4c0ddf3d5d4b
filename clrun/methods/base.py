"""The method interface. A method is one subclass of :class:`Method` in its own file plus one YAML.

The learner calls these hooks on the primary method and on every regulariser attached to it:

``setup()`` once, before the untrained model is evaluated (grow or wrap the model here);
per task: ``before_task(t)`` -> ``train_step(batch)`` for each batch (primary only; calls
``learner.objective`` which adds every method's ``penalty``) with ``after_backward()`` and ``after_step()``
around the optimiser step -> ``after_task(t)``. Evaluation goes through the primary's ``predict``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from clrun.streams import SCENARIOS

if TYPE_CHECKING:
    from clrun.learner import Learner


@dataclass
class Batch:
    x: Tensor  # inputs, already in their task's view
    y: Tensor  # output-unit targets
    task_ids: Tensor  # task of each sample (replay mixes tasks)
    task: int  # the task being trained


class Method:
    """Plain fine-tuning; every other method overrides the hooks it needs."""

    scenarios: tuple[str, ...] = SCENARIOS  # scenarios the method can serve
    lam: float | None = None  # regularisation strength, where the method has one
    buffer_size: int | None = None  # replay memory in samples, where the method has one
    train_units: str | None = None  # class-IL units its cross-entropy spans (seen | all); None: the scenario's
    learner: Learner

    @property
    def name(self) -> str:
        return type(self).__name__.lower()

    def bind(self, learner: Learner) -> None:
        self.learner = learner

    # ---- lifecycle
    def setup(self) -> None:
        pass

    def before_task(self, task_id: int) -> None:
        pass

    def after_task(self, task_id: int) -> None:
        pass

    # ---- training
    def training_set(self, task_id: int) -> tuple[Tensor, Tensor, Tensor]:
        """(inputs, unit targets, task ids) of what is trained on during task ``task_id``."""
        L = self.learner
        task = L.stream.tasks[task_id]
        ids = torch.full_like(task.train_y, task_id)
        return task.train_x, L.scenario.targets(task.train_y, task_id), ids

    def forward(self, x: Tensor, task_id: int) -> Tensor:
        """Raw logits over all output units (architectures that route by task override this)."""
        return self.learner.model(x)

    def train_step(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """One optimiser step; returns (loss, logits) detached."""
        L = self.learner
        L.optimizer.zero_grad(set_to_none=True)
        loss, logits = L.objective(batch)
        loss = loss * self.loss_scale()
        loss.backward()
        L.after_backward()
        L.optimizer.step()
        return loss.detach(), logits.detach()

    def loss_scale(self) -> float:
        """Factor on the whole objective of a step (methods that weigh CE against their penalty per task)."""
        return 1.0

    def penalty(self, batch: Batch, logits: Tensor) -> Tensor | None:
        """Extra loss added to the objective (regularisers)."""
        return None

    def after_backward(self) -> None:
        pass

    def after_step(self) -> None:
        pass

    # ---- evaluation
    def predict(self, x: Tensor, task_id: int, upto: int) -> Tensor:
        """Scores over all output units, non-candidates masked; argmax is the prediction."""
        ids = torch.full((len(x),), task_id, dtype=torch.long, device=x.device)
        return self.learner.scenario.masked(self.forward(x, task_id), ids, upto)

    # ---- checkpoints
    def state_dict(self) -> dict:
        """Everything the method has learnt (importances, snapshots, buffers, masks): its attributes but the
        learner. Tensors are moved to the CPU by torch.save's caller-independent pickling."""
        return {k: v for k, v in self.__dict__.items() if k != "learner"}

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)

    # ---- reporting
    def extra_metrics(self) -> dict:
        """Extra columns for metrics.csv (buffer bytes, stored bits, ...)."""
        return {}


def require(condition: bool, message: str) -> None:
    """Raise the configuration error a user sees before training when a method's settings cannot work."""
    if not condition:
        from clrun.streams import ConfigError

        raise ConfigError(message)
