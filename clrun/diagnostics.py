"""Why a run forgets, measured while it trains (``diagnostics.interference`` / ``diagnostics.spectrum``).

Interference: at each task boundary and every ``every`` steps of the new task, on fixed held-out batches, the
mean-loss gradients g_k of every old task and g_new of the new one, their cosine, the fraction of
(old sample, new sample) pairs whose per-sample gradients point against each other, and three loss changes of
each old task since the task began: ``predicted`` = -lr * sum over steps of g_k . g_new (the reference text's
first-order estimate, with the held-out g_new standing in for each minibatch's gradient), ``linearised`` =
sum over intervals of g_k . (theta_next - theta) (first order in the actual update, any optimiser), and
``observed``.

Spectrum: after each task, the top-k eigenpairs of that task's Fisher F = E[g g^T] (per-sample log-likelihood
gradients, never materialised) by Lanczos on Fisher-vector products F v = E[g (g . v)], the trace, the share
of the trace in the top k and in the top 5% of directions, and each layer's share of the top-k eigenvector
mass sum_k v_k^T P_l v_k."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils import parameters_to_vector

from clrun import io
from clrun.errors import ConfigError
from clrun.importance import SampleGradients, lanczos_top
from clrun.methods.base import Method

if TYPE_CHECKING:
    from clrun.learner import Learner


def layer_of(param_name: str) -> str:
    return param_name.rsplit(".", 1)[0]


def fisher_spectrum(grads: SampleGradients, k: int, generator: torch.Generator | None = None
                    ) -> tuple[dict, list[dict], Tensor, Tensor]:
    """(summary, per-layer rows, top-k eigenvalues, eigenvectors [P, k]) of F = G^T G / N."""
    evals, evecs = lanczos_top(grads.fisher_matmul, grads.dim, k, generator=generator, device=grads._device())
    evals = evals.clamp_min(0)
    trace = grads.fisher_trace()
    # all nonzero eigenvalues of the N-sample Fisher are those of the N x N Gram matrix G G^T / N (rank <= N),
    # so the top-5% share is exact for it; 5% of its possible rank min(P, N) is the meaningful count
    gram_evals = torch.linalg.eigvalsh(grads.gram().double() / grads.n).flip(0).clamp_min(0)
    n_top = max(1, math.ceil(0.05 * min(grads.dim, grads.n)))
    summary = {"trace": trace, "topk_share": float(evals.sum()) / trace if trace > 0 else math.nan,
               "top5pct_share": float(gram_evals[:n_top].sum()) / trace if trace > 0 else math.nan,
               "top5pct_directions": n_top, "n_samples": grads.n, "n_params": grads.dim}
    layers: dict[str, list] = {}
    for name, block in grads.split(evecs).items():
        entry = layers.setdefault(layer_of(name), [0, 0.0])
        entry[0] += grads.params[name].numel()
        entry[1] += float(block.pow(2).sum())
    k_found = evecs.shape[1]
    layer_rows = [{"layer": n, "params": p, "mass": m, "mass_share": m / k_found} for n, (p, m) in layers.items()]
    return summary, layer_rows, evals, evecs


class Diagnostics:
    """An observer of the training loop: the learner calls before_task / after_step / after_task."""

    def __init__(self, out_dir: str | Path, interference: bool = False, spectrum: bool = False, every: int = 50,
                 batch: int = 1024, pairs: int = 256, k: int = 20, samples: int = 1000, fisher: str = "empirical",
                 backend: str = "auto"):
        for key, value, low in (("every", every, 1), ("batch", batch, 2), ("pairs", pairs, 2), ("k", k, 1),
                                ("samples", samples, 2)):
            if not isinstance(value, int) or value < low:
                raise ConfigError(f"diagnostics.{key}={value!r} must be an integer >= {low}")
        if fisher not in ("empirical", "true"):
            raise ConfigError(f"diagnostics.fisher={fisher!r} must be empirical or true")
        self.out_dir = Path(out_dir)
        self.interference, self.spectrum = bool(interference), bool(spectrum)
        self.every, self.batch, self.pairs, self.k, self.samples = every, batch, pairs, k, samples
        self.fisher, self.backend = fisher, backend
        self.interference_rows: list[dict] = []
        self.spectrum_rows: list[dict] = []
        self.layer_rows: list[dict] = []

    @property
    def enabled(self) -> bool:
        return self.interference or self.spectrum

    def bind(self, learner: Learner) -> None:
        if type(learner.method).forward is not Method.forward:
            raise ConfigError(f"diagnostics need a method that trains the model as it is; {learner.method.name} "
                              "routes inputs through its own architecture (pnn, packnet, supsup)")
        self.learner = learner
        self._held_out: dict[int, tuple[Tensor, Tensor, Tensor]] = {}

    def resume(self, tasks_done: int) -> None:
        """Keep the rows of the tasks a resumed run has already done."""
        self.interference_rows = [r for r in io.read_rows(self.out_dir, io.INTERFERENCE_FILE)
                                  if r["task"] <= tasks_done]
        self.spectrum_rows = [r for r in io.read_rows(self.out_dir, io.SPECTRUM_FILE) if r["after_task"] <= tasks_done]
        self.layer_rows = [r for r in io.read_rows(self.out_dir, io.SPECTRUM_LAYERS_FILE)
                           if r["after_task"] <= tasks_done]

    # ---- data
    def held_out(self, task_id: int) -> tuple[Tensor, Tensor, Tensor]:
        """A fixed random batch of the task's evaluation split: (inputs, unit targets, task ids)."""
        if task_id not in self._held_out:
            L = self.learner
            task = L.stream.tasks[task_id]
            g = torch.Generator().manual_seed(L.seed * 31337 + task_id)
            idx = torch.randperm(len(task.eval_y), generator=g)[: self.batch].to(L.device)
            ids = torch.full((len(idx),), task_id, dtype=torch.long, device=L.device)
            self._held_out[task_id] = (task.inputs(task.eval_x[idx]), L.scenario.targets(task.eval_y[idx], task_id),
                                       ids)
        return self._held_out[task_id]

    def _grads_and_loss(self, task_id: int, upto: int) -> tuple[SampleGradients, float]:
        L = self.learner
        x, y, ids = self.held_out(task_id)
        mask = L.scenario.candidates(ids, upto)
        grads = SampleGradients(L.model, x, y, mask, self.backend)
        was_training = L.model.training
        L.model.eval()
        with torch.no_grad():
            loss = float(F.cross_entropy(L.scenario.masked(L.model(x), ids, upto), y))
        L.model.train(was_training)
        return grads, loss

    def _theta(self) -> Tensor:
        return parameters_to_vector(self.learner.trainable_parameters()).detach()

    # ---- interference
    def before_task(self, task_id: int) -> None:
        self._prev = None
        self._start_loss: dict[int, float] = {}
        self._cum: dict[int, list[float]] = {}
        self._step = 0
        if self.interference and task_id > 0:
            self._measure(task_id, 0)

    def after_step(self) -> None:
        self._step += 1
        t = self.learner.current_task
        if self.interference and t > 0 and self._step % self.every == 0:
            self._measure(t, self._step)

    def _measure(self, task_id: int, step: int) -> None:
        L = self.learner
        lr = float(L.optimizer.param_groups[0]["lr"]) if L.optimizer is not None else math.nan
        new_grads, new_loss = self._grads_and_loss(task_id, task_id)
        g_new = new_grads.mean()
        theta = self._theta()
        now = {}
        for k in range(task_id):
            old_grads, old_loss = self._grads_and_loss(k, task_id)
            g_k = old_grads.mean()
            cum = self._cum.setdefault(k, [0.0, 0.0])
            if self._prev is not None:  # the interval since the last measurement, to first order
                prev_step, prev_theta, prev = self._prev
                pg_k, pdot = prev[k]
                cum[0] += -lr * (step - prev_step) * pdot
                cum[1] += float(pg_k @ (theta - prev_theta))
            self._start_loss.setdefault(k, old_loss)
            dot = float(g_k @ g_new)
            norms = float(g_k.norm() * g_new.norm())
            now[k] = (g_k, dot)
            self.interference_rows.append({
                "task": task_id + 1, "step": step, "old_task": k + 1, "lr": lr, "old_loss": old_loss,
                "new_loss": new_loss, "cosine": dot / norms if norms > 0 else math.nan, "grad_dot": dot,
                "neg_pair_fraction": float((old_grads.head(self.pairs).gram(new_grads.head(self.pairs)) < 0)
                                           .float().mean()),
                "predicted_dloss": cum[0], "linearised_dloss": cum[1],
                "observed_dloss": old_loss - self._start_loss[k]})
        self._prev = (step, theta, now)

    # ---- spectrum, and the tables
    def after_task(self, task_id: int) -> None:
        if self.interference and task_id > 0 and (self._prev is None or self._prev[0] != self._step):
            self._measure(task_id, self._step)  # the end of the task, whatever `every` is
        if self.spectrum:
            self._spectrum(task_id)
        self.write()

    def _spectrum(self, task_id: int) -> None:
        L = self.learner
        x, y, ids = L.task_sample(task_id, self.samples)
        mask = L.scenario.candidates(ids, task_id)
        if self.fisher == "true":  # labels drawn from the model: the Fisher of the reference text's definition
            g = torch.Generator().manual_seed(L.seed * 104729 + task_id)
            with torch.no_grad():
                logits = L.scenario.masked(L.model(x), ids, task_id)
            y = torch.multinomial(logits.softmax(1).cpu(), 1, generator=g).squeeze(1).to(y.device)
        grads = SampleGradients(L.model, x, y, mask, self.backend)
        g = torch.Generator().manual_seed(L.seed * 7 + task_id)
        summary, layer_rows, evals, _ = fisher_spectrum(grads, self.k, g)
        for i, ev in enumerate(evals.tolist()):
            self.spectrum_rows.append({"after_task": task_id + 1, "index": i + 1, "eigenvalue": ev, **summary})
        self.layer_rows += [{"after_task": task_id + 1, **r} for r in layer_rows]

    def write(self) -> None:
        if self.interference:
            io.write_rows(self.out_dir, io.INTERFERENCE_FILE, self.interference_rows, io.INTERFERENCE_COLUMNS)
        if self.spectrum:
            io.write_rows(self.out_dir, io.SPECTRUM_FILE, self.spectrum_rows, io.SPECTRUM_COLUMNS)
            io.write_rows(self.out_dir, io.SPECTRUM_LAYERS_FILE, self.layer_rows, io.SPECTRUM_LAYER_COLUMNS)
