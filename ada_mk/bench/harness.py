"""The GPU half of adamk-bench: everything in one process, on one card, one system at a time.

Per (config, batch): one HF model with random bf16 weights (the reference, and the eager system);
the gpt-fast-style decoder shares its tensors (torch.compile, flex_attention then SDPA); the
MegaKernel is loaded with the same tensors packed on the GPU. Each is freed before the next.
Last, the quantized baselines (compile-int8, compile-fp8, compile-int4): the decoder with weight-only int8, fp8 or int4
linears quantized from the same tensors; their reference is the same HF model with its linear
weights replaced by the dequantized ones (so the bf16 systems run first).

Context c: the timed steps write positions start .. start + steps - 1 with start = c - steps // 2
(so the cache holds c tokens on average while timing); positions below start hold random K/V,
the same values in HF's cache and the decoder's (the MegaKernel gets its own random K/V). Before a
baseline is timed, its logits for one step at `start` must match HF eager's for the same cache
contents (relative error < CHECK_TOL); the MegaKernel's, over a few prompt steps from position 0.

torch is imported inside functions only.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Callable

from ..config import load_config
from .report import MEGAKERNEL_SYSTEMS, QUANTIZED_BASELINES, Row, plan_step_bytes, step_bytes, system_weights
from .spec import (Spec, config_name, megakernel_build, megakernel_weights, mk_max_context, plan_gpus, round_up,
                   window_start)
from .timing import card_meta, free, measure_bandwidth, memory_text, sync, time_windows

CHECK_TOL = 3e-2
MK_PROMPT = 4  # prompt steps of the MegaKernel's logits check
# The torch.compile systems: (attention of the gpt-fast-style decoder, weights format).
COMPILED = {"compile-flex": ("flex", "bf16"), "compile-sdpa": ("sdpa", "bf16"),
            "compile-int8": ("flex", "int8"), "compile-fp8": ("flex", "fp8"), "compile-int4": ("flex", "int4")}


class Runner:
    def __init__(self, spec: Spec, log: Callable[[str], None], on_row: Callable[[Row], None]):
        self.spec, self.log, self.on_row = spec, log, on_row
        self.read_gbs = 0.0

    # -------------------------------------------------------------------- helpers
    def row(self, cfg: Path, model, context: int, system: str, plan=None, **kw) -> Row:
        """A row of `system`; with `plan` (the MegaKernel's), its bytes are what the plan streams."""
        fmt = system_weights(system) if plan is None else plan.weights
        b = step_bytes(model, self.spec.batch, context, fmt) if plan is None else plan_step_bytes(plan, context)
        return Row(config_name(cfg), self.spec.batch, context, system, bytes_per_step=b.total,
                   weight_bytes=b.weights, kv_bytes=b.kv, read_gbs=self.read_gbs,
                   layers=model.num_hidden_layers, weights=fmt, **kw)

    def hf_reference(self, hf, tokens, context: int, seed: int):
        """(logits [B, V] float32, the cache): one HF step at the window's start of `context`, over an
        HF StaticCache holding the run's random K/V below it (the same K/V the decoder gets)."""
        import torch

        from . import baselines as bl

        start = window_start(context, self.spec.steps)
        cache = bl.hf_static_cache(hf, self.spec.batch, round_up(start + self.spec.steps, 8))
        bl.fill_random_kv(bl.cache_kv(cache), start, seed + 100 + context)
        bl.set_cache_position(cache, start)
        ref = bl.hf_step(hf, cache, tokens).float()
        if not torch.isfinite(ref).all():
            raise RuntimeError(f"HF logits are not finite at context {context}")
        return ref, cache

    def cache_groups(self) -> list[tuple[int, list[int]]]:
        """(cache length, the contexts timed with it) of the compiled decoders: one cache for all
        contexts, or one per context with per_context_compile."""
        from . import baselines as bl

        s = self.spec
        needs = {c: window_start(c, s.steps) + s.steps for c in s.contexts}
        if s.per_context_compile:
            return [(round_up(needs[c], bl.FLEX_BLOCK), [c]) for c in s.contexts]
        return [(round_up(max(needs.values()), bl.FLEX_BLOCK), list(s.contexts))]

    def emit(self, row: Row) -> None:
        if row.ms:
            self.log(f"    {row.system} @ {row.context}: {row.ms:.3f} ms/step, {row.gbs:,.0f} GB/s "
                     f"({100 * row.frac:.1f}% of read bw)")
        else:
            self.log(f"    {row.system} @ {row.context}: not timed: {row.error}")
        self.on_row(row)

    # -------------------------------------------------------------------- one config
    def run_config(self, cfg: Path, seed: int) -> None:
        import torch

        from . import baselines as bl

        s = self.spec
        model, _ = load_config(cfg, batch=s.batch)
        name = config_name(cfg)
        self.log(f"== {name}: batch {s.batch}, contexts {s.contexts}; building the HF model (random weights)")
        t0 = time.time()
        dtype = torch.bfloat16 if s.device == "cuda" else torch.float32  # CPU bf16 matmuls crawl
        hf = bl.random_hf_model(model, device=s.device, dtype=dtype, seed=seed, attn_implementation="sdpa")
        weights = bl.hf_weights(hf)
        self.log(f"   HF model ready in {time.time() - t0:.1f} s; {memory_text()}")
        gen = torch.Generator(device=s.device).manual_seed(seed + 1)
        tokens = torch.randint(0, model.vocab_size, (s.batch, 1), device=s.device, generator=gen)
        refs: dict[int, torch.Tensor] = {}

        # 1. HF eager: the reference logits at each context, and its timing.
        for c in s.contexts:
            start = window_start(c, s.steps)
            need = start + s.steps
            refs[c], cache = self.hf_reference(hf, tokens, c, seed)
            if "eager" in s.systems:
                row = self.row(cfg, model, c, "eager", cache_len=round_up(need, 8))
                try:
                    for i in range(s.warmup):
                        bl.hf_step(hf, cache, tokens).argmax(-1)
                    row.ms_windows = time_windows(lambda i: bl.hf_step(hf, cache, tokens).argmax(-1), s.steps,
                                                  s.windows, before=lambda: bl.set_cache_position(cache, start))
                    row.ms = statistics.median(row.ms_windows)
                except Exception as e:  # noqa: BLE001 - one system failing must not end the run
                    row.error = f"{type(e).__name__}: {e}"
                self.emit(row)
            del cache
            free()

        # 2. torch.compile(mode="reduce-overhead", fullgraph=True) of the gpt-fast-style decoder.
        impls = [x for x in ("compile-flex", "compile-sdpa") if x in s.systems]
        if impls:
            dec = bl.GptFastDecoder(model, weights, s.batch, self.cache_groups()[0][0], "flex")
            self.run_compiled(cfg, model, dec, tokens, refs, seed, impls)
            del dec
            free()

        # 3. The MegaKernel, with the same weights (8-bit systems: quantized from them on load).
        for system in [x for x in MEGAKERNEL_SYSTEMS if x in s.systems]:
            self.run_megakernel(cfg, model, hf, weights, seed, system)

        # 4. The 8-bit baselines (they overwrite HF's linear weights: last).
        quantized = [x for x in QUANTIZED_BASELINES if x in s.systems]
        if quantized:
            self.run_quantized(cfg, model, hf, weights, tokens, seed, quantized)
        del hf, weights
        free()

    def run_quantized(self, cfg, model, hf, weights, tokens, seed, systems) -> None:
        """compile-int8 / compile-fp8 / compile-int4: every decoder is quantized from the original weights first;
        then, per system, HF gets that decoder's dequantized weights, gives the reference logits at
        each context, and the decoder is compiled, checked and timed as compile-flex is."""
        from . import baselines as bl
        from .quantized import load_dequantized

        s = self.spec
        decs = {}
        for system in systems:
            t0 = time.time()
            try:
                decs[system] = bl.GptFastDecoder(model, weights, s.batch, self.cache_groups()[0][0], "flex",
                                                 weights_format=system_weights(system))
                self.log(f"   {system}: weights quantized in {time.time() - t0:.1f} s; {memory_text()}")
            except Exception as e:  # noqa: BLE001 - e.g. out of memory: this system's rows say so
                for c in s.contexts:
                    self.emit(self.row(cfg, model, c, system, error=f"quantizing: {type(e).__name__}: {str(e)[:300]}"))
            free()
        for system in [x for x in systems if x in decs]:
            dec = decs.pop(system)
            try:
                load_dequantized(hf, dec)
                refs = {c: self.hf_reference(hf, tokens, c, seed)[0] for c in s.contexts}
            except Exception as e:  # noqa: BLE001 - no reference: report the system's rows, go on
                for c in s.contexts:
                    err = f"HF reference: {type(e).__name__}: {str(e)[:300]}"
                    self.emit(self.row(cfg, model, c, system, error=err))
                continue
            finally:
                free()
            self.run_compiled(cfg, model, dec, tokens, refs, seed, [system])
            del dec
            free()

    def run_compiled(self, cfg, model, dec, tokens, refs, seed, impls) -> None:
        """Compile decode_one_token over the decoder `dec` for each system of `impls` (COMPILED gives
        its attention), check one step against `refs` (HF's logits per context), time it."""
        import torch
        import torch._dynamo
        import torch._inductor.config as inductor_config
        from torch._dynamo.utils import counters

        from . import baselines as bl

        s = self.spec
        # gpt-fast's settings.
        inductor_config.coordinate_descent_tuning = s.coordinate_descent
        inductor_config.triton.unique_kernel_names = True
        if hasattr(inductor_config, "fx_graph_cache"):
            inductor_config.fx_graph_cache = True
        groups = self.cache_groups()
        self.log(f"   gpt-fast-style decoder ({dec.weights_format} weights): caches of "
                 f"{[g[0] for g in groups]} positions; {memory_text()}")
        for max_seq, contexts in groups:
            for system in impls:
                dec.setup_cache(max_seq, COMPILED[system][0])
                torch._dynamo.reset()
                if s.compile_backend:
                    step = torch.compile(bl.decode_one_token, backend=s.compile_backend, fullgraph=True)
                else:
                    step = torch.compile(bl.decode_one_token, mode="reduce-overhead", fullgraph=True)
                compile_s, skipped, graphs = None, False, 0
                for c in contexts:
                    start = window_start(c, s.steps)
                    row = self.row(cfg, model, c, system, cache_len=max_seq)
                    try:
                        caches = [(b.k_cache, b.v_cache) for b in dec.layers]
                        for k, v in caches:
                            k.zero_()
                            v.zero_()
                        bl.fill_random_kv(caches, start, seed + 100 + c)
                        pos = [torch.tensor([start + i], device=s.device) for i in range(s.steps)]
                        if compile_s is None:
                            self.log(f"    compiling {system} (max_seq {max_seq}) ...")
                            t0, skips0 = time.time(), counters["inductor"]["cudagraph_skips"]
                            for _ in range(3):  # compile, then record the CUDA graph
                                torch.compiler.cudagraph_mark_step_begin()
                                step(dec, tokens, pos[0])
                            sync()
                            compile_s = time.time() - t0
                            graphs = counters["stats"]["unique_graphs"]
                            skipped = counters["inductor"]["cudagraph_skips"] > skips0 and not s.compile_backend
                            self.log(f"    compiled in {compile_s:.0f} s" +
                                     ("; CUDA GRAPHS SKIPPED (see the log above)" if skipped else ""))
                        row.compile_s = compile_s
                        if skipped:
                            row.note = "CUDA graphs skipped by inductor"
                        torch.compiler.cudagraph_mark_step_begin()
                        _, logits = step(dec, tokens, pos[0])
                        row.check_rel_err = bl.rel_err(logits, refs[c])
                        if s.check and not row.check_rel_err < CHECK_TOL:
                            raise AssertionError(f"logits differ from HF eager: rel err {row.check_rel_err:.3g}")

                        def one(i):
                            torch.compiler.cudagraph_mark_step_begin()
                            step(dec, tokens, pos[i])

                        for i in range(s.warmup):
                            one(i)
                        row.ms_windows = time_windows(one, s.steps, s.windows)
                        row.ms = statistics.median(row.ms_windows)
                        if counters["stats"]["unique_graphs"] != graphs:
                            row.note = (row.note + "; " if row.note else "") + "recompiled while timing"
                    except Exception as e:  # noqa: BLE001
                        row.error = f"{type(e).__name__}: {str(e)[:300]}"
                    self.emit(row)
                del step
                torch._dynamo.reset()
                free()

    def run_megakernel(self, cfg, model, hf, weights, seed, system: str = "megakernel") -> None:
        """One MegaKernel system's rows: a plan per KV-cache size, the weights packed from HF's (8-bit
        formats quantized on load), MK_PROMPT steps checked against HF on the weights the kernel
        multiplies (8-bit: dequantized from its packed buffer, through torch.func.functional_call, so
        HF's own weights stay as they are), then timed at each context."""
        import numpy as np
        import torch

        from ..runtime.engine import MegaKernelEngine
        from ..runtime.weights import pack_weights_torch
        from ..search.layout import make_layout
        from . import baselines as bl

        s = self.spec
        if s.device != "cuda":
            for c in s.contexts:
                self.emit(self.row(cfg, model, c, system, error="the MegaKernel needs a CUDA device"))
            return
        sizes: dict[int, list[int]] = {}
        for c in s.contexts:
            try:
                sizes.setdefault(mk_max_context(c, s.steps, model.max_position_embeddings), []).append(c)
            except ValueError as e:
                self.emit(self.row(cfg, model, c, system, error=str(e)))
        gen = torch.Generator(device="cuda").manual_seed(seed + 2)
        prompt = torch.randint(0, model.vocab_size, (s.batch, MK_PROMPT), device="cuda", generator=gen)
        fmt, group = megakernel_weights(s, system)
        ref = None  # HF's logits [B, T, V] on the weights the kernel multiplies
        for size, contexts in sorted(sizes.items()):
            eng = None
            err, plan, note = "", None, ""
            for gpu in plan_gpus(s.gpu_plan, torch.cuda.get_device_name()):
                try:
                    plan, art = megakernel_build(cfg, gpu, s.batch, size, s.planner, s.arch, weights=fmt,
                                                 weights_group=group)
                    note = f"plan {gpu}, max_context {size}"
                    break
                except Exception as e:  # noqa: BLE001 - e.g. not prebuilt and no nvcc here
                    err += f"{gpu} plan: {type(e).__name__}: {str(e)[:200]}; "
            rows = [self.row(cfg, model, c, system, plan=plan, cache_len=size, note=note) for c in contexts]
            try:
                if plan is None:
                    raise RuntimeError(err or "no plan")
                self.log(f"   MegaKernel {plan.kernel_name}: {note}")
                eng = MegaKernelEngine(plan, art.fatbin)
                layout = make_layout(plan)
                packed = pack_weights_torch(layout, weights)
                torch.cuda.synchronize()
                eng.load_packed_device(packed.data_ptr(), packed.numel() * 2)
                if ref is None:
                    ref = megakernel_reference(hf, layout, packed, prompt)
                del packed
                free()
                self.log(f"   {memory_text()}")
                worst = 0.0
                for t in range(MK_PROMPT):
                    _, logits = eng.step(prompt[:, t].cpu().numpy(), np.full(s.batch, t, np.int32), want_logits=True)
                    worst = max(worst, bl.rel_err(torch.from_numpy(logits), ref[:, t].cpu()))
                for r in rows:
                    r.check_rel_err = worst
                if s.check and not worst < CHECK_TOL:
                    raise AssertionError(f"logits differ from HF eager: rel err {worst:.3g}")
                self._fill_megakernel_kv(eng, size, seed)
                for r in rows:
                    try:
                        start = window_start(r.context, s.steps)
                        warm = min(s.warmup, start)
                        r.ms_windows = [eng.time_steps(start - warm, s.steps, warmup=warm) for _ in range(s.windows)]
                        r.ms = statistics.median(r.ms_windows)
                    except Exception as e:  # noqa: BLE001
                        r.error = f"{type(e).__name__}: {str(e)[:300]}"
            except Exception as e:  # noqa: BLE001
                for r in rows:
                    r.error = r.error or f"{type(e).__name__}: {str(e)[:300]}"
            finally:
                if eng is not None:
                    eng.close()
                free()
            for r in rows:
                self.emit(r)

    def _fill_megakernel_kv(self, eng, size: int, seed: int) -> None:
        """Random K/V in the whole cache (positions past the one written are never read), or, with
        mk_fill="decode", by decoding chained steps from position 0."""
        import torch
        from cuda.bindings import driver

        if self.spec.mk_fill == "decode":
            eng.time_steps(0, size - 1, warmup=0)
            return
        nbytes = eng.layout.kv_elems_per_layer * eng.plan.model.num_hidden_layers * 2
        gen = torch.Generator(device="cuda").manual_seed(seed + 3)
        chunk = 1 << 29  # elements (1 GiB of bf16)
        for name in ("k_cache", "v_cache"):
            done = 0
            while done < nbytes:
                n = min(chunk, (nbytes - done) // 2)
                x = torch.randn(n, generator=gen, device="cuda", dtype=torch.float32).to(torch.bfloat16)
                torch.cuda.synchronize()
                err, = driver.cuMemcpyDtoD(eng.buffers[name] + done, x.data_ptr(), n * 2)
                if err != driver.CUresult.CUDA_SUCCESS:
                    raise RuntimeError(f"cuMemcpyDtoD: {err}")
                done += n * 2
                del x
        torch.cuda.synchronize()


def megakernel_reference(hf, layout, packed, prompt):
    """HF's logits [B, T, V] (float32, no cache) for `prompt` on the weights a MegaKernel multiplies:
    HF's own where the plan streams bf16, else its 8-bit segments dequantized from the packed
    buffer and passed to HF for this call only (torch.func.functional_call)."""
    import torch

    from .quantized import packed_hf_weights

    with torch.no_grad():
        deq = packed_hf_weights(hf, layout, packed)
        if not deq:
            return hf(input_ids=prompt).logits.float()
        out = torch.func.functional_call(hf, deq, (prompt,), tie_weights=False).logits.float()
        del deq
        return out


def run(spec: Spec, log: Callable[[str], None], on_row: Callable[[Row], None], meta: dict) -> None:
    """Measure everything; rows go to on_row as they are made (so a cut-off run keeps them)."""
    import numpy as np
    import torch

    if spec.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("no CUDA device: run adamk-bench on the GPU machine (see benchmarks/README.md)")
    if spec.device == "cuda":
        torch.cuda.init()
    seed = spec.seed if spec.seed is not None else int(np.random.SeedSequence().entropy % 2**31)
    meta.update(card_meta(spec.device), seed=seed)
    log(f"card: {meta['card']} ({meta['card_memory_gib']:.1f} GiB), torch {meta['torch']}, seed {seed}")
    log(f"plans to try for the MegaKernel: {plan_gpus(spec.gpu_plan, meta['card'])} "
        f"({spec.planner} planner, {spec.arch})")
    meta["plan_note"] = (f"{spec.planner} planner, tried {plan_gpus(spec.gpu_plan, meta['card'])} in order "
                         f"(first built/cached wins; see each row), {spec.arch}")
    bw = measure_bandwidth(spec.bw_gb, device=spec.device)
    meta["bandwidth"] = bw
    log(f"read bandwidth {bw['read_gbs']:,.0f} GB/s ({bw['read_method']}); copy {bw['copy_gbs']:,.0f} GB/s")
    runner = Runner(spec, log, on_row)
    runner.read_gbs = bw["read_gbs"]
    with torch.no_grad():
        for i, cfg in enumerate(spec.configs):
            try:
                runner.run_config(cfg, seed + 1000 * i)
            except Exception:  # noqa: BLE001 - e.g. out of memory: report it, go on with the next config
                import traceback

                log(f"{cfg}: failed, going on with the next config:\n{traceback.format_exc()}")
                meta.setdefault("failed", []).append(f"{cfg}: {traceback.format_exc(limit=1).strip()[-300:]}")
                free()
