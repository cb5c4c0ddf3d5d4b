"""Parameter importance from per-sample gradients (``torch.func``: ``functional_call`` + ``vmap(grad)``).

Diagonal Fisher estimators, all E_x[...] over the given inputs, with log p the scenario-masked softmax:

* ``empirical``: E_x[ g(x, y_data)^2 ]
* ``true``     : E_x[ g(x, y~p(.|x))^2 ]            (one sampled label per input)
* ``expected`` : E_x[ sum_c p(c|x) g(x, c)^2 ]       (the exact expectation over classes)
* ``predicted``: E_x[ g(x, argmax_c p(c|x))^2 ]      (the model's own label: van de Ven & Tolias 2019's code)
* ``weighted_empirical``: E_x[ p(y_data|x) g(x, y_data)^2 ]   (mammoth's EWC: confident samples count more)

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

FISHER_KINDS = ("empirical", "true", "expected", "predicted", "weighted_empirical")
LABEL_KINDS = ("empirical", "true", "predicted")  # the kinds that are one label per sample (fisher_labels)


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


def linear_layers(model: nn.Module) -> dict[str, nn.Linear] | None:
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
    factors = _linear_factors(model, layers, x, sample_loss, extras)
    if factors is None:
        return None  # a layer used twice or on sequences: fall back to the general path
    out: dict[str, Tensor] = {}
    trainable = _named_trainable(model)
    for n, m in layers.items():
        if n not in factors:
            continue
        a, d = (stat(t) for t in factors[n])
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
        layers = linear_layers(model)
        if layers is not None:
            out = _linear_grad_stat_sum(model, layers, x, sample_loss, extras, stat)
            if out is not None:
                return out
    return {n: stat(g).sum(0) for n, g in per_sample_grads(model, x, sample_loss, extras).items()}


def _chunk(model: nn.Module, chunk: int, backend: str) -> int:
    """``chunk`` bounds the per-sample gradients vmap materialises; the Linear path holds only activations."""
    return max(chunk, 4096) if backend == "auto" and linear_layers(model) is not None else chunk


def _masked_log_softmax(logits: Tensor, mask: Tensor) -> Tensor:
    return F.log_softmax(logits.masked_fill(~mask, torch.finfo(logits.dtype).min / 2), dim=-1)


@torch.no_grad()
def _probs(model: nn.Module, x: Tensor, mask: Tensor) -> Tensor:
    return _masked_log_softmax(model(x), mask).exp()


def fisher_labels(model: nn.Module, x: Tensor, y: Tensor, mask: Tensor, kind: str,
                  generator: torch.Generator | None = None) -> Tensor:
    """The label each sample's gradient is taken at: the dataset's (``empirical``), one drawn from the model
    (``true``) or the model's argmax (``predicted``)."""
    if kind == "empirical":
        return y
    probs = _probs(model, x, mask)
    if kind == "predicted":
        return probs.argmax(1)
    if kind != "true":
        raise ValueError(f"fisher_labels: kind={kind!r} is not one of {', '.join(LABEL_KINDS)}")
    # sampled on the CPU so a CPU generator seeds it on any device
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(y.device)


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
        if kind in LABEL_KINDS:
            labels = fisher_labels(model, xb, yb, mb, kind, generator)
            sq = grad_stat_sum(model, xb, nll, (labels, mb), torch.square, backend)
        elif kind == "weighted_empirical":
            weight = _probs(model, xb, mb).gather(1, yb.view(-1, 1)).squeeze(1).detach()
            sq = grad_stat_sum(model, xb, wnll, (yb, mb, weight), torch.square, backend)
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


