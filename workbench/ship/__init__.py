"""Shipping a model: registering the winner under an alias (`promote`), loading and predicting
with it (`predict`), and the TFLite export (`export`)."""
