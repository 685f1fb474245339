"""Tasks: what a model's output means, and everything that follows from it (see `cnnkit.tasks.base`).

Classification (`classify`) is the first task; its objectives are cross-entropy, knowledge distillation and
MEAL V2 (`tasks.distill`) and RotNet (`tasks.rotnet`). Segmentation (`segment`, `tasks.segment`) labels every
pixel; detection (`detect`, `tasks.detect`) gives boxes with classes and scores; restoration (`restore`,
`tasks.restore`) an image. A new task subclasses `Task` and calls
`register_task`; the trainer, evaluation, prediction and export then work with it unchanged.
"""

from cnnkit.tasks.base import TASKS, Objective, Task, TaskLoss, TrainSetting, get_task, register_task
from cnnkit.tasks.classify import CLASSIFY, Classification, CrossEntropy
from cnnkit.tasks.classify_metrics import classification_report, expected_calibration_error, topk_accuracy
from cnnkit.tasks.detect import DETECT, Detection, DetectionLoss
from cnnkit.tasks.restore import RESTORE, Restoration, RestorationLoss
from cnnkit.tasks.segment import SEGMENT, PixelCrossEntropy, Segmentation

__all__ = ["Task", "Objective", "TaskLoss", "TrainSetting", "TASKS", "register_task", "get_task", "Classification",
           "CrossEntropy", "CLASSIFY", "classification_report", "expected_calibration_error", "topk_accuracy",
           "Segmentation", "PixelCrossEntropy", "SEGMENT", "Detection", "DetectionLoss", "DETECT", "Restoration",
           "RestorationLoss", "RESTORE"]
