import pytest
import torch

from shared.schedule import WarmupPoly, scaled_lr


def test_linear_scaling_rule():
    assert scaled_lr(1e-3, 16, 16) == pytest.approx(1e-3)
    assert scaled_lr(1e-3, 16, 128) == pytest.approx(8e-3)      # 8 GPUs x 16
    assert scaled_lr(1e-3, 16, 512) == pytest.approx(32e-3)     # 32 GPUs x 16
    assert scaled_lr(6e-5, 16, 8) == pytest.approx(3e-5)
    with pytest.raises(ValueError, match="batch sizes must be positive"):
        scaled_lr(1e-3, 0, 16)


def test_warmup_then_poly_values():
    f = WarmupPoly(warmup=10, total=110, power=1.0, warmup_ratio=0.0)
    assert f(0) == 0.0
    assert f(5) == pytest.approx(0.5)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5)          # halfway through the decay
    assert f(110) == pytest.approx(0.0)
    assert f(500) == pytest.approx(0.0)         # held, never negative
    g = WarmupPoly(warmup=0, total=100, power=0.9, min_ratio=0.1)
    assert g(0) == pytest.approx(1.0)
    assert g(50) == pytest.approx(0.1 + 0.9 * 0.5 ** 0.9)
    assert g(100) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="warmup_batches must be >= 0"):
        WarmupPoly(-1, 10)


def test_schedule_survives_lambdalr_state_dict():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupPoly(4, 20))
    for _ in range(6):
        opt.step()
        sched.step()
    state = sched.state_dict()
    assert "lr_lambdas" in state and state["lr_lambdas"][0]["warmup"] == 4
    opt2 = torch.optim.SGD([p], lr=1.0)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, WarmupPoly(0, 1))
    sched2.load_state_dict(state)
    opt2.step()
    sched2.step()
    opt.step()
    sched.step()
    assert sched2.get_last_lr() == pytest.approx(sched.get_last_lr())
