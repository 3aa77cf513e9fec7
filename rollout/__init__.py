"""Rollout engines for rlad and the Ray rollout worker.

- ``engine.py``: the contract every backend serves (completions with token ids, log-probs, policy version).
- ``transformers_engine.py``: transformers' ``generate`` (CPU and GPU).
- ``vllm_engine.py`` + ``vllm_extension.py``: vLLM (GPU; its CPU build for text models), weights loaded inside
  vLLM's workers.
- ``worker.py``: the Ray actor around one engine.
- ``weight_sync.py``: learner -> engines after every step (object store, broadcast, LoRA adapters), verified.
"""
