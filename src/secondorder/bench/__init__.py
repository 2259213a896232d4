"""The benchmark: problems, data loaders, runner, results store and reports.

Importing the package imports :mod:`secondorder.bench.plugins`, which adds the finder of
declared and entry-point problems to the problem registry
(:func:`secondorder.bench.problems.core.add_problem_finder`): a worker process that only
calls ``get_problem`` still finds the problems its parent declared.
"""

from secondorder.bench import plugins  # noqa: F401 -- the plug-in problem finder
