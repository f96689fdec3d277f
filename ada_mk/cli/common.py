"""What every ada_mk command shares: progress lines on stderr, user errors as one line with exit
status 2, and click's usage errors reported the same way.

A user error (a bad flag or file, a plan that does not fit, nvcc missing) is one line on stderr,
`<tool>: error: <what>`, exit status 2 (the status click gives usage errors); a traceback means a
bug in ada_mk. stdout is kept for data (tables, --dump-ir, generated text).
"""
from __future__ import annotations

from typing import Any, Callable, NoReturn

import click

EXIT_USAGE = 2
HELP = {"help_option_names": ["-h", "--help"]}


def say(prog: str, msg: str) -> None:
    """A progress line on stderr, `prog: msg`."""
    click.echo(f"{prog}: {msg}", err=True)


def one_line(text: str) -> str:
    """`text` with every run of whitespace (newlines included) made one space."""
    return " ".join(str(text).split())


def fail_as(prog: str, msg: str) -> NoReturn:
    """A user error: one line on stderr, exit status 2, no traceback."""
    click.echo(f"{prog}: error: {one_line(msg)}", err=True)
    raise SystemExit(EXIT_USAGE)


class OneLineErrors(click.Command):
    """A click command whose usage errors (a missing --config, `--batch x`) are one line like every
    other user error, still with exit status 2. Set `prog` to the tool's name.

    Called as a console script or by click's test runner it exits; `main(args,
    standalone_mode=False)` returns the exit status instead (0, 2, or what the command returns)."""

    prog = "ada_mk"

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        try:
            rv = super().main(args, prog_name or self.prog, complete_var, standalone_mode=False, **extra)
            status = rv if isinstance(rv, int) else 0
        except click.ClickException as e:
            hint = " (see --help)" if isinstance(e, click.UsageError) else ""
            click.echo(f"{self.prog}: error: {one_line(e.format_message())}{hint}", err=True)
            status = EXIT_USAGE
        except click.Abort:
            click.echo(f"{self.prog}: aborted", err=True)
            status = 1
        except SystemExit as e:  # fail_as()
            status = e.code if isinstance(e.code, int) else 1
        if standalone_mode:
            raise SystemExit(status)
        return status


def command(prog: str, **kwargs: Any) -> Callable[[Callable[..., Any]], click.Command]:
    """`@click.command` for the tool `prog`: one-line errors, -h as --help."""
    name = "".join(part.title() for part in prog.replace("-", " ").split()) + "Command"
    cls = type(name, (OneLineErrors,), {"prog": prog})
    return click.command(cls=cls, context_settings=HELP, **kwargs)


def weights_options(what: str = "the kernel") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--weights-format and --weights-group (DeployConfig.weights / weights_group), passed to the
    command as `weights` and `weights_group` (None when not given: the config's deploy section,
    else bf16). Their values are checked by the config loader (ConfigError naming the flag)."""
    from ..config.deploy import DEFAULT_GROUPS, WEIGHT_FORMATS

    defaults = ", ".join(f"{f} {g}" for f, g in DEFAULT_GROUPS.items() if f != "bf16")

    def add(f: Callable[..., Any]) -> Callable[..., Any]:
        f = click.option("--weights-group", "weights_group", type=int, default=None, metavar="N",
                         help="Input columns per scale of quantized weights: 0 (one per row) or a multiple"
                              f" of 32; int4: 32, 64 or 128. [default: per format: {defaults}]")(f)
        return click.option("--weights-format", "weights", default=None, metavar="FORMAT",
                            help=f"How {what} streams the linear weights: {', '.join(WEIGHT_FORMATS)}"
                                 " (docs/quantized-weights.md). [default: the config's deploy.weights, else bf16]")(f)
    return add


def check_arch(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    """click callback of --arch: every value one that nvcc is given flags for."""
    if not value:
        return value
    from ..codegen.build import ARCH_FLAGS  # imported late: --help works without the code generator

    for a in value:
        if a not in ARCH_FLAGS:
            raise click.BadParameter(f"{a!r}: expected one of {', '.join(ARCH_FLAGS)}", ctx, param)
    return value
