"""The plumbing of the notebooks and scripts: hardware, models, data, memory, evaluation and results."""

from pathlib import Path

# the course folder: data/, models/, notebooks/, requirements.txt
ROOT = Path(__file__).resolve().parent.parent
