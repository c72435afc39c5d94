"""torch.compile integration: an Inductor post-grad pass that fuses Atom's activation
quantization into the neighbouring ops (see ``passes``).

    atom_ao.inductor.install()     # done for you when quantize_ applies an AtomConfig
    model = torch.compile(model)

``install`` chains onto whatever ``torch._inductor.config.post_grad_custom_post_pass`` holds
(that pass runs first) and is idempotent; ``uninstall`` puts the previous pass back. Opt out of
the automatic install with ``atom_config(inductor_passes=False)`` or ``ATOM_AO_INDUCTOR=0``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch._inductor import config as inductor_config
from torch._inductor.custom_graph_pass import CustomGraphPass

from atom_ao.inductor import passes
from atom_ao.inductor.opaque import keep_quantize_whole

__all__ = ["AtomFusionPass", "install", "uninstall", "is_installed", "auto_install", "ENV_VAR"]

ENV_VAR = "ATOM_AO_INDUCTOR"
_SOURCES = ("passes.py", "match.py", "rmsnorm.py", "silu_mul.py", "opaque.py")


def _source_hash() -> str:
    h = hashlib.sha256()
    for name in _SOURCES:
        h.update((Path(__file__).parent / name).read_bytes())
    return h.hexdigest()


class AtomFusionPass(CustomGraphPass):
    """The atom_ao pass, chained after ``previous`` (an earlier custom pass, or None)."""

    _hash = None

    def __init__(self, previous=None):
        self.previous = previous

    def __call__(self, graph: torch.fx.Graph) -> None:
        if self.previous is not None:
            self.previous(graph)
        passes.run(graph)

    def uuid(self):
        # the FX graph cache keys on this: our sources, and the previous pass's own uuid (a
        # plain callable has none, and then neither do we: Inductor then skips the cache)
        if AtomFusionPass._hash is None:
            AtomFusionPass._hash = _source_hash()
        own = ("atom_ao", AtomFusionPass._hash, passes.fuse_producers())
        if self.previous is None:
            return own
        prev = self.previous.uuid() if isinstance(self.previous, CustomGraphPass) else None
        return None if prev is None else (*own, prev)


def is_installed() -> bool:
    return isinstance(inductor_config.post_grad_custom_post_pass, AtomFusionPass)


def install() -> AtomFusionPass:
    """Install the pass (chained onto any existing post-grad custom pass); idempotent."""
    from atom_ao.inductor import ttir_cache

    ttir_cache.install_if_requested()  # on unless ATOM_AO_TTIR_CACHE=0: see ttir_cache.py
    cur = inductor_config.post_grad_custom_post_pass
    if isinstance(cur, AtomFusionPass):
        return cur
    keep_quantize_whole(is_installed)
    inductor_config.post_grad_custom_post_pass = AtomFusionPass(cur)
    return inductor_config.post_grad_custom_post_pass


def uninstall() -> None:
    """Remove the pass, putting back the pass it was chained onto."""
    cur = inductor_config.post_grad_custom_post_pass
    if isinstance(cur, AtomFusionPass):
        inductor_config.post_grad_custom_post_pass = cur.previous


def auto_install(enabled: bool = True) -> None:
    """What ``quantize_`` calls: install unless opted out (config field or environment)."""
    if enabled and os.environ.get(ENV_VAR, "1").strip().lower() not in ("0", "false", "no", "off"):
        install()
