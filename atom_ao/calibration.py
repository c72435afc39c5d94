"""Running calibration text through a prepared model, and the whole prepare -> convert flow.

``quantize_calibrated`` has two orders:

* all at once (RTN's default): observers in every linear, one pass of the calibration batches
  through the float model, every linear converted;
* sequential, block by block (GPTQ's default): the inputs of the first decoder block are captured,
  then for each block in turn its linears observe those inputs (and collect the GPTQ Hessian),
  the block is quantized, and the block's *quantized* output becomes the next block's input, so
  every block's GPTQ compensates the errors of the blocks before it. Only one block's Hessians
  are alive at a time. (The quantized outputs are computed with fake-quantized float linears,
  the same function as the W4A4 path up to float rounding, ~3x faster on CPU.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torchao.quantization import quantize_
from tqdm.auto import tqdm

from atom_ao.config import AtomConfig
from atom_ao.observer import AtomObservedLinear


@torch.no_grad()
def calibrate(model: torch.nn.Module, batches: Iterable | torch.Tensor, progress: bool = True) -> int:
    """Feed calibration batches through a model prepared with ``atom_config(step="prepare")``.

    ``batches``: a (n, seq_len) LongTensor of token ids (one sequence per forward), or any
    iterable of token-id tensors or of keyword dicts for the model. Returns the tokens seen.
    Observers that want the quantized-input GPTQ Hessian (``gptq_hessian="quant"``) get a second
    pass over the same batches, once the first has fixed their outlier channels.
    """
    if not torch.is_tensor(batches) and not hasattr(batches, "__len__"):
        batches = list(batches)  # may be needed twice
    seen = _feed(model, batches, progress, "calibrating")
    second = [m for m in model.modules() if isinstance(m, AtomObservedLinear) and m.needs_quant_pass]
    if second:
        for m in second:
            m.begin_quant_hessian()
        _feed(model, batches, progress, "calibrating (quantized-input Hessian)")
    return seen


def _feed(model, batches, progress, desc) -> int:
    device = next(model.parameters()).device
    seen = 0
    total = len(batches) if hasattr(batches, "__len__") else None
    for batch in tqdm(batches, total=total, desc=desc, disable=not progress):
        if isinstance(batch, dict):
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            model(**batch)
            seen += batch["input_ids"].numel() if "input_ids" in batch else 0
        else:
            ids = batch.to(device)
            ids = ids[None] if ids.dim() == 1 else ids
            model(ids)
            seen += ids.numel()
    return seen


_FIELDS = ("n_outliers", "group_size", "act_clip_ratio", "act_mapping", "weight_clip_ratio", "weight_method", "gptq_hessian",
           "gptq_damp")


def quantize_calibrated(
    model: torch.nn.Module,
    batches: Iterable | torch.Tensor,
    config: AtomConfig | None = None,
    filter_fn: Callable | None = None,
    progress: bool = True,
    sequential: bool | None = None,
    device: torch.device | str | None = None,
    fold: bool = True,
) -> torch.nn.Module:
    """prepare -> calibrate -> convert in one call (the calibrated Atom flow).

    ``fold`` (default): after converting, fold each gated MLP's down_proj permutation into the
    output rows of gate_proj / up_proj (``atom_ao.fold.fold_mlp_permutations``: exact, the same
    function), so down_proj's activation quantizer reads its input in order.

    ``sequential`` (default: True for ``weight_method="gptq"``, False for RTN) quantizes block by
    block, each block calibrated on the quantized output of the ones before (see the module doc).
    It needs a model with a ``torch.nn.ModuleList`` of decoder blocks (every transformers causal
    LM); a model without one falls back to the all-at-once order. ``device`` (sequential only):
    each block is moved there for its turn and back afterwards, so a model larger than that
    device's memory can be calibrated (the embeddings and the capture run where the model is).
    """
    config = config or AtomConfig()
    if not torch.is_tensor(batches) and not hasattr(batches, "__len__"):
        batches = list(batches)  # read more than once
    fields = {k: getattr(config, k) for k in _FIELDS}
    prepare, convert = AtomConfig(**fields, step="prepare"), AtomConfig(**fields, step="convert")
    if sequential is None:
        sequential = config.weight_method == "gptq"
    blocks = find_blocks(model) if sequential else None
    quantize_(model, prepare, filter_fn=filter_fn)
    if blocks is None:
        calibrate(model, batches, progress=progress)
        quantize_(model, convert, filter_fn=filter_fn)
    else:
        _sequential(model, blocks, batches, convert, progress, device)
    if fold:
        from atom_ao.fold import fold_mlp_permutations

        fold_mlp_permutations(model)
    return model


def find_blocks(model: torch.nn.Module) -> torch.nn.ModuleList | None:
    """The model's decoder blocks: the longest ``ModuleList`` whose entries hold linears."""
    best = None
    for m in model.modules():
        if isinstance(m, torch.nn.ModuleList) and len(m) > 0 and all(
                any(isinstance(c, torch.nn.Linear) for c in b.modules()) for b in m):
            if best is None or len(m) > len(best):
                best = m
    return best


