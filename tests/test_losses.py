import math

import torch

from advnets.losses import discriminator_loss, generator_loss


def sig(x):
    return 1 / (1 + math.exp(-x))


def test_losses_match_formulas_on_known_logits():
    real = torch.tensor([0.0, 2.0, -1.0], dtype=torch.float64)
    fake = torch.tensor([0.5, -3.0, 1.5], dtype=torch.float64)
    log_d_real = sum(math.log(sig(v)) for v in real.tolist()) / 3
    log_1m_d_fake = sum(math.log(1 - sig(v)) for v in fake.tolist()) / 3
    log_d_fake = sum(math.log(sig(v)) for v in fake.tolist()) / 3
    assert math.isclose(discriminator_loss(real, fake, scale=1.0).item(), -(log_d_real + log_1m_d_fake), rel_tol=1e-12)
    assert math.isclose(
        discriminator_loss(real, fake, scale=0.5).item(), -0.5 * (log_d_real + log_1m_d_fake), rel_tol=1e-12
    )
    assert math.isclose(generator_loss(fake, "minimax").item(), log_1m_d_fake, rel_tol=1e-12)
    assert math.isclose(generator_loss(fake, "nonsaturating").item(), -log_d_fake, rel_tol=1e-12)


def test_losses_stay_finite_at_extreme_logits():
    big = torch.tensor([50.0, -50.0], dtype=torch.float32)
    # log(1 - sigmoid(50)) = -softplus(50) = -50 (to float precision); sigmoid-then-log would give -inf.
    assert torch.isclose(generator_loss(torch.tensor([50.0]), "minimax"), torch.tensor(-50.0))
    assert torch.isclose(generator_loss(torch.tensor([-50.0]), "nonsaturating"), torch.tensor(50.0))
    # D completely fooled: real logits -50, fake logits +50 -> loss 0.5 * (50 + 50).
    assert torch.isclose(discriminator_loss(torch.tensor([-50.0]), torch.tensor([50.0])), torch.tensor(50.0))
    for loss in (discriminator_loss(big, big), generator_loss(big, "minimax"), generator_loss(big, "nonsaturating")):
        assert torch.isfinite(loss)
    x = big.clone().requires_grad_()
    generator_loss(x, "nonsaturating").backward()
    assert torch.isfinite(x.grad).all()
    # Non-saturating: strong gradient where D rejects the samples (logit -50), none where D accepts them.
    assert math.isclose(x.grad[1].item(), -0.5, rel_tol=1e-6) and abs(x.grad[0].item()) < 1e-20
