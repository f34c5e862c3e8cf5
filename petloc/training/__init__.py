"""Training networks and using them: data ready, fitting, figures, prediction. Pure Keras: no MLflow here."""
