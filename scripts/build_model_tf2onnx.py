"""Run ``python -m tf2onnx.convert`` with the small runtime patches that
tf2onnx 1.17 needs under numpy 2 / TensorFlow 2.21.

Used by scripts/build_model.py inside the throwaway build venv; it takes the
same command-line arguments as ``python -m tf2onnx.convert``.

Patches (applied by monkeypatching, nothing in site-packages is edited):

* numpy 2 removed ``np.product``; tf2onnx's TensorFlow.js weight reader
  (tf2onnx/tfjs_utils.py::read_tfjs_weight) still calls it.  Alias it to
  ``np.prod``.

Other issues seen with other tfjs models under TF 2.21 (``_FusedConv2D``
missing ``TArgs``, ``TopKV2`` missing ``index_type``) do not occur with the
NanoDet graph: it contains neither op (plain Conv2D + Add, no TopK), so no
patch is applied for them.
"""
import sys

import numpy as np

if not hasattr(np, "product"):
    np.product = np.prod  # type: ignore[attr-defined]

from tf2onnx import convert  # noqa: E402


def main() -> None:
    sys.argv = ["tf2onnx.convert"] + sys.argv[1:]
    convert.main()


if __name__ == "__main__":
    main()
