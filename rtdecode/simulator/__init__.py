"""The toy world: procedural stimuli, simulated subjects and sessions (``rtdecode simulate``)."""

from .presets import PRESETS, SIMULATOR_VERSION, DesignConfig, SimulatorConfig, preset
from .session import SimulationSummary, plan_runs, simulate, subject_label

__all__ = ["PRESETS", "SIMULATOR_VERSION", "DesignConfig", "SimulatorConfig", "SimulationSummary",
           "plan_runs", "preset", "simulate", "subject_label"]
