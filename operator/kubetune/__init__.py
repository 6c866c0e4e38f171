"""kubetune: Kubernetes-native hyperparameter tuning.

This module stays import-light on purpose: the trial SDK (`kubetune.trial`) is imported
inside training containers that carry only prometheus-client.
"""

__version__ = "0.1.0"
