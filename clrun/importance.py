"""Parameter importance from per-sample gradients (``torch.func``: ``functional_call`` + ``vmap(grad)``).

Diagonal Fisher estimators, all E_x[...] over the given inputs, with log p the scenario-masked softmax:

* ``empirical``: E_x[ g(x, y_data)^2 ]
* ``true``     : E_x[ g(x, y~p(.|x))^2 ]            (one sampled label per input)
* ``expected`` : E_x[ sum_c p(c|x) g(x, c)^2 ]       (the exact expectation over classes)

with g(x, y) = d log p(y|x) / d theta for *each sample*. The square of a batch-mean gradient is a different
(and much smaller) quantity; ``batch_squared_gradient`` exists only so tests can show the difference.
MAS importance is E_x |d (0.5 ||f(x)||^2) / d theta| over the candidate outputs f(x), no labels needed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call, grad, vmap

FISHER_KINDS = ("empirical", "true", "expected")
def _named_trainable(model: nn.Module) -> dict[str, Tensor]:
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def per_sample_grads(model: nn.Module, x: Tensor, sample_loss: Callable[..., Tensor],
                     extras: tuple[Tensor, ...]) -> dict[str, Tensor]:
    """Gradient of ``sample_loss(logits_i, *extras_i)`` w.r.t. every trainable parameter, for each sample i.

    Returns {name: [B, *param.shape]}; frozen parameters and buffers are held fixed."""
    params = _named_trainable(model)
    fixed = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    fixed.update(dict(model.named_buffers()))

    def loss_one(p: dict[str, Tensor], xi: Tensor, *ei: Tensor) -> Tensor:
        logits = functional_call(model, {**p, **fixed}, (xi.unsqueeze(0),))
        return sample_loss(logits[0], *ei)

    in_dims = (None, 0) + (0,) * len(extras)
    return vmap(grad(loss_one), in_dims=in_dims)(params, x, *extras)


def _masked_log_softmax(logits: Tensor, mask: Tensor) -> Tensor:
    return F.log_softmax(logits.masked_fill(~mask, torch.finfo(logits.dtype).min / 2), dim=-1)


@torch.no_grad()
def _probs(model: nn.Module, x: Tensor, mask: Tensor) -> Tensor:
    return _masked_log_softmax(model(x), mask).exp()


def fisher_diag(model: nn.Module, x: Tensor, y: Tensor, mask: Tensor, kind: str = "true", chunk: int = 256,
                generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Diagonal Fisher {name: tensor like the parameter}, averaged over the N inputs ``x``.

    ``y``: dataset labels (output units); ``mask``: bool [N, n_outputs] of each input's candidate units."""
    if kind not in FISHER_KINDS:
        raise ValueError(f"fisher={kind!r} is not allowed; use one of {', '.join(FISHER_KINDS)}")
    was_training = model.training
    model.eval()  # batch-norm statistics must not move while estimating

    def nll(logits: Tensor, yi: Tensor, mi: Tensor) -> Tensor:
        return -_masked_log_softmax(logits, mi).gather(0, yi.view(1)).squeeze(0)

    def wnll(logits: Tensor, yi: Tensor, mi: Tensor, wi: Tensor) -> Tensor:
        # sqrt(p_c) * g_c squared gives p_c * g_c^2: the expectation without a second pass
        return -wi.sqrt() * _masked_log_softmax(logits, mi).gather(0, yi.view(1)).squeeze(0)

    total = {n: torch.zeros_like(p) for n, p in _named_trainable(model).items()}
    for s in range(0, len(x), chunk):
        xb, yb, mb = x[s : s + chunk], y[s : s + chunk], mask[s : s + chunk]
        if kind == "empirical":
            grads = per_sample_grads(model, xb, nll, (yb, mb))
        elif kind == "true":
            probs = _probs(model, xb, mb)
            # sampled on the CPU so a CPU generator seeds it on any device
            sampled = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(yb.device)
            grads = per_sample_grads(model, xb, nll, (sampled, mb))
        else:
            probs = _probs(model, xb, mb)
            classes = mb.any(0).nonzero().squeeze(1)  # candidate units of this chunk
            k = len(classes)
            xr = xb.repeat_interleave(k, 0)
            yr = classes.repeat(len(xb))
            mr = mb.repeat_interleave(k, 0)
            wr = probs[:, classes].reshape(-1)
            grads = per_sample_grads(model, xr, wnll, (yr, mr, wr))
        for n, g in grads.items():
            total[n] += g.pow(2).sum(0)
    model.train(was_training)
    return {n: t / len(x) for n, t in total.items()}


def mas_importance(model: nn.Module, x: Tensor, mask: Tensor, chunk: int = 256,
                   ) -> dict[str, Tensor]:
    """MAS: E_x |d(0.5 ||f(x)||^2)/d theta| with f(x) the candidate outputs (non-candidates zeroed)."""
    was_training = model.training
    model.eval()

    def half_sq_norm(logits: Tensor, mi: Tensor) -> Tensor:
        return 0.5 * (logits * mi).pow(2).sum()

    total = {n: torch.zeros_like(p) for n, p in _named_trainable(model).items()}
    for s in range(0, len(x), chunk):
        grads = per_sample_grads(model, x[s : s + chunk], half_sq_norm, (mask[s : s + chunk],))
        for n, g in grads.items():
            total[n] += g.abs().sum(0)
    model.train(was_training)
    return {n: t / len(x) for n, t in total.items()}


def batch_squared_gradient(model: nn.Module, x: Tensor, y: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """(d mean_i log p(y_i|x_i) / d theta)^2: NOT a Fisher estimate; here so tests can tell them apart."""
    model.zero_grad(set_to_none=True)
    loss = F.nll_loss(_masked_log_softmax(model(x), mask), y)
    loss.backward()
    out = {n: p.grad.detach().pow(2) for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return out
