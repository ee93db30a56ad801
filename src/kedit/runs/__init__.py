"""Experiment orchestration: the benchmark runner, the demo and terminal reports (no math here)."""
from kedit.runs.demo import run_demo
from kedit.runs.report import print_summary_table
from kedit.runs.runner import run_bench

__all__ = ["run_bench", "run_demo", "print_summary_table"]
