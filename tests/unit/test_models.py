"""The reference models: R(2+1)D-18's exact size, and input scaling by the stored dtype."""

import numpy as np
import pytest

from distributed_h5.models import input_scale, r2plus1d_18, video_classifier


def test_r2plus1d_18_has_torchvisions_parameter_count():
    model = r2plus1d_18((16, 3, 112, 112), 400)
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == 31_505_325  # torchvision's r2plus1d_18
    assert model.output_shape == (None, 400)


@pytest.mark.parametrize("dtype, scale", [("uint8", 1 / 255), ("uint16", 1 / 65535), ("float32", 1.0),
                                          ("float16", 1.0)])
def test_inputs_are_scaled_by_the_stored_dtype(dtype, scale):
    assert input_scale(dtype) == scale
    model = video_classifier((2, 3, 8, 8), 2, width=2, depth=1, dtype=dtype)
    assert model.get_layer("rescale").get_config()["scale"] == pytest.approx(scale)
    assert model.inputs[0].dtype == dtype


def test_signed_integer_clips_are_refused():
    with pytest.raises(ValueError, match="unsigned integers or floats. Received: dtype int16"):
        input_scale("int16")
