"""The baseline lab is measured against: a plain script that imports scikit-learn and does
N fits of the default job (iris, standardised logistic regression, stratified 80/20 split),
with a prediction and both metrics each. No Hydra, no MLflow, no files. BLAS/OpenMP pools
are held at one thread, as lab's jobs are by default (``threads=1``): that is also this
script's faster setting here, so the baseline is not slowed by the pools lab avoids.

    python bench/plain.py N                 # N logistic-regression fits on iris
    python bench/plain.py N random_forest   # N random forests (300 trees) on digits, as in target 3
"""

from __future__ import annotations

import sys

from sklearn.datasets import load_digits, load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits


def main() -> None:
    n = int(sys.argv[1])
    forest = sys.argv[2:] == ["random_forest"]
    threadpool_limits(limits=1)
    X, y = load_digits(return_X_y=True) if forest else load_iris(return_X_y=True)
    for seed in range(1, n + 1):
        X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, stratify=y, random_state=seed)
        if forest:
            model = RandomForestClassifier(n_estimators=300, random_state=seed, n_jobs=1)
        else:
            model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=200, random_state=seed))
        pred = model.fit(X_train, y_train).predict(X_test)
        accuracy_score(y_test, pred)
        f1_score(y_test, pred, average="macro")


if __name__ == "__main__":
    main()
