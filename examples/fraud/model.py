"""Fraud detection: a scikit-learn Pipeline (one-hot merchant category + gradient boosting).

Fraud is rare (about 2.5% of transactions), so fraud rows get more weight while training; without
it the model would rather call everything legitimate and F1 would suffer.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder
from threadpoolctl import threadpool_limits

CATEGORICAL = ["merchant_category"]


def train(X: Any, y: Any, params: dict[str, Any]) -> Pipeline:
    """Fit the pipeline on transactions ``X`` (a DataFrame) and labels ``y`` (0/1)."""
    y = np.asarray(y)
    fraud_weight = float(params.get("fraud_weight", 3.0))
    encode = ColumnTransformer(
        [("category", OneHotEncoder(handle_unknown="ignore", sparse_output=False), CATEGORICAL)],
        remainder="passthrough",
    )
    boost = HistGradientBoostingClassifier(
        max_iter=int(params.get("max_iter", 200)),
        learning_rate=float(params.get("learning_rate", 0.05)),
        max_leaf_nodes=int(params.get("max_leaf_nodes", 15)),
        l2_regularization=1.0,
        class_weight={0: 1.0, 1: fraud_weight},
        random_state=int(params.get("seed", 0)),
    )
    model = Pipeline([("encode", encode), ("boost", boost)])
    # A few thousand rows gain nothing from OpenMP threads, and on a busy machine spinning
    # threads make fitting many times slower.
    with threadpool_limits(limits=1, user_api="openmp"):
        model.fit(X, y)
    return model
