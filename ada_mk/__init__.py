"""Ada-MK: one persistent CUDA MegaKernel per (model, GPU, batch) for low-latency LLM decoding."""
__version__ = "0.1.0"
