"""Data: the generated benchmark (render, questions, synth), readers of real datasets, contact sheets."""
