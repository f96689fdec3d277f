"""Measured task times of one decode step, from an instrumented kernel build (nvcc -DADAMK_PROFILE).

The kernel records, per SM and per task in that SM's schedule order (`plan.sm_tasks(sm)`), four
%globaltimer stamps in ns: [wait start, inputs ready, input staged, end]
(`MegaKernelEngine(plan, fatbin, profile=True).read_profile()`: uint64 [sms][max_tasks][4], unused
rows 0). The one on-disk exchange format is `profile.npz`:

    times        that raw uint64 array
    kernel_name  the plan's kernel name (a profile only describes the kernel it was taken from)
    meta         JSON: how the plan was made and where the step ran (profile_meta), for
                 `adamk-tune --calibrate`; {} in older files

    save_profile(path, plan, times)           write it
    load_profile(path, plan) -> Measured      read it back, refusing another kernel's profile
    from_summary_rows(plan, rows) -> times    benchmarks/profile_step.py's older summarised .npy
                                              (rows of kind, layer, sm, wait, ready, end, bytes,
                                              staged in ns from the step start) as a raw array
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

import numpy as np

from .plan import Plan, Task

BASE_NS = 1_000_000  # where from_summary_rows puts the step start (0 marks an unused row)


class ProfileError(ValueError):
    """A profile that cannot describe this plan (other kernel, wrong shape, missing stamps)."""


@dataclass
class Measured:
    """Measured times of one step in us from the step start (the earliest wait stamp), keyed by
    the simulator's Task: times[task] = (wait, ready, staged, end)."""

    kernel_name: str
    times: dict = field(default_factory=dict)  # Task -> (wait, ready, staged, end) in us
    sm: dict = field(default_factory=dict)  # Task -> SM
    meta: dict = field(default_factory=dict)  # how the plan was made and where it ran (save_profile)

    def __getitem__(self, task: Task) -> tuple:
        return self.times[task]

    def __iter__(self):
        return iter(self.times)

    def __len__(self) -> int:
        return len(self.times)

    @property
    def makespan_us(self) -> float:
        """Step start to the last task's end."""
        return max(v[3] for v in self.times.values())

    def per_kind_busy_us(self) -> dict[str, float]:
        """Busy SM-time per kind (inputs ready to end), summed, like SimResult.per_kind_time."""
        out: dict[str, float] = {}
        for t, (_, r, _, e) in self.times.items():
            out[t.kind] = out.get(t.kind, 0.0) + (e - r)
        return out

    def per_kind_wait_us(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for t, (w, r, _, _) in self.times.items():
            out[t.kind] = out.get(t.kind, 0.0) + (r - w)
        return out


def _max_tasks(plan: Plan) -> int:
    return max(len(plan.sm_tasks(sm)) for sm in range(plan.sms))


def _check_times(plan: Plan, times: np.ndarray, what: str) -> np.ndarray:
    times = np.asarray(times)
    if times.ndim != 3 or times.shape[0] != plan.sms or times.shape[2] != 4 or times.shape[1] < _max_tasks(plan):
        raise ProfileError(f"{what}: times of shape {tuple(times.shape)}, expected"
                           f" [{plan.sms}][>={_max_tasks(plan)}][4] for {plan.kernel_name}")
    return times.astype(np.uint64, copy=False)


def measured_from_times(plan: Plan, times: np.ndarray, kernel_name: str | None = None,
                        what: str = "profile") -> Measured:
    """The raw [sms][max_tasks][4] ns array as a Measured (us from the earliest wait stamp)."""
    times = _check_times(plan, times, what)
    used = [(sm, i, t) for sm in range(plan.sms) for i, t in enumerate(plan.sm_tasks(sm))]
    stamps = np.array([times[sm, i] for sm, i, _ in used], dtype=np.uint64).reshape(-1, 4)
    if len(stamps) and (stamps == 0).any():
        sm, i, t = used[int(np.argwhere((stamps == 0).any(axis=1))[0, 0])]
        raise ProfileError(f"{what}: no time recorded for {t.kind} layer {t.layer} #{t.index} (SM {sm}, task {i}):"
                           f" not a profile build, or no step ran")
    t0 = int(stamps[:, 0].min()) if len(stamps) else 0
    rel = (stamps.astype(np.int64) - t0) / 1e3
    out = Measured(kernel_name or plan.kernel_name)
    for (sm, _, t), row in zip(used, rel):
        out.times[t] = tuple(float(x) for x in row)
        out.sm[t] = sm
    return out


def save_profile(path: str | os.PathLike, plan: Plan, times: np.ndarray, meta: dict | None = None) -> None:
    """Write profile.npz: the raw uint64 times, the plan's kernel name and `meta` (JSON: the plan's
    recipe and the card, which `adamk-tune --calibrate` reads; see profile_meta)."""
    times = _check_times(plan, times, str(path))
    with open(path, "wb") as f:  # np.savez would append .npz to a name without it
        np.savez(f, times=times, kernel_name=np.array(plan.kernel_name), meta=np.array(json.dumps(meta or {})))


def profile_meta(plan: Plan, config: str, context: int, constants, card: str = "", date: str = "",
                 commit: str = "") -> dict:
    """What rebuilds a profiled plan and places its step: the config file, the deployment, the
    cost constants the search used (a plan depends on them), the context, and the card."""
    d = plan.deploy
    return {"config": str(config), "gpu": d.gpu.name, "batch": d.batch, "max_context": d.max_context,
            "weights": d.weights, "weights_group": d.weights_group, "strategy": plan.strategy,
            "context": int(context), "constants": dataclasses.asdict(constants), "card": card, "date": date,
            "commit": commit}


def load_profile(path: str | os.PathLike, plan: Plan) -> Measured:
    """Read profile.npz (or profile_step's summarised .npy, matched task by task) for plan.

    Raises ProfileError (one line) when it is another kernel's profile or unreadable."""
    path = str(path)
    try:
        data = np.load(path, allow_pickle=path.endswith(".npy"))
    except (OSError, ValueError) as e:
        raise ProfileError(f"{path}: cannot read the profile: {' '.join(str(e).split())}") from None
    if isinstance(data, np.ndarray):  # profile_step's summary rows: no kernel name, checked per task
        return measured_from_times(plan, from_summary_rows(plan, data, what=path), what=path)
    with data:
        if "times" not in data or "kernel_name" not in data:
            raise ProfileError(f"{path}: not a profile.npz (needs 'times' and 'kernel_name')")
        name = str(data["kernel_name"])
        if name != plan.kernel_name:
            raise ProfileError(f"{path}: profile of kernel {name}, but the plan is {plan.kernel_name}")
        out = measured_from_times(plan, data["times"], name, what=path)
        if "meta" in data:
            out.meta = json.loads(str(data["meta"]))
        return out


def read_profile_meta(path: str | os.PathLike) -> tuple[str, dict]:
    """(kernel name, meta) of a profile.npz, without its plan (ProfileError if unreadable)."""
    path = str(path)
    try:
        with np.load(path) as data:
            if "kernel_name" not in data:
                raise ProfileError(f"{path}: not a profile.npz (needs 'times' and 'kernel_name')")
            return str(data["kernel_name"]), json.loads(str(data["meta"])) if "meta" in data else {}
    except (OSError, ValueError) as e:
        raise ProfileError(f"{path}: cannot read the profile: {' '.join(str(e).split())}") from None


def from_summary_rows(plan: Plan, rows, what: str = "summary") -> np.ndarray:
    """benchmarks/profile_step.py's summarised rows (kind, layer, sm, wait, ready, end, bytes,
    staged; ns from the step start; in SM order, each SM in its schedule order) as the raw
    [sms][max_tasks][4] uint64 array, the step start at BASE_NS. The summary has no kernel name:
    every row must name the task the plan has at that place."""
    rows = list(rows)
    expect = [(sm, t) for sm in range(plan.sms) for t in plan.sm_tasks(sm)]
    if len(rows) != len(expect):
        raise ProfileError(f"{what}: {len(rows)} task rows, but {plan.kernel_name} has {len(expect)} tasks")
    times = np.zeros((plan.sms, _max_tasks(plan), 4), np.uint64)
    slot = [0] * plan.sms
    for n, (row, (sm, t)) in enumerate(zip(rows, expect)):
        kind, layer, rsm = str(row[0]), int(row[1]), int(row[2])
        if (kind, layer, rsm) != (t.kind, t.layer, sm):
            raise ProfileError(f"{what}: row {n} is {kind} layer {layer} on SM {rsm}, but {plan.kernel_name}"
                               f" runs {t.kind} layer {t.layer} there on SM {sm}: a profile of another plan")
        w, r, e, st = (int(row[i]) for i in (3, 4, 5, 7))
        times[sm, slot[sm]] = [BASE_NS + w, BASE_NS + r, BASE_NS + st, BASE_NS + e]
        slot[sm] += 1
    return times


__all__ = ["Measured", "ProfileError", "save_profile", "load_profile", "from_summary_rows", "measured_from_times",
           "profile_meta", "read_profile_meta"]
