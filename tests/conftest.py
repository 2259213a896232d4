"""Test-wide settings.

The suite's problems are tiny: one intra-op thread is faster for them than two, and it
keeps timings stable when CI's two cores are shared.
"""

import torch

torch.set_num_threads(1)

# Several folders hold a conftest.py; --doctest-modules must not import them as test modules
# (they would collide as the module name "conftest").
collect_ignore_glob = ["conftest.py", "*/conftest.py"]
