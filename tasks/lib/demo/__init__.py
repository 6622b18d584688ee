"""The offline demo dataset: synthetic clips in the official Kinetics CSV format (docs/demo.md). No task wraps
it; it is a data source, run once by ``vivit demo-data`` (its one entry point) or by tests and benchmarks that need
real video files."""
from tasks.lib.demo.generate import generate_demo_dataset
from tasks.lib.demo.spec import CLASSES, DRIBBLING, DUNKING, EXTRA_CLASSES

__all__ = ["CLASSES", "DRIBBLING", "DUNKING", "EXTRA_CLASSES", "generate_demo_dataset"]
