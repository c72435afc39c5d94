"""``save_pretrained`` / ``from_pretrained`` of Atom-quantized transformers models.

    atom_ao.save_pretrained(model, "out/")   # config.json + atom_ao_model.safetensors (+ generation_config.json)
    model = atom_ao.from_pretrained("out/")      # no calibration data; bit-identical weights

Why not transformers' own ``TorchAoConfig`` path (transformers 5.x, torchao 0.18): it cannot
carry a third-party format. ``TorchAoConfig.from_dict`` rebuilds the quantization config with
``torchao.core.config.config_from_dict``, which only looks classes up in torchao's own modules
(``ALLOWED_AO_MODULES``), and the pre-quantized safetensors path (``torchao.prototype.safetensors``)
only flattens and rebuilds the tensor classes on its fixed list (``ALLOWED_TENSORS_SUBCLASSES``:
Float8Tensor, Int4Tensor, ...). Making it accept ``AtomConfig`` / ``AtomQuantTensor`` would mean
patching those module-level allow-lists at import time, so atom_ao writes the checkpoint itself:

* ``config.json``: the model's config, with ``quantization_config = {"quant_method": "atom_ao",
  ...}`` naming the format and every quantized module with its group size, outlier count and
  activation clip ratio (transformers 5 only warns about a method it does not know);
* ``atom_ao_model.safetensors``, deliberately not ``model.safetensors``: a plain
  ``AutoModelForCausalLM.from_pretrained(dir)`` finds no weights file and stops with an error,
  instead of loading the float weights it can read and initializing the packed ones at random.
  In it, every ``AtomQuantTensor`` flattened into its plain tensors
  (``<name>:qdata``, ``:scale``, ``:outlier_qdata``, ``:outlier_scale``, ``:perm``; attributes in
  the file's metadata, see ``atom_ao.serialization``), float tensors as they are. Parameters that
  share storage (tied embeddings) are written once and tied again on load; permutations shared
  by q/k/v (gate/up) come back shared.

Nothing is unpickled: loading reads JSON and safetensors only. (``torch.load(weights_only=True)``
of a ``torch.save``-d state dict stays available and allow-lists ``AtomQuantTensor`` only.)
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch

from atom_ao.serialization import load_quantized, write_state_dict
from atom_ao.tensor import AtomQuantTensor

__all__ = ["save_pretrained", "from_pretrained", "QUANT_METHOD", "WEIGHTS_NAME"]

QUANT_METHOD = "atom_ao"
WEIGHTS_NAME = "atom_ao_model.safetensors"


def _quantization_config(state_dict: dict) -> dict:
    modules = {}
    for key, value in state_dict.items():
        if isinstance(value, AtomQuantTensor):
            modules[key.removesuffix(".weight")] = {
                "group_size": value.group_size,
                "n_outliers": value.n_outliers,
                "act_clip_ratio": value.act_clip_ratio,
            }
    import atom_ao

    return {"quant_method": QUANT_METHOD, "format_version": 1, "atom_ao_version": atom_ao.__version__,
            "weights": WEIGHTS_NAME, "modules": modules}


def save_pretrained(model: torch.nn.Module, save_directory: str | os.PathLike) -> Path:
    """Write an Atom-quantized transformers model to ``save_directory`` (created if needed).

    Returns the directory. The model is not modified (its config is copied before the
    ``quantization_config`` entry is added).
    """
    if not hasattr(getattr(model, "config", None), "save_pretrained"):
        raise TypeError("atom_ao.save_pretrained: expected a transformers PreTrainedModel (with .config)")
    out = Path(save_directory)
    stale = [n for n in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin") if (out / n).exists()]
    if stale:  # transformers would load those instead of ours, without a word about it
        raise FileExistsError(f"atom_ao.save_pretrained: {out} already holds {stale}; remove them or choose another directory")
    out.mkdir(parents=True, exist_ok=True)
    state_dict = model.state_dict()
    if not any(isinstance(v, AtomQuantTensor) for v in state_dict.values()):
        raise ValueError("atom_ao.save_pretrained: the model has no Atom-quantized weight; use model.save_pretrained")
    write_state_dict(state_dict, str(out / WEIGHTS_NAME), {"format": "pt"})

    config = copy.deepcopy(model.config)
    config.quantization_config = _quantization_config(state_dict)
    config.save_pretrained(out)
    gen = getattr(model, "generation_config", None)
    if gen is not None and hasattr(gen, "save_pretrained"):
        gen.save_pretrained(out)
    return out


def _model_class(config, model_class):
    if model_class is not None:
        return model_class
    import transformers

    for name in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    return transformers.AutoModelForCausalLM


def _no_init_weights():
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers < 5
        from transformers.modeling_utils import no_init_weights
    return no_init_weights()


def from_pretrained(
    directory: str | os.PathLike,
    model_class=None,
    device: torch.device | str | None = None,
) -> torch.nn.Module:
    """Load a ``save_pretrained`` directory: the architecture from ``config.json`` (its
    ``architectures`` entry, or ``model_class``), weights as saved, in eval mode. No calibration
    data; the quantized weights are bit-identical to the saved ones. ``device``: where the model
    is built and the tensors are loaded (default CPU)."""
    from transformers import AutoConfig

    directory = Path(directory)
    config = AutoConfig.from_pretrained(directory)
    qc = getattr(config, "quantization_config", None)
    if not isinstance(qc, dict) or qc.get("quant_method") != QUANT_METHOD:
        raise ValueError(f"{directory}: not an atom_ao checkpoint (config.json has no "
                         f"quantization_config with quant_method={QUANT_METHOD!r}); use transformers' from_pretrained")
    if qc.get("format_version") != 1:
        raise ValueError(f"{directory}: unsupported atom_ao checkpoint format_version {qc.get('format_version')}")
    del config.quantization_config  # the architecture is built as a float model, then filled
    device = torch.device(device or "cpu")
    with torch.device(device), _no_init_weights():
        cls = _model_class(config, model_class)
        model = (getattr(cls, "from_config", None) or cls._from_config)(config)

    path = str(directory / qc.get("weights", WEIGHTS_NAME))
    load_quantized(model, path, strict=True, device=str(device))

    if (directory / "generation_config.json").exists() and hasattr(model, "generation_config"):
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(directory)
    return model.eval()
