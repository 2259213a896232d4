import math

import pytest
import torch

from secondorder.optim.host_scalars import ieee_divide

F64 = torch.float64


@pytest.mark.parametrize("num", [3.0, -3.0, 0.0, -0.0, math.inf, -math.inf, math.nan, 1e-300])
@pytest.mark.parametrize("den", [7.0, -7.0, 0.0, -0.0, math.inf, math.nan, 1e-310])
def test_ieee_divide_divides_as_a_float64_tensor_does(num, den):
    # try_step's rho and Steihaug's host scalars are Python arithmetic: the same IEEE
    # result as torch's, division by zero included (Python itself would raise)
    expected = float(torch.tensor(num, dtype=F64) / torch.tensor(den, dtype=F64))
    got = ieee_divide(num, den)
    assert (math.isnan(got) and math.isnan(expected)) or got == expected
    assert math.isnan(got) or math.copysign(1.0, got) == math.copysign(1.0, expected)
