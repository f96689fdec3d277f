"""GPU tests: run on the lent GPU machine (see tests/gpu/run_on_device.sh); skipped elsewhere."""
import os

import pytest


def _has_gpu() -> bool:
    try:  # without a driver, cuda-python raises its own loader errors, not ImportError
        from cuda.bindings import driver

        err, = driver.cuInit(0)[:1]
        if err != driver.CUresult.CUDA_SUCCESS:
            return False
        err, n = driver.cuDeviceGetCount()
        return err == driver.CUresult.CUDA_SUCCESS and n > 0
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if _has_gpu():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
