"""The server's metrics in the Prometheus text format (version 0.0.4): counters, gauges and
histograms, thread-safe, rendered by `Metrics.render()` for GET /metrics."""
from __future__ import annotations

import bisect
import threading
import time
from collections import deque

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Histogram:
    def __init__(self, name: str, help_: str, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.name, self.help, self.buckets = name, help_, buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum, self.count = 0.0, 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        acc = 0
        for b, c in zip(self.buckets, self.counts):
            acc += c
            out.append(f'{self.name}_bucket{{le="{b:g}"}} {acc}')
        total = acc + self.counts[-1]  # from the same counts as the buckets: consistent while observe() runs
        out += [f'{self.name}_bucket{{le="+Inf"}} {total}', f"{self.name}_sum {self.sum:.6f}",
                f"{self.name}_count {total}"]
        return out


class Metrics:
    """What /metrics reports. The scheduler thread records; HTTP threads read and count."""

    def __init__(self, window_s: float = 10.0) -> None:
        self.lock = threading.Lock()
        self.ttft = Histogram("adamk_time_to_first_token_seconds", "Request arrival to its first token.")
        self.itl = Histogram("adamk_inter_token_latency_seconds", "Time between consecutive tokens of a stream.")
        self.step = Histogram("adamk_step_seconds", "One decode step of all slots.")
        self.prefill = Histogram("adamk_prefill_seconds", "One prefill chunk into its slot.")
        self.requests: dict[str, int] = {}  # finish reason -> count
        self.rejected: dict[str, int] = {}  # HTTP status -> count
        self.prompt_tokens = self.generated_tokens = 0
        self.queue_depth = self.active_slots = 0
        self.slots = 0
        self.window_s = window_s
        self._recent: deque[tuple[float, int]] = deque()  # (time, tokens) of recent steps

    def finished(self, reason: str) -> None:
        with self.lock:
            self.requests[reason] = self.requests.get(reason, 0) + 1

    def rejected_with(self, status: int) -> None:
        with self.lock:
            self.rejected[str(status)] = self.rejected.get(str(status), 0) + 1

    def tokens(self, n: int) -> None:
        now = time.monotonic()
        with self.lock:
            self.generated_tokens += n
            self._recent.append((now, n))
            while self._recent and self._recent[0][0] < now - self.window_s:
                self._recent.popleft()

    def tokens_per_second(self) -> float:
        now = time.monotonic()
        with self.lock:
            n = sum(k for t, k in self._recent if t >= now - self.window_s)
        return n / self.window_s

    def render(self) -> str:
        tps = self.tokens_per_second()
        with self.lock:
            out = []
            for h in (self.ttft, self.itl, self.step, self.prefill):
                out += h.lines()
            out += ["# HELP adamk_requests_total Requests finished, by finish reason.",
                    "# TYPE adamk_requests_total counter"]
            out += [f'adamk_requests_total{{reason="{r}"}} {n}' for r, n in sorted(self.requests.items())]
            out += ["# HELP adamk_rejected_total Requests refused, by HTTP status.", "# TYPE adamk_rejected_total counter"]
            out += [f'adamk_rejected_total{{status="{s}"}} {n}' for s, n in sorted(self.rejected.items())]
            for name, kind, help_, value in (
                    ("adamk_prompt_tokens_total", "counter", "Prompt tokens prefilled.", self.prompt_tokens),
                    ("adamk_generated_tokens_total", "counter", "Tokens generated.", self.generated_tokens),
                    ("adamk_queue_depth", "gauge", "Requests waiting for a slot.", self.queue_depth),
                    ("adamk_active_slots", "gauge", "Slots holding a sequence.", self.active_slots),
                    ("adamk_slots", "gauge", "Slots of the kernel (its batch).", self.slots),
                    ("adamk_tokens_per_second", "gauge", f"Tokens generated per second over the last {self.window_s:g} s.",
                     round(tps, 3))):
                out += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}", f"{name} {value}"]
        return "\n".join(out) + "\n"


__all__ = ["Histogram", "Metrics"]
