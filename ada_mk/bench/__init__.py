"""adamk-bench: decode speed of the MegaKernel against PyTorch baselines on one card, in one run
(the command is ada_mk.cli.bench).

report (byte accounting, the tables file, JSON, plots), spec (what a run measures, the MegaKernel
builds) and readme_table need no torch; baselines (the gpt-fast-style decoder, HF helpers),
quantized (its 8-bit weight-only linears), timing and harness (the GPU half) import it when they run.
"""
