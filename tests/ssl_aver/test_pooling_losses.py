import numpy as np
import torch

from ssl_aver.models.losses import ClassBalancedLoss, class_balanced_weights
from ssl_aver.models.pooling import ASPool, LWSum


def test_lwsum_weights_sum_to_one_and_mix_layers():
    lw = LWSum(5)
    with torch.no_grad():
        lw.logits.copy_(torch.tensor([0.0, 1.0, -1.0, 2.0, 0.5]))
    assert torch.isclose(lw.weights.sum(), torch.tensor(1.0))
    x = torch.randn(2, 7, 5, 3)
    expected = (x * lw.weights.view(1, 1, 5, 1)).sum(2)
    assert torch.allclose(lw(x), expected, atol=1e-6)


def test_aspool_ignores_padded_frames():
    torch.manual_seed(0)
    pool = ASPool(4, hidden=8)
    x = torch.randn(1, 5, 4)
    padded = torch.cat([x, 100 * torch.randn(1, 3, 4)], dim=1)
    valid = torch.tensor([[True] * 5 + [False] * 3])
    assert torch.allclose(pool(x), pool(padded, valid), atol=1e-6)
    assert torch.equal(pool(padded, torch.zeros(1, 8, dtype=torch.bool)), torch.zeros(1, 8))


def test_class_balanced_weights_favour_rare_classes():
    w = class_balanced_weights(np.array([1000, 10, 0]), beta=0.99)
    assert w[1] > w[0] > 0 and w[2] == 0 and np.isclose(float(w.sum()), 3.0)
    flat = class_balanced_weights(np.array([5, 500]), beta=0.0)
    assert torch.allclose(flat, torch.ones(2))
    loss = ClassBalancedLoss(np.array([3, 1]), beta=0.0, multilabel=True)
    logits, targets = torch.randn(4, 2), torch.randint(0, 2, (4, 2)).float()
    assert torch.isclose(loss(logits, targets), torch.nn.functional.binary_cross_entropy_with_logits(logits, targets))
