"""Diagnosis: a 2-layer Llama-3.2-1B-shaped model at a 500-token context, kernel vs HF, with and
without llama3 RoPE scaling, and with different attention split counts."""
import dataclasses, sys
import numpy as np
import torch
from ada_mk.codegen.build import build
from ada_mk.codegen.render import render
from ada_mk.search.simple import make_plan
from tests.gpu.kernels import model_for

import os
LAYERS = int(os.environ.get("DIAG_LAYERS", "16"))
VARIANTS = {"llama3-rope": {}, "no-scaling": {"rope_scaling": None}}
SPLITS = [None]


def plans():
    for vname, over in VARIANTS.items():
        m, d = model_for("llama3.2-1b", "H100", 1, LAYERS)
        m = dataclasses.replace(m, name=f"{m.name}-{vname}", **over)
        for ns in SPLITS:
            p = make_plan(m, d)
            yield vname, ns, m, p


if __name__ == "__main__":
    if sys.argv[1:] == ["build"]:
        for v, ns, m, p in plans():
            build(render(p), ["sm_90a"], library=False)
        sys.exit(0)
    from transformers import AutoModelForCausalLM
    from tests.hf_util import hf_config_from_model
    from ada_mk.runtime.engine import MegaKernelEngine
    from tests.gpu.test_megakernel import hf_generate, rel_err
    for v, ns, m, p in plans():
        torch.manual_seed(0)
        with torch.device("cuda"):
            hf = AutoModelForCausalLM.from_config(hf_config_from_model(m, "sdpa"), dtype=torch.bfloat16)
        with torch.no_grad():
            for name, prm in hf.named_parameters():
                prm.copy_(1 + 0.1 * torch.randn_like(prm) if name.endswith("norm.weight") else 0.02 * torch.randn_like(prm))
        T = int(os.environ.get("DIAG_T", "500"))
        prompt = torch.randint(0, m.vocab_size, (1, T), device="cuda")
        with torch.no_grad():
            seq, hl = hf_generate(hf, prompt, 16)
            ref = hf.float()(input_ids=seq[:, :-1]).logits[0, T - 1:].float().cpu().numpy()
        hf.to(torch.bfloat16)
        eng = MegaKernelEngine(p, build(render(p), ["sm_90a"], library=False).fatbin)
        eng.load_weights(dict(hf.state_dict()))
        toks = seq.cpu().numpy().astype(np.int32)[0]
        runs = []
        for rep in range(2):
            eng.reset()
            ours = []
            for t in range(T + 15):
                r = eng.step(toks[t:t + 1], np.array([t], np.int32), want_logits=t >= T - 1)
                if t >= T - 1:
                    ours.append(r[1][0])
            runs.append(np.stack(ours))
        eng.close()
        print("  deterministic over 2 runs:", np.array_equal(runs[0], runs[1]), "max diff", np.abs(runs[0]-runs[1]).max())
        # error as a function of the step's position
        e_pos = [rel_err(o, h[0].cpu().numpy()) for o, h in zip(ours, hl)]
        print("  per-step err vs HF:", " ".join(f"{e:.3f}" for e in e_pos[:16]))
        e_hf = [rel_err(o, h[0].cpu().numpy()) for o, h in zip(ours, hl)]
        e_f32 = rel_err(np.stack(ours), ref)
        e_hff = rel_err(np.stack([h[0].cpu().numpy() for h in hl]), ref)
        print(f"{v:12s} splits {ns:2d}: vs HF bf16 {np.mean(e_hf):.3e}  ours vs f32 {e_f32:.3e}  HF bf16 vs f32 {e_hff:.3e}")
        del hf; torch.cuda.empty_cache()
