"""Helpers that a lab's test cells use, the same in a student's notebook and in the class autograder.

The autograder runs test cells in a trusted process, not in the student's kernel (``autograde/tester.py``):
a student's function is called through a narrow channel and its results come back as data. A few checks
need work done where the student's code lives (building a model the student's function will receive,
running a backward pass through the student's autograd function); ``in_kernel(fn)(...)`` says so. In a
notebook (``make validate``, JupyterLab) everything already runs in the kernel and ``in_kernel(fn)`` is ``fn``.
"""
from __future__ import annotations

_session = None  # the autograder's channel to the kernel while a test cell runs (set by autograde/tester.py)


def in_kernel(fn):
    """``in_kernel(load_model)(...)``: call the library function ``fn`` where the notebook's code runs and
    return what it made (in the autograder: a handle to the kernel's object)."""
    if _session is None:
        return fn
    from optcourse.autograde.remote import library_name

    name = library_name(fn)
    if name is None:
        raise TypeError(f"in_kernel takes a library function, not {fn!r}")

    def call(*args, **kwargs):
        enc = _session.codec.encode
        return _session.op("call_import", target=name, args=enc(list(args)), kwargs=enc(kwargs))

    return call


def autograd_probe(fn, args, grad_output=None):
    """Run ``fn(*args)`` with gradients on the first argument and backpropagate ``grad_output`` (ones when
    None). Returns ``(output, gradient of the first argument)``, both detached; the gradient is None when
    ``fn`` gave none."""
    import torch

    x = torch.as_tensor(args[0]).detach().clone().float().requires_grad_(True)
    y = fn(x, *args[1:])
    g = torch.ones_like(y) if grad_output is None else torch.as_tensor(grad_output, dtype=y.dtype)
    y.backward(g)
    return y.detach(), None if x.grad is None else x.grad.detach()


def seeded_mlp(sizes, seed: int):
    """A small ``nn.Sequential`` of Linear layers with ReLU between them, its weights drawn from ``seed``:
    the same model wherever it is built (for a test that needs one model in the kernel and one beside it)."""
    import torch
    from torch import nn

    generator = torch.Generator().manual_seed(seed)
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        linear = nn.Linear(n_in, n_out)
        with torch.no_grad():
            bound = 1 / n_in ** 0.5
            linear.weight.copy_(torch.rand(n_out, n_in, generator=generator) * 2 * bound - bound)
            linear.bias.copy_(torch.rand(n_out, generator=generator) * 2 * bound - bound)
        layers.append(linear)
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).eval()
