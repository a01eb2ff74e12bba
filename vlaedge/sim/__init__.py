"""The built-in tabletop pick-and-place task: environment, renderer, instructions and scripted expert.

Two verbs exist for this task only and live here too: `record.record_dataset` (expert episodes as a
LeRobot v3 or .npz dataset; how the calibration sample was made) and `train.train_policy` (behaviour
cloning + DAgger of a reference VLA; how the default policy was made). They are not re-exported here, so
importing the task does not import torch training code."""

from vlaedge.sim.expert import (
    ScriptedExpert,
    chance_success_rate,
    expert_chunk,
    record_episodes,
    record_on_policy,
)
from vlaedge.sim.instructions import (
    BLOCKS,
    TEMPLATES,
    VOCABULARY,
    ZONES,
    Task,
    instruction_for,
    parse_instruction,
    sample_task,
)
from vlaedge.sim.render import Renderer, SimState, render
from vlaedge.sim.tabletop import TabletopEnv, sample_layout

__all__ = [
    "BLOCKS",
    "TEMPLATES",
    "VOCABULARY",
    "ZONES",
    "Renderer",
    "ScriptedExpert",
    "SimState",
    "TabletopEnv",
    "Task",
    "chance_success_rate",
    "instruction_for",
    "parse_instruction",
    "expert_chunk",
    "record_episodes",
    "record_on_policy",
    "render",
    "sample_layout",
    "sample_task",
]
