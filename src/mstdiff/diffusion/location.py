"""Which discrete noise the location branch uses (DESIGN §1, "Location noise: a choice of process").

* ``"absorbing"`` (default): :class:`~mstdiff.diffusion.absorbing.AbsorbingProcess`, masked noise
  with carry-over; needs nothing but N and S.
* ``"graph"``: the paper's knowledge-graph process,
  :class:`~mstdiff.diffusion.discrete.GraphTransition` (``transition.pt`` from ``mstdiff kg
  transition``), kept exactly as published for the faithful "MSTDiff (paper)" configuration.

Both implement the interface the hybrid process needs (``q_sample``, ``marginal``, ``posterior``,
``reverse_probs``, ``location_losses``, ``sample_reverse``, ``sample_prior``) and pass one shared
property-test template (``tests/diffusion/test_processes.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from mstdiff.config import Check, one_of
from mstdiff.diffusion.absorbing import ABSORBING_SCHEDULES, AbsorbingProcess
from mstdiff.errors import InputError

LOCATION_PROCESSES = ("absorbing", "graph")


@dataclass
class LocationConfig:
    """The location branch's noise process."""

    CHECKS: ClassVar[dict[str, Check]] = {
        "process": one_of(*LOCATION_PROCESSES), "schedule": one_of(*ABSORBING_SCHEDULES)}

    process: str = "absorbing"  # "absorbing" (masked, carry-over) | "graph" (the paper's KG process)
    schedule: str = "linear"  # absorbing: keep-probability 1 − s/S ("linear", MDLM) or cos(πs/2S)

    def __post_init__(self) -> None:
        if self.process not in LOCATION_PROCESSES:
            raise InputError(f"model.location.process = {self.process!r} is unknown",
                             fix=f"use one of {LOCATION_PROCESSES}")
        if self.schedule not in ABSORBING_SCHEDULES:
            raise InputError(f"model.location.schedule = {self.schedule!r} is unknown",
                             fix=f"use one of {ABSORBING_SCHEDULES}")


def make_location_process(config: LocationConfig, *, num_states: int, num_steps: int,
                          graph: Any = None) -> Any:
    """The process ``config`` asks for; ``graph`` is the loaded GraphTransition (needed for "graph")."""
    if config.process == "absorbing":
        return AbsorbingProcess(num_states, num_steps, schedule=config.schedule)
    if graph is None:
        raise InputError("model.location.process = 'graph' needs the transition process",
                         fix="build it with `mstdiff kg transition` and pass it (--transition)")
    if graph.num_states != num_states or graph.num_steps != num_steps:
        raise InputError(
            f"the transition process has N = {graph.num_states}, S = {graph.num_steps}; the model "
            f"needs N = {num_states}, S = {num_steps}",
            fix="build the transition from the same prepared dataset and model.gaussian.num_steps")
    return graph
