"""A cross-check of one table cell outside clrun: DER's P-MNIST online EWC (Buzzega et al. 2020, Table 2),
written as a plain PyTorch loop that shares no code with clrun (its own data loading, model, batches, Fisher and
penalty), so a bug in clrun's streams, learner, importance or quadratic penalty cannot hide in both.

The protocol as mammoth's ``ewc_on`` codes it: 20 tasks, each MNIST under its own pixel permutation (the first
one too), raw [0, 1] pixels, MLP 784-100-100-10 (Xavier-uniform weights, zero biases), SGD lr 0.1 without
momentum, batch 128, one epoch per task; loss = CE + e_lambda * sum F (theta - theta*)^2 with F summed over tasks
(gamma = 1), each task's F the average over its 60,000 training samples of p(y|x) * (d log p(y|x) / d theta)^2,
and theta* the parameters at the end of the latest task. ACC: the mean test accuracy over the 20 tasks at the end.

    CLRUN_DATA=DIR python scripts/reference/oewc_perm.py --seeds 0 1 2 [--e-lambda 0.7] [--lr 0.1]
    ... --e-lambda 0 --lr 0.2: the None row (mammoth's sgd), a check of the loop itself
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from common import cli
from torch import nn
from torch.func import functional_call, grad, vmap


def mlp() -> nn.Sequential:
    net = nn.Sequential(nn.Linear(784, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 10))
    for m in net:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return net


def weighted_fisher(net: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 500) -> dict[str, torch.Tensor]:
    """mean over samples of p(y|x) * grad(log p(y|x))^2, one sample's gradient at a time (vmap)."""
    params = {k: v.detach() for k, v in net.named_parameters()}

    def log_p(p, xi, yi):
        return F.log_softmax(functional_call(net, p, (xi.unsqueeze(0),)), dim=1).gather(1, yi.view(1, 1)).squeeze()

    per_sample = vmap(grad(log_p), in_dims=(None, 0, 0))
    fisher = {k: torch.zeros_like(v) for k, v in params.items()}
    for s in range(0, len(x), chunk):
        xb, yb = x[s : s + chunk], y[s : s + chunk]
        with torch.no_grad():
            prob = F.softmax(net(xb), dim=1).gather(1, yb.view(-1, 1)).squeeze(1)
        for k, g in per_sample(params, xb, yb).items():
            fisher[k] += (prob.view(-1, *[1] * (g.dim() - 1)) * g.pow(2)).sum(0)
    return {k: v / len(x) for k, v in fisher.items()}


def run(seed: int, e_lambda: float, lr: float, data: tuple[torch.Tensor, ...],
        tasks: int = 20) -> tuple[float, list[float]]:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    xtr, ytr, xte, yte = data
    perms = [torch.randperm(784, generator=gen) for _ in range(tasks)]
    net = mlp()
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    fisher, anchor = None, None
    learned = []
    for perm in perms:
        x = xtr[:, perm]
        order = torch.randperm(len(x), generator=gen)
        for s in range(0, len(x), 128):
            idx = order[s : s + 128]
            loss = F.cross_entropy(net(x[idx]), ytr[idx])
            if fisher is not None:
                loss = loss + e_lambda * sum((fisher[k] * (p - anchor[k]).pow(2)).sum()
                                             for k, p in net.named_parameters())
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            learned.append((net(xte[:, perm]).argmax(1) == yte).float().mean().item())
        if e_lambda == 0:
            continue  # plain SGD: no penalty to estimate
        new = weighted_fisher(net, x, ytr)
        fisher = new if fisher is None else {k: fisher[k] + new[k] for k in new}  # gamma = 1
        anchor = {k: v.detach().clone() for k, v in net.named_parameters()}
    with torch.no_grad():
        accs = [(net(xte[:, perm]).argmax(1) == yte).float().mean().item() for perm in perms]
    return 100 * sum(accs) / len(accs), learned


def main() -> None:
    def arguments(ap):
        ap.add_argument("--e-lambda", type=float, default=0.7, help="mammoth's e_lambda (0: plain SGD, the None row)")
        ap.add_argument("--lr", type=float, default=0.1, help="0.1 for ewc_on, 0.2 for mammoth's sgd (best_args)")

    def one(seed, data, a):
        acc, learned = run(seed, a.e_lambda, a.lr, data)
        return (f"e_lambda {a.e_lambda} lr {a.lr}: ACC {acc:.2f}  learning accuracy "
                f"{100 * sum(learned) / len(learned):.2f}")

    cli(__doc__, 0, one, arguments, seeds=(0, 1, 2))


if __name__ == "__main__":
    main()
