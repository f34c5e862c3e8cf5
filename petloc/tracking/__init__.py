"""Everything that talks to MLflow: the store, runs, what they log, the Model Registry."""
