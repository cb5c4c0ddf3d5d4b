"""What every replay method shares: a memory of ``buffer`` samples and its size in metrics.csv; and GEM's and
A-GEM's per-task episodic memory (``EpisodicMemory``). Not methods by themselves."""

from __future__ import annotations

from torch import Tensor

from clrun.buffer import POLICIES, ReplayBuffer
from clrun.methods.base import Method, require


class ReplayMethod(Method):
    def __init__(self, buffer_size: int = 200, buffer_policy: str = "reservoir", replay_batch_size: int | None = None):
        require(isinstance(buffer_size, int) and buffer_size >= 1,
                f"buffer={buffer_size!r} is not allowed for {self.name}: a replay method needs buffer >= 1")
        require(buffer_policy in POLICIES, f"buffer_policy={buffer_policy!r} is not allowed; use one of "
                f"{', '.join(POLICIES)}")
        require(replay_batch_size is None or replay_batch_size >= 1,
                f"method.replay_batch_size={replay_batch_size!r} must be >= 1 or null (= batch_size)")
        self.buffer_size, self.buffer_policy = buffer_size, buffer_policy
        self._replay_batch_size = replay_batch_size

    def setup(self) -> None:
        L = self.ctx
        if self.buffer_policy == "class_balanced":
            n_classes = L.scenario.n_outputs
            require(self.buffer_size >= n_classes, f"buffer={self.buffer_size} is smaller than the {n_classes} "
                    "classes of this stream: buffer_policy=class_balanced needs at least one slot per class")
        self.buffer = ReplayBuffer(self.buffer_size, self.buffer_policy, L.device, seed=L.seed)

    @property
    def replay_batch_size(self) -> int:
        return self._replay_batch_size or self.ctx.batch_size  # |B_mem| = |B_new| by default

    def extra_metrics(self) -> dict:
        return {"buffer_bytes": self.buffer.nbytes if hasattr(self, "buffer") else 0}


# how GEM and A-GEM pick a finished task's episodic memory: random samples of the task, or an equal number
# of each of its classes (Chaudhry et al.'s code: 25 per class)
TASK_MEMORIES = ("random", "per_class")


class EpisodicMemory(ReplayMethod):
    """GEM and A-GEM: after each task, keep buffer // n_tasks of its samples (``memory``: random or per class)."""

    def __init__(self, buffer_size: int = 200, buffer_policy: str = "reservoir", replay_batch_size: int | None = None,
                 memory: str = "random"):
        require(memory in TASK_MEMORIES,
                f"method.memory={memory!r} is not allowed; use one of {', '.join(TASK_MEMORIES)}")
        super().__init__(buffer_size, buffer_policy, replay_batch_size)
        self.memory = memory

    def task_memory(self, task_id: int) -> tuple[Tensor, Tensor, Tensor]:
        """The finished task's memory: (inputs in its view, unit targets, task ids)."""
        per_task = max(1, self.buffer_size // len(self.ctx.stream))
        return self.ctx.task_sample(task_id, per_task, per_class=self.memory == "per_class")
