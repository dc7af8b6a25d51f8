"""ultralytics with every network touchpoint switched off; import ``YOLO`` from here, never from ultralytics.

ultralytics reaches out on import (DNS checks), on train/val (fonts, analytics, platform upload, AMP
weights) and on missing packages (pip). A hospital deployment has no internet and a training run must not
hang on a download, so the switches are set before ultralytics is first imported:

- ``YOLO_OFFLINE=1`` (import-time online check), ``YOLO_AUTOINSTALL=0`` (pip), no platform API key;
- ``YOLO_CONFIG_DIR`` → a project folder (default ``<repo>/.ultralytics``, kept if already set), holding the
  settings file with all integrations off and a local font under the names ``check_font`` would download;
- torch threads: ultralytics' ``select_device`` resets torch to cpu_count−1 threads (1 on a 2-core machine,
  ≈1.7× slower) on every train/val/predict, so its thread count is set to ours;
- NMS without a deadline: ultralytics' NMS stops after 2 s + 0.05 s per image of a batch and returns the images it
  has not reached yet *empty*, with only a log warning. On a loaded CPU that silently drops detections from a study
  (a missed hemorrhage; a lower mAP during training), so every caller's NMS runs to the end.

AMP's check downloads weights on CUDA; training passes ``amp=False``.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import sys
from pathlib import Path

import matplotlib

from ichseg.runtime import configure_threads

FONT_NAMES = ("Arial.ttf", "Arial.Unicode.ttf")  # what ultralytics' check_font and plotting ask for
OFFLINE_SETTINGS = {
    "sync": False, "api_key": "", "clearml": False, "comet": False, "dvc": False, "mlflow": False,
    "raytune": False, "tensorboard": False, "wandb": False, "vscode_msg": False, "openvino_msg": False,
}
DEFAULT_CONFIG_DIR = Path(__file__).resolve().parents[1] / ".ultralytics"

if "ultralytics" in sys.modules and os.environ.get("YOLO_OFFLINE") != "1":
    raise ImportError("ultralytics was imported before ichseg.ultralytics_offline; its online checks already ran")
os.environ["YOLO_OFFLINE"] = "1"
os.environ["YOLO_AUTOINSTALL"] = "0"
os.environ.pop("ULTRALYTICS_API_KEY", None)
os.environ.setdefault("YOLO_CONFIG_DIR", str(DEFAULT_CONFIG_DIR))

import ultralytics  # noqa: E402  (must follow the environment above)
import ultralytics.utils.nms as _nms  # noqa: E402
import ultralytics.utils.torch_utils as _torch_utils  # noqa: E402
from ultralytics import YOLO  # noqa: E402
from ultralytics.utils import USER_CONFIG_DIR  # noqa: E402


def install_fonts(folder: Path = USER_CONFIG_DIR) -> None:
    """Put matplotlib's DejaVuSans where ``check_font`` looks first, so it never downloads Arial."""
    source = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    folder.mkdir(parents=True, exist_ok=True)
    for name in FONT_NAMES:
        target = folder / name
        if not target.is_file():
            temporary = target.with_suffix(f".{os.getpid()}.tmp")  # concurrent imports must not see half a file
            shutil.copyfile(source, temporary)
            temporary.replace(target)


install_fonts()
ultralytics.settings.update(OFFLINE_SETTINGS)
_torch_utils.NUM_THREADS = configure_threads()
# predict.py and val.py call nms.non_max_suppression through the module, so this reaches both
_nms.non_max_suppression = functools.partial(_nms.non_max_suppression, max_time_img=math.inf)

__all__ = ["YOLO", "install_fonts"]
