"""The benchmark: problems, data loaders, runner, results store and reports."""
