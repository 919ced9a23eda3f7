import pytest
import torch

from shared.schedule import WarmupPoly, lr_scaling_rule, scaled_lr


def test_linear_scaling_rule():
    assert scaled_lr(1e-3, 16, 16, "linear") == pytest.approx(1e-3)
    assert scaled_lr(1e-3, 16, 128, "linear") == pytest.approx(8e-3)      # 8 GPUs x 16
    assert scaled_lr(1e-3, 16, 512, "linear") == pytest.approx(32e-3)     # 32 GPUs x 16
    assert scaled_lr(6e-5, 16, 8, "linear") == pytest.approx(3e-5)
    with pytest.raises(ValueError, match="batch sizes must be positive"):
        scaled_lr(1e-3, 0, 16, "linear")


def test_square_root_and_no_scaling():
    assert scaled_lr(6e-4, 16, 512, "sqrt") == pytest.approx(6e-4 * 32 ** 0.5)   # 0.00339
    assert scaled_lr(1e-3, 16, 64, "sqrt") == pytest.approx(2e-3)
    assert scaled_lr(1e-3, 16, 4, "sqrt") == pytest.approx(5e-4)
    assert scaled_lr(1e-3, 16, 512, "none") == 1e-3
    with pytest.raises(ValueError, match=r"lr scaling rule must be one of linear, sqrt, none, got 'auto'"):
        scaled_lr(1e-3, 16, 32, "auto")


def test_auto_rule_follows_the_optimiser():
    assert lr_scaling_rule("auto", "sgd") == "linear"
    assert lr_scaling_rule("auto", "adamw") == "sqrt"
    assert lr_scaling_rule("linear", "adamw") == "linear"
    assert lr_scaling_rule("none", "sgd") == "none"
    with pytest.raises(ValueError, match=r"lr_scaling 'auto' has no rule for optimizer 'lamb'"):
        lr_scaling_rule("auto", "lamb")
    with pytest.raises(ValueError, match=r"lr_scaling must be 'auto' or one of linear, sqrt, none, got 'cubic'"):
        lr_scaling_rule("cubic", "sgd")


@pytest.mark.parametrize("optimizer, lr_scaling, expected", [
    ("adamw", "auto", 2e-3), ("sgd", "auto", 4e-3), ("adamw", "linear", 4e-3), ("sgd", "none", 1e-3)])
def test_engine_takes_the_rule(optimizer, lr_scaling, expected):
    """The trial's engine at a global batch 4x the base: the optimiser's lr is the rule's."""
    from shared.engine import Engine, LocalRuntime, SegmentationTask
    from shared.hparams import resolve
    hp = resolve({"optimizer": optimizer, "lr_scaling": lr_scaling, "lr": 1e-3, "base_batch_size": 4,
                  "global_batch_size": 16, "warmup_batches": 0}, {})
    engine = Engine(torch.nn.Conv2d(3, 2, 1), hp, LocalRuntime(torch.device("cpu"), 16),
                    SegmentationTask(2), device=torch.device("cpu"), max_batches=10)
    assert engine.lr == pytest.approx(expected)
    assert engine.optimizer.param_groups[0]["lr"] == pytest.approx(expected)
    assert engine.lr_scaling == lr_scaling_rule(lr_scaling, optimizer)


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
