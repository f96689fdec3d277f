"""Where the time of one decode step goes: an instrumented build records, per task, when it began
waiting, when its inputs were ready and when it ended (%globaltimer). Prints a summary per stage and
per layer, and saves the summary rows (profile-<config>-<strategy>.npy) and the raw times as
profile-<config>-bs<batch>-ctx<context>-<strategy>.npz with the plan's recipe (ada_mk.search.profile;
`adamk-gen ... --explain --profile` and `adamk-tune --calibrate` read it).

    python3 -m benchmarks.profile_step [prebuild]     (prebuild: here, into $ADAMK_CACHE; the same
                                                       ADAMK_CASES in both places)
"""
import os
import sys
import time

import numpy as np

from benchmarks.timing import cases_from_env, gpu_from_env
from tests.gpu.kernels import kernel_for

# ADAMK_CASES profiles other batches, ADAMK_GPU other plans (benchmarks/timing.py; the search's H100 plans);
# ADAMK_HAND="gate_up 64" adds that plan of benchmarks/experiment.py (HAND) for each case it has;
# "splits 8" the searched tilings with 8 attention splits (benchmarks/ablation.py).
CASES = [(config, gpu_from_env(), batch, "search") for config, batch in cases_from_env()]
HAND = [h for h in os.environ.get("ADAMK_HAND", "").split("|") if h]
DEFINES = tuple(d for d in os.environ.get("ADAMK_DEFINES", "").split(",") if d)  # e.g. ADAMK_ABLATE_STAGING
CONTEXT = int(os.environ.get("ADAMK_CONTEXT", "512"))  # profiled context; the KV cache holds 256 more
MAX_CONTEXT = max(1024, CONTEXT + 256)


def kernel(config: str, batch: int, strategy: str, profile: bool):
    """The searched plan (strategy "search"), its tilings with other attention splits ("splits N"),
    or the HAND plan named `strategy`, and its kernel."""
    if strategy.startswith("splits "):
        from benchmarks.ablation import with_splits

        return with_splits(config, gpu_from_env(), batch, int(strategy.split()[1]), profile=profile)
    if strategy == "search":
        return kernel_for(config, gpu_from_env(), batch, profile=profile, strategy=strategy, max_context=MAX_CONTEXT,
                          defines=DEFINES)
    from ada_mk.codegen.build import build
    from ada_mk.codegen.render import render
    from benchmarks.experiment import plan_for

    plan = plan_for(config, strategy, None, batch)
    return plan, build(render(plan), ["sm_90a"], library=False, profile=profile)


def task_bytes(plan, t):
    if t.kind in plan.tilings:
        tl = plan.tilings[t.kind]
        lo, hi = tl.row_range(t.index // tl.ksplit)
        return (hi - lo) * tl.kc * 2
    if t.kind == "attn":
        m = plan.model
        return 2 * m.head_dim * 2 * CONTEXT // plan.attn_splits
    return 0


def summarize(plan, prof, out):
    t0 = prof[..., 0][prof[..., 0] > 0].min()
    rows = []
    for sm in range(plan.sms):
        for i, t in enumerate(plan.sm_tasks(sm)):
            w, r, st, e = (int(x) - int(t0) for x in prof[sm, i])
            rows.append((t.kind, t.layer, sm, w, r, e, task_bytes(plan, t), st))
    span = max(r[5] for r in rows)
    print(f"  step span {span / 1e3:.1f} us", flush=True)
    kinds = sorted({r[0] for r in rows}, key=lambda k: ["qkv", "attn", "o", "gate_up", "down", "lm_head", "argmax"].index(k))
    print(f"  {'stage':8s} {'tasks':>6s} {'busy us':>9s} {'wait us':>9s} {'busy/task':>9s} {'stage/task':>10s} {'GB/s/task':>9s}")
    for k in kinds:
        sel = [r for r in rows if r[0] == k]
        busy = sum(r[5] - r[4] for r in sel)
        wait = sum(r[4] - r[3] for r in sel)
        byt = sum(r[6] for r in sel)
        staging = sum(r[7] - r[4] for r in sel)
        print(f"  {k:8s} {len(sel):6d} {busy / 1e3:9.1f} {wait / 1e3:9.1f} {busy / len(sel) / 1e3:9.2f} "
              f"{staging / len(sel) / 1e3:10.2f} {byt / max(busy, 1):9.1f}")
    # per-layer window: first ready -> last end of each stage, for layer 1 (steady state)
    for k in ("qkv", "attn", "o", "gate_up", "down"):
        sel = [r for r in rows if r[0] == k and r[1] == 1]
        if sel:
            print(f"  layer 1 {k:8s}: ready {min(r[4] for r in sel) / 1e3:8.1f} .. {max(r[4] for r in sel) / 1e3:8.1f}"
                  f"  end {min(r[5] for r in sel) / 1e3:8.1f} .. {max(r[5] for r in sel) / 1e3:8.1f} us")
    busy_sm = np.zeros(plan.sms)
    for r in rows:
        busy_sm[r[2]] += r[5] - r[4]
    print(f"  SM busy fraction: mean {busy_sm.mean() / span:.2f} min {busy_sm.min() / span:.2f} max {busy_sm.max() / span:.2f}")
    np.save(out, np.array(rows, dtype=object), allow_pickle=True)


if __name__ == "__main__":
    from benchmarks.experiment import HAND as HAND_PLANS

    CASES += [(c, g, b, h) for c, g, b, _ in list(CASES) for h in HAND
              if h.startswith("splits ") or c in HAND_PLANS[h]]
    if sys.argv[1:] == ["prebuild"]:
        for c, g, b, s in CASES:
            kernel(c, b, s, True)
            kernel(c, b, s, False)
        sys.exit(0)
    import torch

    from ada_mk.search.cost import constants_for
    from ada_mk.search.profile import profile_meta, save_profile
    from benchmarks.timing import ms_per_token, random_engine
    from tests.gpu.kernels import config_path

    out_dir = os.environ.get("OUT", ".")
    for config, gpu, batch, strategy in CASES:
        for profile in (False, True):
            plan, art = kernel(config, batch, strategy, profile)
            eng = random_engine(plan, art.fatbin, profile=profile)
            ms = ms_per_token(eng, CONTEXT)
            print(f"{config} {gpu} bs{batch} {strategy} {'profile' if profile else 'plain'}: {ms:.3f} ms/token", flush=True)
            if profile:
                eng.step(np.ones(batch, np.int32), np.full(batch, CONTEXT, np.int32))
                prof = eng.read_profile()
                # the plan's recipe and the card, for adamk-tune --calibrate
                meta = profile_meta(plan, os.path.relpath(config_path(config)), CONTEXT, constants_for(plan.deploy.gpu),
                                    card=torch.cuda.get_device_name(), date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                    commit=os.environ.get("ADAMK_COMMIT", ""))
                save_profile(os.path.join(out_dir, f"profile-{config}-bs{batch}-ctx{CONTEXT}-{strategy.replace(' ', '_')}.npz"),
                             plan, prof, meta)
                summarize(plan, prof, os.path.join(out_dir, f"profile-{config}-{strategy.replace(' ', '_')}.npy"))
            eng.close()
            torch.cuda.empty_cache()
