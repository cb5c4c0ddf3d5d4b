"""A cross-check of one table cell outside clrun: van de Ven & Tolias 2019's permuted-MNIST "offline" upper bound
(joint training on every task so far), written as a plain PyTorch loop that shares no code with clrun (its own
data loading, permutations, model, batches and evaluation), so a bug in clrun's streams, scenarios, learner or
joint method cannot hide in both.

The protocol as the authors' code runs it: MNIST zero-padded to 32x32, raw [0, 1] pixels, 10 tasks each under
its own permutation of the 1,024 pixels; MLP 1024-1000-1000 with ReLU and PyTorch's default initialisation; one
Adam (lr 1e-4, betas 0.9/0.999) for the whole stream; at task t, 5,000 iterations of batch 128 from the union of
tasks 1..t, reshuffled at every pass (the last incomplete batch dropped). Domain-IL: one 10-way head for all
tasks; class-IL: 10 units per task, the loss over the units of the tasks so far. ACC: the mean test accuracy
over the 10 tasks at the end (class-IL: argmax over all 100 units).

    CLRUN_DATA=DIR python scripts/reference/joint_perm.py --scenario domain --seeds 0
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from common import cli
from torch import nn

TASKS, ITERS, BATCH = 10, 5000, 128


def run(seed: int, scenario: str, data: tuple[torch.Tensor, ...]) -> tuple[float, list[float]]:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    xtr, ytr, xte, yte = data
    perms = torch.stack([torch.randperm(1024, generator=gen) for _ in range(TASKS)])
    classes = 10 if scenario == "domain" else 10 * TASKS
    net = nn.Sequential(nn.Linear(1024, 1000), nn.ReLU(), nn.Linear(1000, 1000), nn.ReLU(), nn.Linear(1000, classes))
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, betas=(0.9, 0.999))
    n = len(xtr)
    for t in range(1, TASKS + 1):
        units = 10 if scenario == "domain" else 10 * t
        order, at = torch.randperm(t * n, generator=gen), 0
        for _ in range(ITERS):
            if at + BATCH > len(order):  # a new pass over the union, the last incomplete batch dropped
                order, at = torch.randperm(t * n, generator=gen), 0
            pick = order[at : at + BATCH]
            at += BATCH
            task, idx = pick // n, pick % n
            x = torch.gather(xtr[idx], 1, perms[task])
            y = ytr[idx] + (0 if scenario == "domain" else 10 * task)
            loss = F.cross_entropy(net(x)[:, :units], y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    accs = []
    with torch.no_grad():
        for task in range(TASKS):
            logits = torch.cat([net(xte[s : s + 1000][:, perms[task]]) for s in range(0, len(xte), 1000)])
            target = yte + (0 if scenario == "domain" else 10 * task)
            accs.append((logits.argmax(1) == target).float().mean().item())
    return 100 * sum(accs) / len(accs), accs


def main() -> None:
    def arguments(ap):
        ap.add_argument("--scenario", choices=["domain", "class"], default="domain")

    def one(seed, data, a):
        acc, accs = run(seed, a.scenario, data)
        return f"{a.scenario}-IL joint: ACC {acc:.2f}  per task {' '.join(f'{100 * v:.2f}' for v in accs)}"

    cli(__doc__, 2, one, arguments)


if __name__ == "__main__":
    main()
