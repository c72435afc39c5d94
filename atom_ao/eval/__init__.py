"""Evaluation: perplexity on real text (``atom_ao.eval.perplexity``)."""
