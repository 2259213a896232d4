"""Test-wide settings.

The suite's problems are tiny: one intra-op thread is faster for them than two, and it
keeps timings stable when CI's two cores are shared.
"""

import torch

torch.set_num_threads(1)
