import torch
import torch.nn.functional as F

from distforget.data.transforms import DevicePreprocess
from tests.factories import rng_images


def test_normalises_at_native_size():
    images = rng_images(4, 16)
    prep = DevicePreprocess(16, (0.5, 0.4, 0.3), (0.2, 0.2, 0.25), "cpu")
    out = prep(images)
    expected = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
                - torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)) / \
        torch.tensor([0.2, 0.2, 0.25]).view(1, 3, 1, 1)
    assert out.shape == (4, 3, 16, 16)
    assert torch.allclose(out, expected, atol=1e-6)


def test_resizes_in_a_batch_and_flips_on_request():
    images = rng_images(3, 32)
    prep = DevicePreprocess(64, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "cpu")
    out = prep(images)
    assert out.shape == (3, 3, 64, 64)
    ref = F.interpolate(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255, size=64,
                        mode="bicubic", align_corners=False).clamp(0, 1)
    assert torch.allclose(out, ref, atol=1e-5)
    flipped = prep(images, flip=torch.tensor([True, False, False]))
    assert torch.allclose(flipped[0], out[0].flip(-1), atol=1e-5)
    assert torch.allclose(flipped[1], out[1])
