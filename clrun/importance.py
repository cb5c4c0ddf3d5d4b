"""Parameter importance from per-sample gradients (``torch.func``: ``functional_call`` + ``vmap(grad)``).

Diagonal Fisher estimators, all E_x[...] over the given inputs, with log p the scenario-masked softmax:

* ``empirical``: E_x[ g(x, y_data)^2 ]
* ``true``     : E_x[ g(x, y~p(.|x))^2 ]            (one sampled label per input)
* ``expected`` : E_x[ sum_c p(c|x) g(x, c)^2 ]       (the exact expectation over classes)

with g(x, y) = d log p(y|x) / d theta for *each sample* (``vmap(grad)``; for all-Linear models the same sums
come from one backward pass, since a Linear layer's per-sample gradient is an outer product — see
``grad_stat_sum``). The square of a batch-mean gradient is a different
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


def _linear_layers(model: nn.Module) -> dict[str, nn.Linear] | None:
    """The Linear modules holding every trainable parameter, or None if some live elsewhere (conv, norm)."""
    layers = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    owned = {f"{n}.{k}" for n, m in layers.items() for k, _ in m.named_parameters(recurse=False)}
    if not layers or not set(_named_trainable(model)) <= owned:
        return None
    return layers


def _linear_grad_stat_sum(model: nn.Module, layers: dict[str, nn.Linear], x: Tensor,
                          sample_loss: Callable[..., Tensor], extras: tuple[Tensor, ...],
                          stat: Callable[[Tensor], Tensor]) -> dict[str, Tensor] | None:
    """sum_n stat(g_n) for Linear layers without forming g_n: the per-sample gradient of W is the outer product
    delta_n a_n^T, and both x**2 and |x| factor over it: sum_n stat(delta_n) stat(a_n)^T = stat(D)^T stat(A)."""
    acts: dict[str, Tensor] = {}
    deltas: dict[str, Tensor] = {}
    calls: dict[str, int] = {}

    def on_forward(name):
        def hook(module, inputs, output):
            acts[name] = inputs[0].detach()
            calls[name] = calls.get(name, 0) + 1
            output.register_hook(lambda grad: deltas.__setitem__(name, grad.detach()))  # d(sum loss)/d output
        return hook

    handles = [m.register_forward_hook(on_forward(n)) for n, m in layers.items()]
    try:
        with torch.enable_grad():
            logits = model(x)
            losses = vmap(sample_loss)(logits, *extras)  # one loss per sample: rows of delta stay per-sample
            params = [p for p in model.parameters() if p.requires_grad]
            torch.autograd.grad(losses.sum(), params)
    finally:
        for h in handles:
            h.remove()
    if any(calls.get(n, 0) != 1 or acts[n].dim() != 2 for n in layers if n in calls):
        return None  # a layer used twice or on sequences: fall back to the general path
    out: dict[str, Tensor] = {}
    trainable = _named_trainable(model)
    for n, m in layers.items():
        if n not in acts:
            continue
        a, d = stat(acts[n]), stat(deltas[n])
        if f"{n}.weight" in trainable:
            out[f"{n}.weight"] = d.T @ a
        if m.bias is not None and f"{n}.bias" in trainable:
            out[f"{n}.bias"] = d.sum(0)
    return out


def grad_stat_sum(model: nn.Module, x: Tensor, sample_loss: Callable[..., Tensor], extras: tuple[Tensor, ...],
                  stat: Callable[[Tensor], Tensor], backend: str = "auto") -> dict[str, Tensor]:
    """sum over the samples of ``stat`` (square or abs) of each per-sample gradient entry.

    ``backend="vmap"``: per-sample gradients with ``vmap(grad)``, any model. ``"auto"``: for models whose
    trainable parameters are all in Linear layers, the same numbers from one backward pass and the outer-product
    factorisation (no per-sample gradient is materialised); otherwise vmap."""
    if backend == "auto":
        layers = _linear_layers(model)
        if layers is not None:
            out = _linear_grad_stat_sum(model, layers, x, sample_loss, extras, stat)
            if out is not None:
                return out
    return {n: stat(g).sum(0) for n, g in per_sample_grads(model, x, sample_loss, extras).items()}


def _chunk(model: nn.Module, chunk: int, backend: str) -> int:
    """``chunk`` bounds the per-sample gradients vmap materialises; the Linear path holds only activations."""
    return max(chunk, 4096) if backend == "auto" and _linear_layers(model) is not None else chunk


def _masked_log_softmax(logits: Tensor, mask: Tensor) -> Tensor:
    return F.log_softmax(logits.masked_fill(~mask, torch.finfo(logits.dtype).min / 2), dim=-1)


@torch.no_grad()
def _probs(model: nn.Module, x: Tensor, mask: Tensor) -> Tensor:
    return _masked_log_softmax(model(x), mask).exp()


def fisher_diag(model: nn.Module, x: Tensor, y: Tensor, mask: Tensor, kind: str = "true", chunk: int = 256,
                generator: torch.Generator | None = None, backend: str = "auto") -> dict[str, Tensor]:
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
    chunk = _chunk(model, chunk, backend)
    for s in range(0, len(x), chunk):
        xb, yb, mb = x[s : s + chunk], y[s : s + chunk], mask[s : s + chunk]
        if kind == "empirical":
            sq = grad_stat_sum(model, xb, nll, (yb, mb), torch.square, backend)
        elif kind == "true":
            probs = _probs(model, xb, mb)
            # sampled on the CPU so a CPU generator seeds it on any device
            sampled = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(yb.device)
            sq = grad_stat_sum(model, xb, nll, (sampled, mb), torch.square, backend)
        else:
            probs = _probs(model, xb, mb)
            classes = mb.any(0).nonzero().squeeze(1)  # candidate units of this chunk
            k = len(classes)
            xr = xb.repeat_interleave(k, 0)
            yr = classes.repeat(len(xb))
            mr = mb.repeat_interleave(k, 0)
            wr = probs[:, classes].reshape(-1)
            sq = grad_stat_sum(model, xr, wnll, (yr, mr, wr), torch.square, backend)
        for n, g in sq.items():
            total[n] += g
    model.train(was_training)
    return {n: t / len(x) for n, t in total.items()}


def mas_importance(model: nn.Module, x: Tensor, mask: Tensor, chunk: int = 256,
                   backend: str = "auto") -> dict[str, Tensor]:
    """MAS: E_x |d(0.5 ||f(x)||^2)/d theta| with f(x) the candidate outputs (non-candidates zeroed)."""
    was_training = model.training
    model.eval()

    def half_sq_norm(logits: Tensor, mi: Tensor) -> Tensor:
        return 0.5 * (logits * mi).pow(2).sum()

    total = {n: torch.zeros_like(p) for n, p in _named_trainable(model).items()}
    chunk = _chunk(model, chunk, backend)
    for s in range(0, len(x), chunk):
        absolute = grad_stat_sum(model, x[s : s + chunk], half_sq_norm, (mask[s : s + chunk],), torch.abs, backend)
        for n, g in absolute.items():
            total[n] += g
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
