"""A cross-check of one table cell outside clrun: van de Ven & Tolias 2019's permuted-MNIST iCaRL (class-IL,
budget 2,000), written as a plain PyTorch loop that shares no code with clrun (its own data, model, batches,
distillation, herding and nearest-mean classifier), so a bug in clrun's iCaRL, buffer or learner cannot hide
in both.

The protocol as the authors' code runs it: MNIST zero-padded to 32x32, raw [0, 1] pixels, 10 tasks each under
its own permutation of the 1,024 pixels, 10 classes a task (100 units); MLP 1024-1000-1000 with ReLU and
PyTorch's default initialisation, one Adam (lr 1e-4) for the stream, 5,000 iterations of batch 128 a task
from the task's data with the exemplars merged in. Loss: binary cross-entropy with logits over the units of
the tasks so far, summed over units and averaged over the batch; targets one-hot on the newest task's units
and sigmoid(z_old / 2) of the model before the task on the older ones. After each task every class keeps
floor(2000 / classes so far) exemplars: the old sets cut to their first ones, the new classes' chosen by
herding on L2-normalised features of the last hidden layer. Prediction: the nearest normalised exemplar
mean. ACC: the mean test accuracy over the 10 tasks at the end.

    CLRUN_DATA=DIR python scripts/reference/icarl_perm.py --seeds 0
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from common import cli
from torch import nn

TASKS, ITERS, BATCH, BUDGET, TEMP = 10, 5000, 128, 2000, 2.0


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Linear(1024, 1000), nn.ReLU(), nn.Linear(1000, 1000), nn.ReLU())
        self.head = nn.Linear(1000, 10 * TASKS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(torch.cat([self.features(x[s : s + 2000]) for s in range(0, len(x), 2000)]), dim=1)


def herding(net: Net, x: torch.Tensor, m: int) -> torch.Tensor:
    """Indices of m samples whose running feature mean stays closest to the class mean, none twice."""
    feats = net.embed(x)
    mean = F.normalize(feats.mean(0, keepdim=True), dim=1)
    chosen, total = [], torch.zeros_like(mean)
    taken = torch.zeros(len(x), dtype=torch.bool)
    for k in range(min(m, len(x))):
        dist = ((feats + total) / (k + 1) - mean).norm(dim=1)
        dist[taken] = float("inf")
        i = int(dist.argmin())
        chosen.append(i)
        taken[i] = True
        total += feats[i]
    return torch.tensor(chosen)


def run(seed: int, data: tuple[torch.Tensor, ...]) -> tuple[float, list[float]]:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    xtr, ytr, xte, yte = data
    perms = [torch.randperm(1024, generator=gen) for _ in range(TASKS)]
    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, betas=(0.9, 0.999))
    ex_x: list[torch.Tensor] = []  # one tensor of exemplar inputs per class, in class order
    for t in range(TASKS):
        units = 10 * (t + 1)
        x_task, y_task = xtr[:, perms[t]], ytr + 10 * t
        if ex_x:  # the exemplars join the task's training set
            x_all = torch.cat([x_task, *ex_x])
            y_all = torch.cat([y_task, *[torch.full((len(e),), c) for c, e in enumerate(ex_x)]])
        else:
            x_all, y_all = x_task, y_task
        old = copy.deepcopy(net).eval() if t > 0 else None
        order, at = torch.randperm(len(x_all), generator=gen), 0
        for _ in range(ITERS):
            if at + BATCH > len(order):
                order, at = torch.randperm(len(x_all), generator=gen), 0
            idx = order[at : at + BATCH]
            at += BATCH
            x, y = x_all[idx], y_all[idx]
            logits = net(x)[:, :units]
            target = F.one_hot(y, units).float()
            if old is not None:
                with torch.no_grad():
                    target[:, : 10 * t] = torch.sigmoid(old(x)[:, : 10 * t] / TEMP)
            loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        per_class = BUDGET // units
        ex_x = [e[:per_class] for e in ex_x]
        for c in range(10):
            x_c = x_task[ytr == c]
            ex_x.append(x_c[herding(net, x_c, per_class)])
    means = torch.stack([F.normalize(net.embed(e).mean(0), dim=0) for e in ex_x])
    accs = []
    for t in range(TASKS):
        feats = net.embed(xte[:, perms[t]])
        pred = torch.cdist(feats, means).argmin(1)
        accs.append((pred == yte + 10 * t).float().mean().item())
    return 100 * sum(accs) / len(accs), accs


def main() -> None:
    def one(seed, data, a):
        acc, accs = run(seed, data)
        return f"iCaRL: ACC {acc:.2f}  per task {' '.join(f'{100 * v:.2f}' for v in accs)}"

    cli(__doc__, 2, one)


if __name__ == "__main__":
    main()
