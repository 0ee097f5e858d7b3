"""Scores of learned representations: a linear probe (fit on one split, scored on another) and k-means
against the classes. Both take features (N, H) and integer classes (N,) as numpy arrays (scikit-learn)."""

from __future__ import annotations

import numpy as np


def linear_probe(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, *, C: float = 1.0
) -> dict[str, float]:
    """Logistic regression on standardised features: ``{"probe_accuracy", "probe_auroc"}`` on the test set.

    train_x: (N, H), train_y: (N,) int classes; AUROC is one-vs-rest macro-averaged for more than 2 classes.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(train_y)) < 2:
        raise ValueError("linear_probe needs at least two classes in the train labels")
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000))
    clf.fit(train_x, train_y)
    proba = clf.predict_proba(test_x)
    acc = accuracy_score(test_y, clf.classes_[proba.argmax(1)])
    if len(clf.classes_) == 2:
        auroc = roc_auc_score(test_y, proba[:, 1]) if len(np.unique(test_y)) == 2 else float("nan")
    else:
        auroc = roc_auc_score(test_y, proba, multi_class="ovr", labels=clf.classes_)
    return {"probe_accuracy": float(acc), "probe_auroc": float(auroc)}


def kmeans_scores(x: np.ndarray, y: np.ndarray, *, num_clusters: int | None = None, seed: int = 0) -> dict[str, float]:
    """k-means (10 restarts) on standardised features ``x`` (N, H) against classes ``y`` (N,):
    ``{"kmeans_nmi", "kmeans_ari"}`` (normalised mutual information, adjusted Rand index)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
    from sklearn.preprocessing import StandardScaler

    k = num_clusters or len(np.unique(y))
    pred = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(StandardScaler().fit_transform(x))
    return {
        "kmeans_nmi": float(normalized_mutual_info_score(y, pred)),
        "kmeans_ari": float(adjusted_rand_score(y, pred)),
    }


def evaluate_features(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, *, prefix: str = "", seed: int = 0
) -> dict[str, float]:
    """Probe (fit on train, scored on test) and k-means (on test) scores; keys start with ``prefix``."""
    scores = linear_probe(train_x, train_y, test_x, test_y) | kmeans_scores(test_x, test_y, seed=seed)
    return {f"{prefix}{k}": v for k, v in scores.items()}
