"""Saving and loading Atom-quantized models: safetensors (flattened) and torch.save.

safetensors holds plain tensors only, so each ``AtomQuantTensor`` is flattened into its
constituent tensors under ``<key>:<part>`` and its attributes go to the file's JSON metadata.
Tied float weights (a shared embedding / lm_head) are written once and tied again on load.
"""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file, save_file

from atom_ao.tensor import AtomQuantTensor, _check_consistent
from atom_ao.fuse import AtomProjection
from atom_ao.unwrap import AtomLinear

_META_KEY = "atom_ao"
_FORMAT_VERSION = 1
_ALIASES_KEY = "atom_ao_aliases"  # metadata: {key not written: the key holding the same tensor}


def _storage_key(t: torch.Tensor):
    return (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)


def _split_aliases(state_dict: dict) -> tuple[dict, dict[str, str]]:
    """Drop float entries that are the same tensor as an earlier one: {dropped key: kept key}."""
    kept, aliases, seen = {}, {}, {}
    for key, value in state_dict.items():
        if not isinstance(value, AtomQuantTensor) and value.numel() > 0:
            sk = _storage_key(value)
            if sk in seen:
                aliases[key] = seen[sk]
                continue
            seen[sk] = key
        kept[key] = value
    return kept, aliases


def _tie_aliases(model: torch.nn.Module, aliases: dict[str, str]) -> None:
    """Make each aliased parameter the very Parameter of its source again, as at save time."""
    for key, source in aliases.items():
        mod, _, name = key.rpartition(".")
        src_mod, _, src_name = source.rpartition(".")
        setattr(model.get_submodule(mod), name, getattr(model.get_submodule(src_mod), src_name))


def flatten_state_dict(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """state dict (with AtomQuantTensors) -> (plain tensors, safetensors metadata)."""
    tensors, quantized = {}, {}
    for key, value in state_dict.items():
        if isinstance(value, AtomQuantTensor):
            names, attrs = value.__tensor_flatten__()
            for part in names:
                tensors[f"{key}:{part}"] = getattr(value, part).detach().contiguous().clone()
            quantized[key] = {
                "group_size": attrs["group_size"],
                "act_clip_ratio": attrs["act_clip_ratio"],
                "dtype": str(attrs["dtype"]).removeprefix("torch."),
            }
        else:
            # safetensors refuses shared storage (tied weights): store each key on its own
            tensors[key] = value.detach().contiguous().clone()
    meta = {_META_KEY: json.dumps({"version": _FORMAT_VERSION, "quantized": quantized})}
    return tensors, meta


def unflatten_state_dict(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None) -> dict:
    """Inverse of ``flatten_state_dict``. Equal permutations come back as one shared tensor."""
    info = json.loads((metadata or {}).get(_META_KEY, '{"version": 1, "quantized": {}}'))
    if info.get("version") != _FORMAT_VERSION:
        raise ValueError(f"unsupported atom_ao checkpoint version {info.get('version')}")
    out = {k: v for k, v in tensors.items() if ":" not in k}
    perms: list[torch.Tensor] = []
    for key, attrs in info["quantized"].items():
        parts = {p: tensors[f"{key}:{p}"] for p in AtomQuantTensor.tensor_data_names}
        perm = parts["perm"]
        parts["perm"] = next((p for p in perms if p.shape == perm.shape and torch.equal(p, perm)), perm)
        if parts["perm"] is perm:
            perms.append(perm)
        t = AtomQuantTensor(
            **parts, group_size=attrs["group_size"], act_clip_ratio=attrs["act_clip_ratio"],
            dtype=getattr(torch, attrs["dtype"]),
        )
        _check_consistent(t)
        out[key] = t
    return out


def save_quantized(model: torch.nn.Module, path: str) -> None:
    """Write the model's state dict, quantized weights included, to one safetensors file
    (tied weights once)."""
    write_state_dict(model.state_dict(), path)


def write_state_dict(state_dict: dict, path: str, metadata: dict[str, str] | None = None) -> None:
    """A state dict (AtomQuantTensors flattened, tied weights once) + ``metadata`` -> safetensors."""
    kept, aliases = _split_aliases(state_dict)
    tensors, meta = flatten_state_dict(kept)
    meta.update(metadata or {})
    meta[_ALIASES_KEY] = json.dumps(aliases)
    save_file(tensors, path, metadata=meta)


def read_metadata(path: str) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file (without reading its tensors)."""
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        return json.loads(f.read(header_len)).get("__metadata__") or {}


def assign_state_dict(model: torch.nn.Module, state_dict: dict, strict: bool = True) -> torch.nn.Module:
    """``load_state_dict(assign=True)`` that also accepts AtomQuantTensors for float weights."""
    for key, value in state_dict.items():
        if isinstance(value, AtomQuantTensor):
            module_name, _, param = key.rpartition(".")
            module = model.get_submodule(module_name)
            if not isinstance(module, (AtomLinear, AtomProjection)):  # these load it themselves, into buffers
                setattr(module, param, torch.nn.Parameter(value, requires_grad=False))
    model.load_state_dict(state_dict, strict=strict, assign=True)
    return model


def load_quantized(model: torch.nn.Module, path: str, strict: bool = True, device: str = "cpu") -> torch.nn.Module:
    """Load a ``save_quantized`` file into a float model of the same architecture, its tensors
    read onto ``device``.

    No calibration data is needed: quantized weights replace the float ones as they are.
    """
    state_dict, aliases = _read_state_dict(path, device)
    assign_state_dict(model, state_dict, strict)
    _tie_aliases(model, aliases)
    return model


def _read_state_dict(path: str, device: str = "cpu") -> tuple[dict, dict[str, str]]:
    """A safetensors file written here -> (state dict, every key present; its aliases)."""
    metadata = read_metadata(path)
    state_dict = unflatten_state_dict(load_file(path, device=device), metadata)
    aliases = json.loads(metadata.get(_ALIASES_KEY, "{}"))  # files written before session 17 have none
    for key, source in aliases.items():
        state_dict[key] = state_dict[source]
    return state_dict, aliases
