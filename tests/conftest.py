import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Without a GPU, Triton kernels run in Triton's interpreter on CPU tensors. The flag is read
# when a kernel is decorated, so it must be set before atom_ao is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def outlier_activations(m, k, n_outlier_channels=4, scale=(50.0, 100.0), dtype=torch.float32, seed=0):
    """Random activations where a few channels are 50-100x larger, like real LLM activations."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(k, generator=g)[:n_outlier_channels]  # first: same seed, same channels
    x = torch.randn(m, k, generator=g)
    x[:, idx] *= torch.empty(n_outlier_channels).uniform_(*scale, generator=g)
    # a token-independent seed for the outlier magnitudes would make them equal across calls;
    # they differ, which is fine: channels, not magnitudes, are what calibration must find
    return x.to(dtype), idx


def two_permutations(k: int = 256, n_outliers: int = 128):
    """An outlier permutation from activations with real outliers, and a different one."""
    from atom_ao.weight import outlier_permutation

    x, _ = outlier_activations(16, k, n_outlier_channels=4)
    other = outlier_permutation(torch.rand(k, generator=torch.Generator().manual_seed(1)), n_outliers)
    return outlier_permutation(x.pow(2).sum(0), n_outliers), other


def quantize_with_permutations(linears, perms, n_outliers: int = 128, group_size: int = 128) -> None:
    """Each nn.Linear's weight becomes an AtomQuantTensor built with the given permutation tensor
    (``AtomQuantTensor.from_hp``: a shared tensor stays shared, as atom_ao's flows give q/k/v)."""
    from atom_ao import AtomQuantTensor

    for lin, p in zip(linears, perms, strict=True):
        w = AtomQuantTensor.from_hp(lin.weight.detach(), p, n_outliers, group_size, 1.0, 1.0)
        lin.weight = torch.nn.Parameter(w, requires_grad=False)


def sqnr(ref: torch.Tensor, x: torch.Tensor) -> float:
    ref, x = ref.detach().double(), x.detach().double()
    return float(10 * torch.log10(ref.pow(2).sum() / (ref - x).pow(2).sum()))
