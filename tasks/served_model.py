"""The registered classifier as MLflow loads and serves it (MLflow "models from code": the register
stage logs this file with the model, and MLflow runs it to load the model; nothing imports it).

Input: float32 images (N, C, H, W) in [0, 1]. Output: a DataFrame, one row per image: ``class``,
the most probable class's name, then one column per class holding its probability, in the order of
the model's classes. So ``mlflow models serve`` answers with the class names, not bare numbers.
"""

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel


class ServedClassifier(PythonModel):
    """The classifier network (an MLflow PyTorch model: images -> probabilities (N, K), the artifact
    ``network``) and its class names (the model config's ``classes``)."""

    def load_context(self, context) -> None:
        self.network = mlflow.pyfunc.load_model(context.artifacts["network"])
        self.classes = list(context.model_config["classes"])

    def predict(self, context, model_input: np.ndarray, params=None) -> pd.DataFrame:
        probs = np.asarray(self.network.predict(np.asarray(model_input, dtype=np.float32)))  # (N, K)
        frame = pd.DataFrame(probs, columns=self.classes)
        frame.insert(0, "class", np.asarray(self.classes, dtype=object)[probs.argmax(axis=1)])
        return frame


set_model(ServedClassifier())
