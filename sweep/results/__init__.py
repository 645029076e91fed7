"""What a study gives back: the best config exported, the final train/test run, predictions of a trained model."""
