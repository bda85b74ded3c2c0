"""memreg.train: the training pipeline (datastore -> index -> kNN targets -> training -> evaluation -> package)."""
