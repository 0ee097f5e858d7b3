"""Loading checkpoints of the original CSDI code (tsdiffusion.denoisers.pretrained) without the network: the
golden reference fixture's weights saved as an original checkpoint must load with the architecture read off the
weights and reproduce the reference output; a wrong checksum or feature count is refused with a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tsdiffusion.data.download import DataSourceError
from tsdiffusion.denoisers.pretrained import (
    OFFICIAL_CSDI_PHYSIONET_URL,
    PretrainedCSDIDenoiser,
    official_checkpoint_path,
    original_architecture,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "reference"


def fixture(variant: str) -> dict:
    return torch.load(FIXTURES / f"csdi_{variant}.pt", map_location="cpu", weights_only=True)


@pytest.mark.parametrize("variant", ["imputation", "forecasting"])
def test_architecture_is_read_off_the_weights(variant: str) -> None:
    fx = fixture(variant)
    diff, model = fx["meta"]["config"]["diffusion"], fx["meta"]["config"]["model"]
    assert original_architecture(fx["state"]) == {
        "num_features": fx["batch"]["observed_data"].shape[-1],
        "channels": diff["channels"],
        "layers": diff["layers"],
        "diffusion_embedding_dim": diff["diffusion_embedding_dim"],
        "time_embedding_dim": model["timeemb"],
        "feature_embedding_dim": model["featureemb"],
        "unconditional": False,
        "attention": "linear" if diff["is_linear"] else "softmax",
    }


def test_pretrained_denoiser_reproduces_the_reference(tmp_path: Path) -> None:
    fx = fixture("imputation")
    path = tmp_path / "model.pth"
    torch.save(fx["state"], path)  # as the original code saves it: torch.save(model.state_dict())
    den = PretrainedCSDIDenoiser(5, checkpoint=str(path), heads=fx["meta"]["config"]["diffusion"]["nheads"]).eval()
    ref, batch = fx["loss"], fx["batch"]
    cm = fx["cond_mask"].transpose(1, 2)
    x0 = batch["observed_data"]
    cond = {"observed": x0 * cm, "cond_mask": cm, "timepoints": batch["timepoints"]}
    x_t = ref["total_input"][:, 1].transpose(1, 2) + x0 * cm  # any values where cm = 1: the model ignores them
    with torch.no_grad():
        out = den(x_t, ref["t"], cond)
    assert (out - ref["predicted"].transpose(1, 2)).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="5 features, the data 7"):
        PretrainedCSDIDenoiser(7, checkpoint=str(path), heads=4)


def test_not_a_csdi_state_dict_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="not a state dict of the original CSDI code"):
        PretrainedCSDIDenoiser(5, checkpoint=str(path))


def test_local_copy_of_the_official_checkpoint_is_checksum_verified(tmp_path: Path) -> None:
    path = tmp_path / "model.pth"
    path.write_bytes(b"not the official weights")
    with pytest.raises(DataSourceError, match="checksum mismatch"):
        official_checkpoint_path(path)
    with pytest.raises(DataSourceError, match="no such file"):
        official_checkpoint_path(tmp_path / "absent.pth")
    url = OFFICIAL_CSDI_PHYSIONET_URL
    assert url.endswith("/save/pretrained/model.pth") and "/7f24a43" in url