def kfac_factors(model: nn.Module, x: Tensor, y: Tensor, mask: Tensor, kind: str = "true", chunk: int = 4096,
                 generator: torch.Generator | None = None) -> dict[str, tuple[Tensor, Tensor]]:
    """K-FAC's Fisher per Linear layer (Martens & Grosse 2015): ``{layer: (A, G)}`` with A = E[a a^T] over the
    layer's inputs a (a 1 appended when it has a bias) and G = E[d d^T] over the per-sample gradients d of
    -log p(label | x) with respect to its outputs; the layer's Fisher block over vec([W, b]) (columns stacked)
    is approximated by A (x) G. ``kind``: one label per sample, as :func:`fisher_labels`. Every trainable
    parameter must live in a Linear layer used once per forward."""
    if kind not in LABEL_KINDS:
        raise ValueError(f"kfac_factors: kind={kind!r} is not one of {', '.join(LABEL_KINDS)}")
    layers = linear_layers(model)
    if layers is None:
        raise ValueError("kfac_factors: every trainable parameter must live in a Linear layer")
    was_training = model.training
    model.eval()

    def nll(logits: Tensor, yi: Tensor, mi: Tensor) -> Tensor:
        return -_masked_log_softmax(logits, mi).gather(0, yi.view(1)).squeeze(0)

    sums: dict[str, list[Tensor]] = {}
    for s in range(0, len(x), chunk):
        xb, yb, mb = x[s : s + chunk], y[s : s + chunk], mask[s : s + chunk]
        labels = fisher_labels(model, xb, yb, mb, kind, generator)
        factors = _linear_factors(model, layers, xb, nll, (labels, mb))
        if factors is None:
            raise ValueError("kfac_factors: a Linear layer is used twice or on sequences")
        for name, (a, d) in factors.items():
            if layers[name].bias is not None:
                a = torch.cat([a, a.new_ones(len(a), 1)], 1)
            A, G = a.T @ a, d.T @ d
            if name in sums:
                sums[name][0] += A
                sums[name][1] += G
            else:
                sums[name] = [A, G]
    model.train(was_training)
    return {name: (A / len(x), G / len(x)) for name, (A, G) in sums.items()}


