"""Rollout engines for rlad (transformers on CPU/GPU, vLLM on GPU) and the Ray rollout worker.

Empty until the GRPO-on-Ray issue lands: nothing here is implemented yet.
"""
