"""Every optimizer test runs with the step transaction's in-place check on.

:class:`secondorder.optim.step_transaction.StepTransaction` keeps by reference the state tensors an
optimizer does not name in ``state_mutated_in_place``; with ``check_in_place`` each step
verifies that none of them was written into (which the transaction could not undo), so the
whole optimizer suite checks every optimizer's declaration.
"""

import pytest

from secondorder.optim.step_transaction import StepTransaction


@pytest.fixture(autouse=True)
def _check_state_tensors_are_not_mutated_in_place(monkeypatch):
    monkeypatch.setattr(StepTransaction, "check_in_place", True)
