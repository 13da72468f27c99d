"""The named phases of a run, which a caller may watch: ``run(spark, config, on_phase=hook)``
calls ``hook(name)`` as the run reaches each one. The package never acts on a phase; the
command line installs a hook that kills the process at a named phase for the crash tests
(``cli.crash_hook_from_env``), and a notebook could time the phases.

A phase is reached *at* a point between two durable steps, or (``during``) just before a
long step begins, so that a hook can act while that step runs (a timer). The names are
declared here once; ``phase_name`` refuses a template that is not declared.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

PhaseHook = Callable[[str], None]


def no_hook(name: str) -> None:
    """The default hook: phases pass unwatched."""


@dataclass(frozen=True)
class Phase:
    """``template``: the name, with ``{table}`` or ``{stream}`` filled in by the run;
    ``during``: reached just before a long step rather than after one; ``scope``: what
    fills the placeholder: ``table`` (any table the run creates), ``api`` (an API
    stream), ``any`` (any stream), or ``""`` (no placeholder)."""

    template: str
    during: bool
    scope: str
    meaning: str


PHASES: tuple[Phase, ...] = (
    Phase("creating:{table}", True, "table", "the table is about to be created"),
    Phase("extracting:{stream}", False, "api", "a page of the pull was landed"),
    Phase("landed:{stream}", False, "api", "the pull is landed, not merged"),
    Phase("merging:{stream}", True, "api", "the pull's MERGE is about to run"),
    Phase("merged:{stream}", False, "api", "the MERGE committed, the cursor not"),
    Phase("last-merged:{stream}", False, "api", "cursor committed and noted, not marked merged"),
    Phase("after:{stream}", False, "any", "the stream is done (succeeded or failed)"),
    Phase("exports:merging", True, "", "the export files' MERGE is about to run"),
    Phase("exports:merged", False, "", "that MERGE committed, the files not recorded"),
)
_BY_TEMPLATE = {p.template: p for p in PHASES}


def phase_name(template: str, **parts: str) -> str:
    """The name of a declared phase, its placeholder filled: ``("merged:{stream}",
    stream="profiles")`` -> ``merged:profiles``."""
    if template not in _BY_TEMPLATE:
        raise KeyError(f"no phase {template!r} is declared in ometria_spark.phases")
    return template.format(**parts)


def phase_of(name: str) -> Phase | None:
    """The declared phase a name belongs to (``merged:profiles`` -> ``merged:{stream}``)."""
    head, sep, _ = name.partition(":")
    for phase in PHASES:
        p_head, _, p_tail = phase.template.partition(":")
        if p_head == head and sep and (p_tail.startswith("{") or phase.template == name):
            return phase
    return None