class _Captured(Exception):
    pass


def _convert_observed(root: torch.nn.Module, config: AtomConfig, prefix: str) -> None:
    """Convert every observer under ``root`` in place (the handler's convert step)."""
    from atom_ao.handler import _atom_transform

    names = [n for n, m in root.named_modules() if isinstance(m, AtomObservedLinear)]
    if config.weight_method == "gptq":
        _gptq_shared_inputs([root.get_submodule(n) for n in names], config)
    for cur_fqn in names:  # the handler's error messages read the name from `cur_fqn`
        parent_name, _, child = cur_fqn.rpartition(".")
        parent = root.get_submodule(parent_name) if parent_name else root
        cur_fqn = f"{prefix}{cur_fqn}"
        setattr(parent, child, _atom_transform(getattr(parent, child), config))


def _gptq_shared_inputs(observers: list, config: AtomConfig) -> None:
    """Linears fed the same input (q/k/v, gate/up) have the same Hessian and permutation, and GPTQ
    treats rows independently: run it once on their stacked rows (fewer sequential column steps)
    and leave each its rows (``_gptq_result``), which the handler's convert step then uses."""
    import hashlib

    from atom_ao.gptq import gptq_quantize_weight
    from atom_ao.handler import _shared_permutation

    groups: dict = {}
    for m in observers:
        if m.hessian is None or int(m.act_tokens) == 0:
            continue
        key = (m.in_features, hashlib.sha1(m.act_sq_sum.cpu().numpy().tobytes()).hexdigest(),
               hashlib.sha1(m.hessian.cpu().numpy().tobytes()).hexdigest())
        groups.setdefault(key, []).append(m)
    for mods in groups.values():
        if len(mods) < 2:
            continue
        perm = _shared_permutation(mods[0].act_sq_sum, config.n_outliers)
        w = torch.cat([m.weight.detach().float() for m in mods])
        t = gptq_quantize_weight(w, mods[0].hessian, perm, config.n_outliers, config.group_size,
                                 config.weight_clip_ratio, config.gptq_damp, what="stacked linears")
        start = 0
        for m in mods:
            rows = slice(start, start + m.out_features)
            m._gptq_result = {k: (v if k == "perm" else v[rows]) for k, v in t.items()}
            start += m.out_features


def _simulated(block):
    """A copy of a quantized block whose Atom linears run as fake-quantized float linears: the
    same function as the W4A4 path up to float rounding, ~3x faster on CPU (see
    ``atom_ao.eval.simulate``); used only to compute the next block's calibration inputs."""
    import copy

    from atom_ao.eval.simulate import simulate_

    return simulate_(copy.deepcopy(block))


def _to(obj, device):
    """Tensors inside tuples / lists / dicts moved to ``device``."""
    if torch.is_tensor(obj):
        return obj.to(device)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


def _with_hidden(args, kwargs, h):
    if args:
        return (h,) + tuple(args[1:]), kwargs
    return args, {**kwargs, "hidden_states": h}


def _block_output(out):
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def _sequential(model, blocks, batches, convert: AtomConfig, progress: bool, work_device=None) -> None:
    # 1. the first block's inputs (hidden states + the keyword arguments the model passes it)
    inputs: list[tuple[tuple, dict]] = []

    def grab(module, args, kwargs):
        inputs.append((args, kwargs))
        raise _Captured

    handle = blocks[0].register_forward_pre_hook(grab, with_kwargs=True)
    device = next(model.parameters()).device
    try:
        for batch in tqdm(batches, desc="capturing block inputs", disable=not progress):
            ids = batch.to(device)
            try:
                model(ids[None] if ids.dim() == 1 else ids, use_cache=False)
            except _Captured:
                pass
    finally:
        handle.remove()
    blocks_name = next(n for n, m in model.named_modules() if m is blocks)

    def run(block):
        outs = []
        for args, kwargs in inputs:
            outs.append(_block_output(block(*args, **kwargs)))
        return outs

    home = device
    if work_device is not None:
        inputs = [(_to(args, work_device), _to(kwargs, work_device)) for args, kwargs in inputs]

    # 2. block by block: observe, (second pass for the quantized-input Hessian), quantize, outputs
    for i, block in enumerate(tqdm(blocks, desc="quantizing blocks", disable=not progress)):
        if work_device is not None:
            block.to(work_device)
        run(block)
        second = [m for m in block.modules() if isinstance(m, AtomObservedLinear) and m.needs_quant_pass]
        if second:
            for m in second:
                m.begin_quant_hessian()
            run(block)
        _convert_observed(block, convert, f"{blocks_name}.{i}.")
        outs = run(_simulated(block))
        inputs = [_with_hidden(args, kwargs, h) for h, (args, kwargs) in zip(outs, inputs)]
        if work_device is not None:
            block.to(home)

    # 3. observed linears outside the blocks (e.g. lm_head, if the filter let it in): a normal
    #    calibration pass through the now-quantized model
    if any(isinstance(m, AtomObservedLinear) for m in model.modules()):
        calibrate(model, batches, progress=progress)
        _convert_observed(model, convert, "")
