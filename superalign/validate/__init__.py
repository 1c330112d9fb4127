"""Validation: look inside and at the behaviour of a trained model.

- :mod:`superalign.validate.activations`: activation capture on any HF causal LM under dotted
  hook names (``blocks.{i}.hook_resid_post``), streamed to disk in safetensors chunks;
- :mod:`superalign.validate.probes`: linear probes with cross-validated AUROC on contrast
  datasets of (text, label) pairs, and difference-of-means directions;
- :mod:`superalign.validate.sae`: a TopK sparse autoencoder (FVU, L0, dead latents);
- :mod:`superalign.validate.autointerp`: explain-simulate-score (Bills et al., 2023) of latents;
- :mod:`superalign.validate.interp`: the ``interp`` stage tying them together, with a causal
  steering / ablation check of a found direction.
"""