def add_kronecker(old: tuple[Tensor, Tensor], new: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """One Kronecker product standing for A1 (x) G1 + A2 (x) G2: (A1 + A2 / pi, G1 + pi G2) with
    pi = sqrt(tr G1 tr A2 / (tr G2 tr A1)), the additive rule of NCL (Kao et al. 2021) that van de Ven's code
    uses for online K-FAC EWC. The sum of factors adds cross terms A1 (x) pi G2 + A2 / pi (x) G1; this pi makes
    their trace the smallest. A factor pair with zero trace adds nothing."""
    (A1, G1), (A2, G2) = old, new
    t_a1, t_g1, t_a2, t_g2 = (float(torch.trace(m)) for m in (A1, G1, A2, G2))
    if min(t_a1, t_g1) <= 0:
        return A2, G2
    if min(t_a2, t_g2) <= 0:
        return A1, G1
    pi = (t_g1 * t_a2 / (t_g2 * t_a1)) ** 0.5
    return A1 + A2 / pi, G1 + pi * G2


def mas_importance(model: nn.Module, x: Tensor, mask: Tensor, chunk: int = 256,
                   backend: str = "auto", abs_batch: int | None = None) -> dict[str, Tensor]:
    """MAS: E_x |d(0.5 ||f(x)||^2)/d theta| with f(x) the candidate outputs (non-candidates zeroed).

    ``abs_batch=n``: the absolute value is taken of the gradient of n samples' summed norms, as A-GEM's code
    does (batches of 100), not of each sample's; |sum| <= sum |.|, so the importance is smaller."""
    was_training = model.training
    model.eval()

    def half_sq_norm(logits: Tensor, mi: Tensor) -> Tensor:
        return 0.5 * (logits * mi).pow(2).sum()

    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    if abs_batch is not None:
        for s in range(0, len(x), abs_batch):
            grads = torch.autograd.grad(half_sq_norm(model(x[s : s + abs_batch]), mask[s : s + abs_batch]),
                                        list(params.values()))
            for n, g in zip(params, grads):
                total[n] += g.abs()
    else:
        chunk = _chunk(model, chunk, backend)
        for s in range(0, len(x), chunk):
            absolute = grad_stat_sum(model, x[s : s + chunk], half_sq_norm, (mask[s : s + chunk],), torch.abs,
                                     backend)
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


# ----------------------------------------------------------------------------------------------------------
# per-sample gradients as a matrix G [N, P], for Fisher-vector products, spectra and interference


class SampleGradients:
    """The per-sample gradients g_n of ``nll`` (flattened over the trainable parameters) of N samples, as an
    operator: G @ V, G^T @ C, row norms, and Gram blocks G1 G2^T. For all-Linear models it is held in factored
    form (each layer's inputs a_n and output gradients d_n; g_n restricted to W is d_n a_n^T), N * (in + out)
    numbers per layer instead of N * P; otherwise G is materialised in float32 (``vmap(grad)``)."""

    def __init__(self, model: nn.Module, x: Tensor, y: Tensor, mask: Tensor, backend: str = "auto",
                 chunk: int = 64):
        was_training = model.training
        model.eval()
        self.params = _named_trainable(model)
        self.names = list(self.params)
        self.sizes = [p.numel() for p in self.params.values()]
        self.dim = sum(self.sizes)
        self.n = len(x)

        def nll(logits: Tensor, yi: Tensor, mi: Tensor) -> Tensor:
            return -_masked_log_softmax(logits, mi).gather(0, yi.view(1)).squeeze(0)

        self.factors: dict[str, tuple[Tensor, Tensor]] | None = None
        layers = linear_layers(model) if backend == "auto" else None
        if layers is not None:
            self.factors = _linear_factors(model, layers, x, nll, (y, mask))
        if self.factors is None:
            rows = []
            for s in range(0, len(x), chunk):
                g = per_sample_grads(model, x[s : s + chunk], nll, (y[s : s + chunk], mask[s : s + chunk]))
                rows.append(torch.cat([g[n].flatten(1) for n in self.names], 1))
            self.dense = torch.cat(rows)
        model.train(was_training)

    def head(self, n: int) -> SampleGradients:
        """The first ``n`` samples' gradients (a view, nothing recomputed)."""
        out = object.__new__(SampleGradients)
        out.__dict__.update(self.__dict__)
        out.n = min(n, self.n)
        if self.factors is None:
            out.dense = self.dense[:n]
        else:
            out.factors = {k: (a[:n], d[:n]) for k, (a, d) in self.factors.items()}
        return out

    # -- layout
    def split(self, flat: Tensor) -> dict[str, Tensor]:
        """A flat [P, ...] tensor as {name: [*param.shape, ...]}."""
        out, at = {}, 0
        for n, size in zip(self.names, self.sizes):
            out[n] = flat[at : at + size].reshape(*self.params[n].shape, *flat.shape[1:])
            at += size
        return out

    def _parts(self) -> list[tuple[str, str, Tensor, Tensor]]:
        """(param name, 'weight'|'bias', d [N, out], a [N, in]) for every trainable Linear parameter."""
        parts = []
        for layer, (a, d) in self.factors.items():
            for kind in ("weight", "bias"):
                if f"{layer}.{kind}" in self.params:
                    parts.append((f"{layer}.{kind}", kind, d, a))
        return parts

    # -- products
    def matmul(self, V: Tensor) -> Tensor:
        """G @ V for V [P, m]: [N, m], each sample's gradient dotted with each column."""
        if self.factors is None:
            return self.dense @ V
        out = V.new_zeros(self.n, V.shape[1])
        blocks = self.split(V)
        for name, kind, d, a in self._parts():
            Vb = blocks[name]  # weight: [out, in, m]; bias: [out, m]
            if kind == "weight":  # (d_n V_j) . a_n for each column j, never an [N, out, in] intermediate
                out += (torch.matmul(d, Vb.permute(2, 0, 1)) * a).sum(-1).T
            else:
                out += d @ Vb
        return out

    def rmatmul(self, C: Tensor) -> Tensor:
        """G^T @ C for C [N, m]: [P, m], sum_n C[n] g_n."""
        if self.factors is None:
            return self.dense.T @ C
        blocks = {}
        for name, kind, d, a in self._parts():
            if kind == "weight":  # sum_n C[n, j] d_n a_n^T for each column j: [m, out, in], then columns last
                blocks[name] = torch.matmul((d.unsqueeze(0) * C.T.unsqueeze(2)).transpose(1, 2), a).permute(1, 2, 0)
            else:
                blocks[name] = d.T @ C
        return torch.cat([blocks[n].reshape(-1, C.shape[1]) for n in self.names])

    def sq_norms(self) -> Tensor:
        """||g_n||^2 for each sample: [N]."""
        if self.factors is None:
            return self.dense.pow(2).sum(1)
        out = 0
        for _, kind, d, a in self._parts():
            out = out + d.pow(2).sum(1) * (a.pow(2).sum(1) if kind == "weight" else 1)
        return out

    def gram(self, other: SampleGradients | None = None) -> Tensor:
        """G G_other^T: [N, N_other] of per-sample gradient dot products (a Linear weight's is (d.d')(a.a'))."""
        other = self if other is None else other
        if self.factors is None or other.factors is None:
            return self._flat() @ other._flat().T
        out = 0
        for (_, kind, d, a), (_, _, d2, a2) in zip(self._parts(), other._parts()):
            out = out + (d @ d2.T) * ((a @ a2.T) if kind == "weight" else 1)
        return out

    def _flat(self) -> Tensor:
        if self.factors is None:
            return self.dense
        return self.rmatmul(torch.eye(self.n, device=next(iter(self.params.values())).device)).T

    def mean(self) -> Tensor:
        """The gradient of the mean loss: [P]."""
        return self.rmatmul(torch.full((self.n, 1), 1.0 / self.n, device=self._device())).squeeze(1)

    def _device(self) -> torch.device:
        return next(iter(self.params.values())).device

    # -- the Fisher F = G^T G / N, never formed
    def fisher_matmul(self, V: Tensor) -> Tensor:
        """F @ V = E_n[ g_n (g_n . V) ]."""
        return self.rmatmul(self.matmul(V)) / self.n

    def fisher_trace(self) -> float:
        return float(self.sq_norms().sum()) / self.n

    def fisher_diag_flat(self) -> Tensor:
        if self.factors is None:
            return self.dense.pow(2).mean(0)
        blocks = {}
        for name, kind, d, a in self._parts():
            blocks[name] = d.pow(2).T @ a.pow(2) if kind == "weight" else d.pow(2).sum(0)
        return torch.cat([blocks[n].reshape(-1) for n in self.names]) / self.n


def _linear_factors(model: nn.Module, layers: dict[str, nn.Linear], x: Tensor,
                    sample_loss: Callable[..., Tensor], extras: tuple[Tensor, ...]
                    ) -> dict[str, tuple[Tensor, Tensor]] | None:
    """{layer: (inputs a [N, in], per-sample output gradients d [N, out])} from one backward pass, or None when
    a layer is used twice or on sequences (the factorisation would not hold)."""
    acts: dict[str, Tensor] = {}
    outputs: dict[str, Tensor] = {}
    calls: dict[str, int] = {}

    def on_forward(name):
        def hook(module, inputs, output):
            acts[name] = inputs[0].detach()
            calls[name] = calls.get(name, 0) + 1
            if output.requires_grad:
                outputs[name] = output
        return hook

    handles = [m.register_forward_hook(on_forward(n)) for n, m in layers.items()]
    try:
        with torch.enable_grad():
            logits = model(x)
            losses = vmap(sample_loss)(logits, *extras)  # one loss per sample: rows of delta stay per-sample
            # d(sum loss)/d(each layer's output) only: asking for the parameters' gradients instead would also
            # run every weight-gradient matmul, the same arithmetic the caller then does with the factors
            names = list(outputs)
            grads = torch.autograd.grad(losses.sum(), [outputs[n] for n in names]) if names else ()
    finally:
        for h in handles:
            h.remove()
    deltas = {n: g.detach() for n, g in zip(names, grads)}
    if any(calls.get(n, 0) != 1 or acts[n].dim() != 2 for n in layers if n in calls):
        return None
    return {n: (acts[n], deltas[n]) for n in layers if n in deltas}


def lanczos_top(matmul: Callable[[Tensor], Tensor], dim: int, k: int, steps: int | None = None,
                generator: torch.Generator | None = None, device: torch.device | str = "cpu",
                tol: float = 1e-10) -> tuple[Tensor, Tensor]:
    """Top-``k`` eigenpairs of a symmetric PSD operator given only ``matmul(V [dim, 1])``: Lanczos with full
    reorthogonalisation (the Krylov basis is kept, so Ritz vectors come for free). Returns (eigenvalues [k]
    descending, eigenvectors [dim, k]); ``steps`` defaults to min(dim, max(2k, k + 30))."""
    k = min(k, dim)
    steps = min(dim, steps or max(2 * k, k + 30))
    q = torch.randn(dim, generator=generator).to(device, torch.float64)
    q /= q.norm()
    Q = torch.zeros(dim, steps, dtype=torch.float64, device=device)
    alphas, betas = [], []
    for j in range(steps):
        Q[:, j] = q
        w = matmul(q.float().unsqueeze(1)).squeeze(1).double()
        alphas.append(float(q @ w))
        for _ in range(2):  # twice is enough (Parlett's "twice is enough")
            w -= Q[:, : j + 1] @ (Q[:, : j + 1].T @ w)
        beta = float(w.norm())
        if beta <= tol * max(1.0, abs(alphas[0])) or j == steps - 1:
            break
        betas.append(beta)
        q = w / beta
    m = len(alphas)
    T = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if m > 1:
        off = torch.tensor(betas[: m - 1], dtype=torch.float64)
        T += torch.diag(off, 1) + torch.diag(off, -1)
    evals, evecs = torch.linalg.eigh(T.to(device))
    order = evals.argsort(descending=True)[:k]
    return evals[order].float(), (Q[:, :m] @ evecs[:, order]).float()
