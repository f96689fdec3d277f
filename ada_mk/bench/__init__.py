"""adamk-bench: decode speed of the MegaKernel against PyTorch baselines on one card, in one run.

    adamk-bench --config configs/llama3-8b.yaml --context 512 4096      (on the GPU machine)

report (byte accounting, RESULTS.md, JSON, plots) and cli need no torch; baselines (the gpt-fast-
style decoder, HF helpers) and the GPU half of harness import it when they run.
"""
