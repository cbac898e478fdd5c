"""The course's plumbing: hardware, models, data, memory, evaluation and results, for the notebooks and scripts."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the course folder: data/, models/, notebooks/, requirements.txt
