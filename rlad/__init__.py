"""rlad: reinforcement fine-tuning of vision-language models that detect and explain industrial anomalies.

Where things are: the Text-as-Mask codec in ``rlad.mask_text``, the completion parser in
``rlad.completion``, the config schema in ``rlad.config``, evaluation metrics in ``rlad.metrics``;
rewards live in the top-level ``rewards`` package, rollout engines in ``rollout``.
"""

__version__ = "0.1.0"
