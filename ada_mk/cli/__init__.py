"""The command-line tools, one thin click command per module; the work is done by the modules
they call.

| command       | module                 | does                                                      |
| ------------- | ---------------------- | --------------------------------------------------------- |
| `adamk-gen`   | `ada_mk.cli.gen`       | plan, render and compile one kernel (ada_mk.codegen)      |
| `adamk-run`   | `ada_mk.cli.run`       | generate text from a checkpoint (ada_mk.runtime.textgen)  |
| `adamk-tune`  | `ada_mk.cli.tune`      | time the best predicted plans on the GPU (ada_mk.tuning)  |
| `adamk-bench` | `ada_mk.cli.bench`     | MegaKernel against PyTorch on one card (ada_mk.bench)     |
|  `... readme` | `ada_mk.cli.bench_readme` | README's speed table from the recorded runs            |
| `adamk-pack`  | `ada_mk.cli.pack`      | pack checkpoint weights for a kernel (checkpoints.pack)   |
| `adamk-serve` | `ada_mk.cli.serve`     | OpenAI-compatible server, continuous batching (ada_mk.serve) |

From a checkout without installing, `python -m ada_mk.cli.<module>` is the same command.
Conventions (ada_mk.cli.common): progress on stderr, data on stdout, a user error is one line
`<tool>: error: ...` with exit status 2.
"""
