import math

import torch

from superalign.train.losses import bradley_terry_loss, bradley_terry_prob


def test_bradley_terry_matches_the_slow_definition():
    torch.manual_seed(0)
    rc, rr = torch.randn(50), torch.randn(50)
    slow = (
        sum(
            -math.log(math.exp(a) / (math.exp(a) + math.exp(b)))
            for a, b in zip(rc.tolist(), rr.tolist())
        )
        / 50
    )
    assert abs(bradley_terry_loss(rc, rr).item() - slow) < 1e-6
    assert (
        bradley_terry_prob(torch.tensor(2.0), torch.tensor(0.0)).item()
        == torch.sigmoid(torch.tensor(2.0)).item()
    )


def test_bradley_terry_is_stable_and_pushes_chosen_up():
    rc = torch.tensor([100.0, -100.0], requires_grad=True)
    rr = torch.tensor([-100.0, 100.0])
    loss = bradley_terry_loss(rc, rr)
    assert torch.isfinite(loss) and abs(loss.item() - 100.0) < 1e-3  # (0 + 200) / 2
    loss.backward()
    assert (rc.grad <= 0).all()  # gradient descent raises the chosen reward
